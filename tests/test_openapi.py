"""/openapi.json as outside tools read it (DESIGN §16): valid, unique and stable operationIds, every
route of the API described by the contract's models, nulls and arrays as the server answers them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from openapi_spec_validator import validate

from bff.app import create_app
from bff.contract.operations import OPERATIONS
from bff.openapi import _walk, build_spec, derived_id
from bff.settings import Settings


@pytest.fixture(params=[True, False], ids=["sandbox", "no-sandbox"])
def spec_and_app(
    request: pytest.FixtureRequest, settings_factory: Callable[..., Settings]
) -> tuple[dict[str, Any], Any]:
    app = create_app(settings_factory(sandbox_enabled=request.param))  # no server of its own: nothing starts
    return build_spec(app.routes), app


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for path, item in spec["paths"].items() for method, op in item.items()]


def schema_of(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    return schema_of(spec, spec["components"]["schemas"][ref.rsplit("/", 1)[1]]) if ref else schema


def test_the_document_is_valid_openapi_3_1(spec_and_app: tuple[dict[str, Any], Any]) -> None:
    spec, _ = spec_and_app
    assert spec["openapi"] == "3.1.0"
    validate(spec)  # openapi-spec-validator: raises on the first problem
    ids = [op["operationId"] for _, _, op in operations(spec)]
    assert len(ids) == len(set(ids))


def test_every_route_of_the_api_has_its_operation_and_every_operation_a_route(
    spec_and_app: tuple[dict[str, Any], Any],
) -> None:
    spec, app = spec_and_app
    routed = set()
    for raw, route in _walk(app.routes):
        path = raw.replace(":int}", "}").replace(":path}", "}")
        for method in route.methods - {"HEAD"}:
            routed.add((method, path))
            if not path.startswith("/sandbox/"):
                assert (method, path) in OPERATIONS, f"{method} {path} has no operation in bff/contract/operations.py"
    assert set(OPERATIONS) - routed == set()
    sandbox = [op for method, path, op in operations(spec) if path.startswith("/sandbox/")]
    assert all(op["tags"] == ["sandbox"] and op["operationId"].startswith("sandbox") for op in sandbox)


def test_operation_ids_say_what_they_do_and_do_not_change() -> None:
    named = {(m, p): op.id for (m, p), op in OPERATIONS.items()}
    # Released names: a generated client's functions are called this, so these never change.
    assert named[("POST", "/api/partner/sub-account")] == "createSubAccount"
    assert named[("GET", "/api/server/{id}/runs")] == "listServerRuns"
    assert named[("GET", "/api/interface/{script_id}/runs")] == "listScriptRuns"
    assert named[("GET", "/api/server/{id}/config-options")] == "getConfigOptions"
    assert named[("POST", "/api/server/{id}/config")] == "saveConfig"
    assert named[("GET", "/api/database/rows/table/{table_id}")] == "listRows"
    assert all(op.id[:1].islower() and op.id.isalnum() for op in OPERATIONS.values())
    assert derived_id("GET", "/sandbox/exact/api/v1/{division}/invoices") == "sandboxGetExactApiV1DivisionInvoices"


def test_arrays_have_items_nulls_are_allowed_where_the_server_answers_them(
    spec_and_app: tuple[dict[str, Any], Any],
) -> None:
    spec, _ = spec_and_app

    def arrays(value: Any) -> list[dict[str, Any]]:
        if isinstance(value, dict):
            found = [value] if value.get("type") == "array" else []
            return found + [a for inner in value.values() for a in arrays(inner)]
        return [a for inner in value for a in arrays(inner)] if isinstance(value, list) else []

    assert all("items" in array for array in arrays(spec))
    schemas = spec["components"]["schemas"]
    assert schemas["ConfigOptions"]["properties"]["selected"]["items"]["anyOf"] == [
        {"type": "string"},
        {"type": "integer"},
    ]
    config_body = schema_of(
        spec, spec["paths"]["/api/server/{id}/config"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    )
    assert config_body["additionalProperties"]["anyOf"][0]["items"]
    table = schemas["Table"]["properties"]
    # A query table has no connection, and no row count when its query broke.
    assert {"type": "null"} in table["connection"]["anyOf"] and {"type": "null"} in table["row_count"]["anyOf"]
    for model, fields in {
        "Table": ("type", "schema", "table", "sql_name", "query", "updated_at", "error"),
        "Connection": ("oauth_url", "oauth_nonce"),
        "Run": ("resume_at",),
        "Servertype": ("description", "streams", "config_select"),
    }.items():
        assert set(fields) <= set(schemas[model]["properties"]), model


def test_every_documented_query_parameter(spec_and_app: tuple[dict[str, Any], Any]) -> None:
    spec, _ = spec_and_app

    def params(path: str, method: str = "get") -> dict[str, dict[str, Any]]:
        return {p["name"]: p for p in spec["paths"][path][method].get("parameters", [])}

    rows = params("/api/database/rows/table/{table_id}")
    assert set(rows) >= {"search", "order_by", "updated_since", "include", "exclude", "size", "page", "page_size"}
    filters = rows["filters"]
    assert filters["style"] == "form" and filters["explode"] is True
    pattern = schema_of(spec, filters["schema"])["propertyNames"]["pattern"]
    assert pattern.startswith("^filter__") and "not_empty" in pattern
    assert set(params("/api/servertypes")) >= {"locale", "page", "page_size"}
    assert params("/api/servertypes")["locale"]["schema"]["enum"] == ["en", "nl", "fr", "de"]
    assert set(params("/api/servers")) >= {"page", "page_size"}
    assert "locale" in params("/api/server/{id}/config-options")
    assert "locale" in params("/api/server/{id}/reauthorise", "post")
    records = "/api/server/{id}/records/{object}"
    assert {"refresh", "timeout"} <= set(params(records, "post"))
    assert params(records, "put")["match"]["required"] is True
    assert params(records)["fields"]["explode"] is True


def test_bodies_and_answers_are_described(spec_and_app: tuple[dict[str, Any], Any]) -> None:
    spec, _ = spec_and_app
    for method, path in [
        ("post", "/api/table"),
        ("post", "/table"),
        ("patch", "/api/table/{table_id}"),
        ("post", "/api/database/query"),
        ("put", "/api/interface/{script_id}/state"),
        ("post", "/api/server/{id}/records/{object}"),
        ("put", "/api/server/{id}/records/{object}"),
        ("patch", "/api/server/{id}/records/{object}/{record_id}"),
        ("post", "/api/server/{id}/proxy/{path}"),
    ]:
        assert "requestBody" in spec["paths"][path][method], (method, path)
    for method, path, status in [
        ("post", "/api/partner/sub-account/{account_id}/database-credentials", "200"),
        ("get", "/api/server/{id}/objects", "200"),
        ("post", "/api/server/{id}/records/{object}", "201"),
        ("get", "/api/interface/{script_id}/state", "200"),
    ]:
        assert spec["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]
    for _method, path, op in operations(spec):
        if "/proxy/" in path:  # the provider's status and body pass through: not only our error shape
            assert "content" not in op["responses"]["default"] and list(op["responses"]) == ["default"]
        elif path.startswith("/api/"):
            assert op["security"] == [{"token": []}]
            assert schema_of(spec, op["responses"]["default"]["content"]["application/json"]["schema"])["required"] == [
                "detail",
                "code",
            ]
    tags = {t["name"] for t in spec["tags"]}
    assert {"partner", "connections", "sync", "warehouse", "query-tables", "writeback", "scripts"} <= tags


async def test_every_in_process_answer_is_checked_against_the_document(bff: Any) -> None:
    """tests/contract_check.py hooks every `bff` fixture's client: an answer unlike its schema fails."""
    from contract_check import AnswerMismatch, contract_for

    assert bff.client.event_hooks["response"]
    contract = contract_for(bff.app)
    ok = b'{"detail": "No such connection.", "code": "not_found"}'
    contract.check("GET", "/api/server/7/", 404, "application/json", ok)
    with pytest.raises(AnswerMismatch, match="id"):
        contract.check("GET", "/api/server/7", 200, "application/json", b'{"id": "seven"}')
    with pytest.raises(AnswerMismatch, match="code"):
        contract.check("GET", "/api/partner", 403, "application/json", b'{"detail": "no code"}')
    with pytest.raises(AnswerMismatch, match="DELETE .* 200"):  # only 204 is described: 200 is taken for an error
        contract.check("DELETE", "/api/server/7", 200, "application/json", b"{}")


