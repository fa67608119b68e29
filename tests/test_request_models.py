"""Request bodies are parsed by the pydantic models /openapi.json is generated from (DESIGN §16):
every route with a ``requestBody`` parses it with its operation's model (``bff.http.parse_body``),
and a wrong type or a missing field is ``400 validation_error`` naming the field, never a 500."""

from __future__ import annotations

import re
import warnings
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import BFF, auth, running_bff
from pydantic import BaseModel
from sandbox_flows import connect_accounting
from tables_helpers import crm_customer

import bff.api.partners
import bff.http
from bff.contract import requests as rq
from bff.contract.operations import OPERATIONS
from bff.openapi import build_spec
from bff.settings import Settings


@dataclass
class World:
    bff: BFF
    partner: dict[str, str]
    identity: dict[str, str]
    ids: dict[str, str]


@pytest.fixture
async def world(settings_factory: Callable[..., Settings]) -> AsyncIterator[World]:
    async with running_bff(settings_factory(sandbox_enabled=True, sql_access=True)) as instance:
        token, account_id, tables, crm_id = await crm_customer(instance)
        identity = auth(token)
        client = instance.client
        accounting = await connect_accounting(client, token)
        query_table = await client.post("/api/table", json={"name": "q", "query": "SELECT 1 AS one"}, headers=identity)
        assert query_table.status_code == 201, query_table.text
        script = await client.post("/api/interface", json={"name": "s", "raw_code": "print(1)"}, headers=identity)
        assert script.status_code == 201, script.text
        _, partner = await instance.partner("other-partner")
        minted = await instance.integrate(partner, "cust-2")
        databases = (await client.get("/api/applications", headers=identity)).json()["results"]
        ids = {
            "database_id": str(databases[0]["id"]),
            "id": str(crm_id),
            "accounting": str(accounting["id"]),
            "account_id": str(minted["account_id"]),
            "table_id": str(query_table.json()["id"]),
            "script_id": str(script.json()["id"]),
            "object": "contact",
            "record_id": "1",
        }
        yield World(instance, auth(partner), identity, ids)


def headers_for(world: World, path: str) -> dict[str, str]:
    if path == "/oauth/start":
        return {"Origin": "http://testserver"}
    return world.partner if path.startswith(("/api/partner", "/api/sub-account")) else world.identity


def url_of(world: World, path: str) -> str:
    if path in ("/api/server/{id}/config", "/api/server/{id}/config-options", "/api/server/{id}/reauthorise"):
        return path.replace("{id}", world.ids["accounting"])  # an API-key connection with a config step
    return re.sub(r"{(\w+)}", lambda m: world.ids[m.group(1)], path)


