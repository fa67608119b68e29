"""The typed definition format: JSON Schema, BFF_CONNECTORS_DIR, one-line errors, cross-references."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from bff.connectors import ConnectorSession, RetryPolicy, load_connectors
from bff.connectors.definitions import DEFINITIONS_DIR, DefinitionError, definition_dirs, parse_connector
from bff.connectors.errors import ConfigRequired, CredentialsRejected
from bff.connectors.models import json_schema
from bff.connectors.templates import Placeholders, Template
from bff.connectors.writer import Writer

SCHEMA_FILE = DEFINITIONS_DIR.parent / "definition.schema.json"


def definition(name: str = "sandbox_chat") -> dict[str, Any]:
    return json.loads((DEFINITIONS_DIR / f"{name}.json").read_text())  # type: ignore[no-any-return]


def write(directory: Path, data: dict[str, Any], name: str | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name or data['name']}.json"
    path.write_text(json.dumps(data))
    return path


def test_published_schema_is_the_models_schema() -> None:
    assert json.loads(SCHEMA_FILE.read_text()) == json_schema(), (
        "run: python -m bff.connectors.models > bff/connectors/definition.schema.json"
    )


def test_every_builtin_definition_validates_against_the_published_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA_FILE.read_text())
    for path in sorted(DEFINITIONS_DIR.glob("*.json")):
        jsonschema.validate(json.loads(path.read_text()), schema)
    broken = definition()
    broken["streams"][0]["pagng"] = {}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


@pytest.mark.parametrize(
    ("mutate", "key", "words"),
    [
        (lambda d: d.update(colour="red"), "colour", "is not a known field here"),
        (
            lambda d: d["objects"]["message"]["actions"]["add"].update(verb="POST"),
            "objects.message.actions.add.verb",
            "not a known field",
        ),
        (
            lambda d: d["streams"][0].update(rows=[{"id": "c1", "name": "general"}]),
            "streams[0].rows",
            "goes without path, params, paging, incremental and deletions",
        ),
        (
            lambda d: (
                [d["streams"][0].pop(k, None) for k in ("path", "params", "paging", "incremental")]
                and d["streams"][0].update(rows=[{"id": "c1", "colour": "red"}])
            ),
            "streams[0].rows[0]",
            "has keys no field reads: ['colour']",
        ),
        (lambda d: d["streams"][0].pop("path"), "streams[0].path", "is required (or rows)"),
        (lambda d: d["auth"].update(kind="cookie"), "auth.kind", "must be one of"),
        (lambda d: d["auth"].pop("header"), "auth.header", "is required"),
        (lambda d: d["streams"][1]["paging"].pop("cursor_param"), "streams[1].paging.cursor_param", "is required"),
        (
            lambda d: d["objects"]["message"]["actions"]["add"].update(method="SEND"),
            "objects.message.actions.add.method",
            "must be one of",
        ),
        (
            lambda d: d["objects"]["message"]["actions"].update(upsert={"strategy": "guess"}),
            "objects.message.actions.upsert.strategy",
            "must be one of",
        ),
        (
            lambda d: d["objects"]["message"]["actions"].update(upsert={"strategy": "search"}),
            "objects.message.actions.upsert.strategy",
            "needs the actions search, update",
        ),
        (
            lambda d: d["objects"]["message"]["actions"]["get"].update(path="/messages"),
            "objects.message.actions.get.path",
            "must use {id}",
        ),
        (
            lambda d: d["objects"]["message"]["actions"]["add"].update(required=["colour"]),
            "objects.message.actions.add",
            "names field 'colour'",
        ),
        (lambda d: d["objects"]["message"].update(stream="threads"), "objects.message.stream", "not a declared stream"),
        (
            lambda d: d["objects"]["message"]["actions"]["add"].update(path="/{credentials.token}/m"),
            "objects.message.actions.add.path",
            "connect_form has no field 'token'",
        ),
        (
            lambda d: d["objects"]["message"]["actions"]["add"].update(path="/{match.colour}"),
            "objects.message.actions.add.path",
            "only {match.field} and {match.value}",
        ),
        (
            lambda d: d["objects"]["message"]["actions"]["add"].update(body_template={"x": "{cursor}"}),
            "objects.message.actions.add.body_template.x",
            "unknown placeholder {cursor}",
        ),
    ],
)
def test_a_bad_definition_names_file_and_key_on_one_line(
    tmp_path: Path, mutate: Callable[[dict[str, Any]], None], key: str, words: str
) -> None:
    data = definition()
    mutate(data)
    path = write(tmp_path / "partner", data)
    with pytest.raises(DefinitionError) as info:
        load_connectors([DEFINITIONS_DIR, tmp_path / "partner"])
    message = str(info.value)
    assert "\n" not in message and str(path) in message and f"field '{key}'" in message and words in message, message
    assert info.value.key == key


def test_connectors_dir_adds_and_overrides_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = definition("sandbox_chat")
    mine.update(id=900, name="acme_chat", display_name="Acme Chat", base_url="https://chat.acme.test/api")
    override = definition("sandbox_bank")
    override["display_name"] = "Partner Bank"
    write(tmp_path / "one", mine)
    write(tmp_path / "two", override)
    monkeypatch.setenv("BFF_CONNECTORS_DIR", os.pathsep.join([str(tmp_path / "one"), str(tmp_path / "two")]))
    assert definition_dirs() == (DEFINITIONS_DIR, tmp_path / "one", tmp_path / "two")
    connectors = load_connectors()
    assert connectors["acme_chat"].display_name == "Acme Chat" and connectors["acme_chat"].source.endswith(
        "acme_chat.json"
    )
    assert connectors["sandbox_bank"].display_name == "Partner Bank"
    assert "sandbox_crm" in connectors  # the rest of the built-ins stay


def test_connectors_dir_id_clash_and_missing_dir(tmp_path: Path) -> None:
    clash = definition("sandbox_chat")
    clash.update(name="acme", id=1)  # sandbox_crm's id
    write(tmp_path / "d", clash)
    with pytest.raises(DefinitionError, match="field 'id' 1 is already used by sandbox_crm"):
        load_connectors([DEFINITIONS_DIR, tmp_path / "d"])
    with pytest.raises(DefinitionError, match="is not a directory"):
        load_connectors([DEFINITIONS_DIR, tmp_path / "missing"])
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "x.json").write_text("{oops")
    with pytest.raises(DefinitionError, match=r"x\.json: not valid JSON"):
        load_connectors([DEFINITIONS_DIR, tmp_path / "e"])


def test_a_bad_connectors_dir_stops_the_app_from_starting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings_factory: Callable[..., Any]
) -> None:
    from bff.app import create_app

    broken = definition("sandbox_chat")
    broken["streams"][0]["incremantal"] = {}
    write(tmp_path / "partner", broken, "sandbox_chat")
    monkeypatch.setenv("BFF_CONNECTORS_DIR", str(tmp_path / "partner"))
    with pytest.raises(DefinitionError) as info:
        create_app(settings_factory(sandbox_enabled=True))
    assert str(info.value).count("\n") == 0 and "'streams[0].incremantal' is not a known field here" in str(info.value)


async def test_the_catalogue_is_read_once_when_the_app_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings_factory: Callable[..., Any]
) -> None:
    """Settings are read once: BFF_CONNECTORS_DIR changing (or breaking) later reaches no request."""
    from conftest import auth, running_bff

    async with running_bff(settings_factory(sandbox_enabled=True)) as bff:
        _, partner_token = await bff.partner("p-catalogue")
        token = str((await bff.integrate(partner_token, "cust-1"))["token"])
        before = (await bff.client.get("/api/servertypes", headers=auth(token))).json()
        broken = definition("sandbox_chat")
        broken["streams"][0]["incremantal"] = {}
        write(tmp_path / "later", broken, "sandbox_chat")
        monkeypatch.setenv("BFF_CONNECTORS_DIR", str(tmp_path / "later"))
        after = await bff.client.get("/api/servertypes", headers=auth(token))
        assert after.status_code == 200 and after.json() == before
        bank = await bff.client.post(
            "/api/servers", json={"servertype_id": "sandbox_bank", "login": "x", "password": "y"}, headers=auth(token)
        )
        assert bank.status_code == 422  # the provider was asked: the request path never re-read the directory


def test_translations_are_accepted_on_fields_options_and_objects() -> None:
    data = definition("sandbox_accounting")
    data["connect_form"][0]["i18n"] = {"nl": {"label": "API-sleutel", "help": "Gebruik sandbox-valid-key."}}
    data["connect_form"].append(
        {
            "name": "region",
            "label": "Region",
            "type": "select",
            "required": False,
            "options": [{"value": "eu", "label": "Europe", "translations": {"fr": {"label": "Europe"}}}],
        }
    )
    data["objects"]["invoice"]["i18n"] = {"de": {"label": "Rechnung"}}
    connector = parse_connector(data, "sandbox_accounting.json")
    assert connector.connect_form[0].label == "API key"


def test_one_placeholder_resolver_one_error_per_missing_value() -> None:
    resolve = Placeholders("Acme", context={"sandbox": "http://x/sandbox/"}, config={}, credentials={"api_key": "k"})
    assert Template.parse("{sandbox}/a/{credentials.api_key}").render(resolve) == "http://x/sandbox/a/k"
    for name in (
        "config.divisions",
        "context.region",
        "lookup.me",
        "partition",
        "id",
        "fields.division",
        "match.value",
    ):
        with pytest.raises(ConfigRequired, match=f"Acme needs '{name}', which is not set."):
            resolve(name)
    with pytest.raises(CredentialsRejected):
        resolve("credentials.password")
    assert Placeholders("Acme", fields={"d": "a/b"}, quote_values=True)("fields.d") == "a%2Fb"


async def test_native_upsert_from_a_partner_definition() -> None:
    data = definition("sandbox_chat")
    data["objects"]["message"]["actions"]["upsert"] = {
        "strategy": "native",
        "method": "PUT",
        "path": "/messages/by/{match.field}/{match.value}",
        "match_fields": ["channel"],
        "created_path": "created",
    }
    connector = parse_connector(data, "sandbox_chat.json")
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": "m_1", "created": request.url.path.endswith("new")})

    session = ConnectorSession(
        connector,
        http=httpx.AsyncClient(transport=httpx.MockTransport(handler)),
        credentials={"api_key": "sandbox-chat-key"},
        config={},
        context={"sandbox": "http://b/sandbox"},
        policy=RetryPolicy.short(),
    )
    result = await Writer(session).upsert("message", {"channel": "new", "text": "hi"}, "channel")
    assert result.created and result.id == "m_1"
    assert seen[0].method == "PUT" and str(seen[0].url) == "http://b/sandbox/chat/api/messages/by/channel/new"
    assert json.loads(seen[0].content) == {"channel": "new", "text": "hi"}
    assert seen[0].headers["authorization"] == "Bearer sandbox-chat-key"
    updated = await Writer(session).upsert("message", {"channel": "qa", "text": "hi"}, "channel")
    assert not updated.created


def test_builtin_definitions_keep_their_logos(tmp_path: Path) -> None:
    shutil.copytree(DEFINITIONS_DIR, tmp_path / "defs")
    (tmp_path / "defs" / "logos" / "sandbox_chat.svg").unlink()
    with pytest.raises(DefinitionError, match="logos/sandbox_chat.svg"):
        load_connectors(tmp_path / "defs")