async def test_every_body_the_server_takes_is_one_the_document_allows(bff: Any) -> None:
    from contract_check import AnswerMismatch, contract_for

    contract = contract_for(bff.app)
    contract.check_accepted_body("POST", "/api/interface", 201, "application/json", b'{"name": "a", "raw_code": "x"}')
    contract.check_accepted_body("POST", "/api/interface", 400, "application/json", b'{"name": 5}')  # refused: fine
    with pytest.raises(AnswerMismatch, match="name"):
        contract.check_accepted_body("POST", "/api/interface", 201, "application/json", b'{"name": 5, "raw_code": "x"}')
    with pytest.raises(AnswerMismatch, match="does not describe"):
        contract.check_accepted_body("GET", "/api/servers", 200, "application/json", b"{}")
    # The hook sees the bodies the tests send.
    seen: list[bytes] = []
    original = contract.check_accepted_body
    contract.check_accepted_body = lambda *args: seen.append(args[-1]) or original(*args)  # type: ignore[method-assign]
    try:
        await bff.client.post("/api/partner/origins", json={"origins": []})
    finally:
        contract.check_accepted_body = original  # type: ignore[method-assign]
    assert seen == [b'{"origins":[]}'] or seen == [b'{"origins": []}']


def test_released_operation_ids_never_change() -> None:
    """tests/released_operation_ids.json lists every operationId released so far: none may be
    renamed or moved to another route (generated clients call them by name). A new operation is
    added to the file when it is released."""
    import json
    from pathlib import Path

    released = json.loads((Path(__file__).parent / "released_operation_ids.json").read_text())
    now = {f"{method} {path}": op.id for (method, path), op in OPERATIONS.items()}
    assert {key: now.get(key) for key in released} == released