# (method, path): (a body with a field of the wrong type, that field) and (a body without a
# required field, that field) where the model has one.
CASES: dict[tuple[str, str], tuple[tuple[dict[str, Any], str], tuple[dict[str, Any], str] | None]] = {
    ("POST", "/api/partner/rotate-token"): (({"keep_customer_tokens": "yes"}, "keep_customer_tokens"), None),
    ("PUT", "/api/partner/origins"): (({"origins": "https://a.example"}, "origins"), ({}, "origins")),
    ("POST", "/api/partner/sub-account"): (
        ({"external_id": ["a"]}, "external_id"),
        ({"email": "a@b.c"}, "external_id"),
    ),
    ("POST", "/api/sub-account"): (({"external_id": "x", "first_name": 7}, "first_name"), ({}, "external_id")),
    ("POST", "/api/partner/sub-account/integrate"): (
        ({"external_id": {"a": 1}}, "external_id"),
        ({"x": 1}, "external_id"),
    ),
    ("POST", "/api/partner/sub-account/{account_id}/database-credentials"): (({"write": "yes"}, "write"), None),
    ("PUT", "/api/partner/sub-account/{account_id}/warehouse"): (({"url": 5}, "url"), ({"x": "y"}, "url")),
    ("PUT", "/api/partner/webhook"): (({"url": 5}, "url"), ({"events": ["sync.finished"]}, "url")),
    ("POST", "/api/servers"): (
        ({"servertype_id": "sandbox_crm", "oauth_strict": "yes"}, "oauth_strict"),
        ({}, "servertype_id"),
    ),
    ("PATCH", "/api/server/{id}"): (({"sync_frequency": "hourly"}, "sync_frequency"), None),
    ("POST", "/api/server/{id}/config"): (({"divisions": {"101": True}}, "divisions"), ({}, "divisions")),
    ("POST", "/api/server/{id}/reauthorise"): (({"oauth_strict": 1}, "oauth_strict"), None),
    ("POST", "/api/server/{id}/sync"): (({"full": "yes"}, "full"), None),
    ("POST", "/oauth/start"): (
        ({"nonce": 5, "opener_origin": "http://testserver"}, "nonce"),
        ({"opener_origin": "x"}, "nonce"),
    ),
    ("POST", "/api/table"): (({"name": 5, "query": "SELECT 1"}, "name"), ({"name": "a"}, "query")),
    ("POST", "/table"): (({"name": "a", "query": ["SELECT 1"]}, "query"), ({"query": "SELECT 1"}, "name")),
    ("PATCH", "/api/table/{table_id}"): (({"query": 1}, "query"), None),
    ("POST", "/api/database/query"): (({"query": "SELECT 1", "limit": "10"}, "limit"), ({"limit": 5}, "query")),
    ("POST", "/api/interface"): (({"name": "a", "raw_code": 5}, "raw_code"), ({"name": "a"}, "raw_code")),
    ("POST", "/interface"): (
        ({"name": "a", "raw_code": "x", "schedule": "daily"}, "schedule"),
        ({"raw_code": "x"}, "name"),
    ),
    ("PATCH", "/api/interface/{script_id}"): (({"name": ["a"]}, "name"), None),
    ("PUT", "/api/interface/{script_id}/state"): (({"state": 1, "other": 2}, "state"), ({}, "state")),
}
# Bodies whose keys are free: a record's fields (and the proxy, which passes its body on as sent).
FREE = {"RecordFields"}


def body_operations() -> list[tuple[str, str, type[BaseModel]]]:
    return [
        (method, path, op.body)
        for (method, path), op in OPERATIONS.items()
        if op.body is not None and "/proxy/" not in path
    ]


def test_every_body_operation_has_a_case_here() -> None:
    keyed = {(m, p) for m, p, model in body_operations() if model.__name__ not in FREE}
    assert keyed - {("POST", "/api/embed/session")} == set(CASES)


@pytest.fixture
def parsed_with(monkeypatch: pytest.MonkeyPatch) -> list[type[BaseModel]]:
    """The models the routes parse bodies with, in order."""
    seen: list[type[BaseModel]] = []
    original = bff.http.validated

    def recording(model: Any, data: Any, **options: Any) -> Any:
        seen.append(model)
        return original(model, data, **options)

    monkeypatch.setattr(bff.http, "validated", recording)
    monkeypatch.setattr(bff.api.partners, "validated", recording)
    return seen


async def test_every_route_with_a_request_body_parses_it_with_its_operations_model(
    world: World, parsed_with: list[type[BaseModel]]
) -> None:
    """Walk /openapi.json: each operation with a requestBody, sent a body of wrong types, is
    refused by the model the document's schema comes from (never a 500)."""
    spec = build_spec(world.bff.app.routes)
    walked = 0
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if "requestBody" not in operation or "/proxy/" in path or path.startswith("/sandbox/"):
                continue
            walked += 1
            key = (method.upper(), path)
            model = OPERATIONS[key].body
            assert model is not None
            assert operation["requestBody"]["content"]["application/json"]["schema"] == {
                "$ref": f"#/components/schemas/{model.__name__}"
            }
            body = CASES[key][0][0] if key in CASES else {"__x": [[{}]], "parent_origin": [1]}
            parsed_with.clear()
            answer = await world.bff.client.request(
                method.upper(), url_of(world, path), json=body, headers=headers_for(world, path)
            )
            assert answer.status_code < 500, (key, answer.text)
            assert model in parsed_with, (key, parsed_with)
    assert walked == len(body_operations())


@pytest.mark.parametrize("key", sorted(CASES))
async def test_a_wrong_type_and_a_missing_field_are_refused_naming_the_field(
    world: World, key: tuple[str, str]
) -> None:
    method, path = key
    wrong, missing = CASES[key]
    for body, field in [wrong] + ([missing] if missing else []):
        answer = await world.bff.client.request(
            method, url_of(world, path), json=body, headers=headers_for(world, path)
        )
        assert answer.status_code == 400, (body, answer.text)
        assert answer.json()["code"] == "validation_error", answer.text
        assert field in answer.json()["errors"], (body, answer.json())


async def test_an_embed_session_without_a_parent_origin_is_the_origins_refusal(world: World) -> None:
    for body in ({}, {"parent_origin": 5}, {"parent_origin": ["https://a.example"]}):
        answer = await world.bff.client.post("/api/embed/session", json=body, headers=world.identity)
        assert answer.status_code == 403 and answer.json()["code"] == "origin_not_allowed", answer.text


def test_refusals_keep_the_contracts_wording() -> None:
    """pydantic's own errors are put in our words (bff.http.field_errors)."""
    from bff.errors import Invalid

    def refused(model: type[BaseModel], data: Any, **context: Any) -> dict[str, str]:
        with pytest.raises(Invalid) as caught:
            bff.http.validated(model, data, context=context or None)
        assert caught.value.errors is not None
        return caught.value.errors

    assert refused(
        rq.SubAccountFields, {"external_id": True, "first_name": 5, "email": "x", "language": "english"}
    ) == {
        "external_id": "Must be a string (or an integer).",
        "first_name": "Must be a string.",
        "email": "Must be an email address.",
        "language": "Must be a language code such as `en` or `nl`.",
    }
    assert refused(rq.RotateToken, {"keep_customer_tokens": "true", "x": 1}) == {
        "keep_customer_tokens": "Must be true or false.",
        "x": "Unknown field; send keep_customer_tokens or nothing.",
    }
    assert refused(rq.ScriptStateBody, {"other": 1}) == {"state": 'Send {"state": <any JSON value>}.'}
    assert refused(rq.QueryRun, {"query": " ", "limit": True}) == {
        "query": "Must not be empty.",
        "limit": "Must be a whole number from 1 to 10000.",
    }
    assert refused(
        rq.ConnectionChange,
        {"table_frequencies": {"deals": 10}, "tables": ["nope"]},
        streams=["deals"],
        frequency_streams=["deals"],
    ) == {
        "table_frequencies.deals": "Must be at least 300 seconds.",
        "tables": "Unknown table(s): nope. This connection has: deals.",
    }
    # Strict: no "5" for 5, no 1 for true.
    assert refused(rq.SyncRequest, {"full": 1}) == {"full": "Must be true or false."}
    assert refused(rq.QueryRun, {"query": "SELECT 1", "limit": "5"}) == {
        "limit": "Must be a whole number from 1 to 10000."
    }


# (method, path): (a query string with one bad parameter, that parameter).
QUERY_CASES: dict[tuple[str, str], tuple[str, str]] = {
    ("GET", "/api/partner/sub-accounts"): ("page=x", "page"),
    ("GET", "/api/sub-accounts"): ("page_size=501", "page_size"),
    ("POST", "/api/partner/sub-account/integrate"): ("account_id=x", "account_id"),
    ("POST", "/api/sub-account/integrate"): ("account_id=-1", "account_id"),
    ("GET", "/api/partner/sub-account/identity"): ("external_id=cust-2&expire=maybe", "expire"),
    ("GET", "/api/sub-account/identity"): ("external_id=%E2%80%8Bx", "external_id"),
    ("GET", "/api/partner/webhook/deliveries"): ("page_size=0", "page_size"),
    ("GET", "/api/servertypes"): ("locale=xx", "locale"),
    ("GET", "/api/servers"): ("page=0", "page"),
    ("GET", "/api/server/{id}/logs"): ("page=1.5", "page"),
    ("GET", "/api/server/{id}/config-options"): ("locale=klingon", "locale"),
    ("POST", "/api/server/{id}/reauthorise"): ("locale=xx", "locale"),
    ("POST", "/api/server/{id}/sync"): ("wait=soon", "wait"),
    ("GET", "/api/server/{id}/runs"): ("page=99999999999", "page"),
    ("GET", "/api/applications"): ("exclude_tables=maybe", "exclude_tables"),
    ("GET", "/api/database/tables/database/{database_id}"): ("page=x", "page"),
    ("GET", "/api/database/rows/table/{table_id}"): ("user_field_names=maybe", "user_field_names"),
    ("GET", "/api/server/{id}/records/{object}"): ("timeout=maybe", "timeout"),
    ("POST", "/api/server/{id}/records/{object}"): ("refresh=maybe", "refresh"),
    ("PUT", "/api/server/{id}/records/{object}"): ("", "match"),
    ("GET", "/api/server/{id}/records/{object}/{record_id}"): ("timeout=2", "timeout"),
    ("PATCH", "/api/server/{id}/records/{object}/{record_id}"): ("refresh=x", "refresh"),
    ("DELETE", "/api/server/{id}/records/{object}/{record_id}"): ("timeout=x", "timeout"),
    ("GET", "/api/interface"): ("page=x", "page"),
    ("POST", "/api/interface/{script_id}/run"): ("wait=-1", "wait"),
    ("GET", "/api/interface/{script_id}/runs"): ("page_size=x", "page_size"),
}


def test_every_operation_with_query_parameters_has_a_case_here() -> None:
    assert {key for key, op in OPERATIONS.items() if op.query is not None} == set(QUERY_CASES)


async def test_every_route_parses_its_query_parameters_with_its_operations_model(
    world: World, parsed_with: list[type[BaseModel]]
) -> None:
    """A bad parameter is refused naming it, by the operation's query model (or the part of it
    that holds the parameter: Paging for the paged lists)."""
    for (method, path), (query, field) in QUERY_CASES.items():
        model = OPERATIONS[(method, path)].query
        assert model is not None and field in model.model_fields
        body = {} if method in ("POST", "PUT", "PATCH") and OPERATIONS[(method, path)].body is not None else None
        parsed_with.clear()
        answer = await world.bff.client.request(
            method, f"{url_of(world, path)}?{query}", json=body, headers=headers_for(world, path)
        )
        assert answer.status_code == 400, (method, path, answer.text)
        assert answer.json()["code"] == "validation_error" and field in answer.json()["errors"], answer.text
        assert any(issubclass(model, used) and field in used.model_fields for used in parsed_with), (path, parsed_with)


def _request(messages: list[dict[str, Any]]) -> Any:
    from starlette.requests import Request

    received = iter(messages)

    async def receive() -> dict[str, Any]:
        return next(received)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [(b"content-type", b"application/json")]}
    return Request(scope, receive)


async def test_a_body_read_for_json_reads_as_starlette_would() -> None:
    """read_json reads the ASGI messages itself (not through Starlette's generator): a body in
    several messages is joined, ``request.body()`` afterwards gives the same bytes, and a client
    that went away is Starlette's ClientDisconnect."""
    from starlette.requests import ClientDisconnect

    parts = [b'{"external_id": ', b"", b'"a", "n": [1, 2]}']
    request = _request(
        [{"type": "http.request", "body": part, "more_body": i < len(parts) - 1} for i, part in enumerate(parts)]
    )
    assert await bff.http.read_json(request) == {"external_id": "a", "n": [1, 2]}
    assert await request.body() == b"".join(parts)
    assert [chunk async for chunk in request.stream()] == [b"".join(parts), b""]
    assert await bff.http.read_body(request) == b"".join(parts)  # read again: the same

    whole = _request([{"type": "http.request", "body": b'{"a": 1}'}])
    assert await bff.http.read_body(whole) == b'{"a": 1}' == await whole.body()

    gone = _request([{"type": "http.request", "body": b"{", "more_body": True}, {"type": "http.disconnect"}])
    with pytest.raises(ClientDisconnect):
        await bff.http.read_body(gone)
    assert gone._is_disconnected

    consumed = _request([{"type": "http.request", "body": b"{}"}])
    assert [chunk async for chunk in consumed.stream()] == [b"{}", b""]
    with pytest.raises(RuntimeError, match="Stream consumed"):  # as request.body() after a stream()
        await bff.http.read_body(consumed)


def test_json_answer_is_starlettes_json_response_byte_for_byte() -> None:
    """JSONAnswer renders with pydantic_core, not json.dumps: the same bytes for what it is used for
    (no floats), every character escaped alike."""
    from starlette.responses import JSONResponse

    every_character = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    for content in (
        {"token": "a.b.c", "expires_in": 1800, "expires_at": None, "account_id": 2**63 - 1, "external_id": "Zoë"},
        {"nested": [1, -(2**100), True, False, None, {"ü": '\u2028\t\x01\x7f"\\/'}], "": []},
        {every_character: every_character},
        [],
        "x",
    ):
        answer = bff.http.JSONAnswer(content, headers={"Cache-Control": "no-store"})
        assert answer.body == JSONResponse(content).body
        assert answer.raw_headers == JSONResponse(content, headers={"Cache-Control": "no-store"}).raw_headers
        # Minted tokens' answer: its headers written directly, the same list.
        no_store = bff.http.NoStoreJSONAnswer(content)
        assert (no_store.body, no_store.raw_headers) == (answer.body, answer.raw_headers)


def test_the_byte_precheck_skips_only_bodies_that_the_walk_would_pass() -> None:
    """read_json walks the parsed body (check_json_value) only when its bytes could hold a NUL, a lone
    surrogate or nesting deeper than MAX_JSON_DEPTH; every body it skips, the walk would pass."""
    import json

    from bff.errors import ApiError
    from bff.http import MAX_JSON_DEPTH, check_json_value, could_hold_unstorable

    def walk_refuses(body: bytes) -> bool:
        try:
            check_json_value(json.loads(body))
        except ApiError:
            return True
        return False

    def nested(depth: int) -> bytes:  # an object whose deepest container is at ``depth``
        return b'{"a": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"

    assert not could_hold_unstorable(nested(MAX_JSON_DEPTH)) and not walk_refuses(nested(MAX_JSON_DEPTH))
    assert could_hold_unstorable(nested(MAX_JSON_DEPTH + 1)) and walk_refuses(nested(MAX_JSON_DEPTH + 1))
    for refused in (b'{"a": "x\\u0000"}', b'{"\\ud800": 1}', b'{"a": ["\\udfff"]}', b'{"a": "\xed\xa0\x80"}'):
        assert could_hold_unstorable(refused) and walk_refuses(refused), refused
    for body in (
        b'{"external_id": "bench-customer", "first_name": "Bench"}',
        b'{"a": [1, 2.5, null, true, {"b": "[{[{"}], "c": "}}]]"}',
        b'{"a": "' + bytes(range(0x20, 0x7F)).replace(b'"', b"").replace(b"\\", b"") + b'"}',
        b'{"x": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}',  # brackets in a string count: walked, passes
    ):
        assert could_hold_unstorable(body) or not walk_refuses(body), body


def test_connect_form_values_come_as_sent_without_serializer_warnings() -> None:
    """The connector's form checks its own fields (with its labels): the body hands them on as
    they came, even a value of a type the schema does not list, without pydantic complaining."""
    given = rq.ConnectionCreate.model_validate({"servertype_id": 3, "login": ["x"], "password": "y", "name": "Bank"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values = given.form_values()
    assert values == {"servertype_id": 3, "name": "Bank", "login": ["x"], "password": "y"}
    assert list(values) == ["servertype_id", "name", "login", "password"]
