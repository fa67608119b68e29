"""OpenAPI 3.1 built from the routes that exist, so it cannot drift from them.

Paths and methods come from the router; request and response bodies of the JSON API come
from :data:`OPERATIONS` (keyed by method and path), so schemathesis can check answers
against them. A route missing from the table still appears, with only the error shape.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Mount, Route

_PARAM = re.compile(r"{([a-zA-Z_][a-zA-Z0-9_]*)(?::([a-z]+))?}")
ERROR_SCHEMA = {
    "type": "object",
    "required": ["detail", "code"],
    "properties": {
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "errors": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _page_of(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["count", "next", "previous", "results"],
        "properties": {
            "count": {"type": "integer", "minimum": 0},
            "next": _nullable({"type": "string"}),
            "previous": _nullable({"type": "string"}),
            "results": {"type": "array", "items": item},
        },
    }


_STR = {"type": "string"}
_INT = {"type": "integer"}
_ID = {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}
_TIME = _nullable({"type": "string"})
_SCRIPT_FIELDS = {
    "name": {"type": "string", "minLength": 1, "maxLength": 100},
    "raw_code": {"type": "string", "minLength": 1},
    "schedule": _nullable({"type": "integer", "minimum": 60}),
}
_SCRIPT_RUN = {
    "type": "object",
    "required": ["id", "status", "started_at", "finished_at", "exit_code", "output", "error"],
    "properties": {
        "id": _ID,
        "script_id": _ID,
        "status": {"enum": ["queued", "running", "succeeded", "failed"]},
        "trigger": {"enum": ["api", "schedule"]},
        "created_at": _TIME,
        "started_at": _TIME,
        "finished_at": _TIME,
        "exit_code": _nullable(_INT),
        "output": {"type": "string", "description": "The last 64 KB of stdout and stderr"},
        "error": _nullable(_STR),
    },
}
SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": ERROR_SCHEMA,
    "ScriptCreate": {"type": "object", "required": ["name", "raw_code"], "properties": _SCRIPT_FIELDS},
    "ScriptChange": {"type": "object", "properties": _SCRIPT_FIELDS},
    "ScriptRun": _SCRIPT_RUN,
    "Script": {
        "type": "object",
        "required": ["id", "name", "raw_code", "schedule", "next_run_at", "last_run"],
        "properties": {
            "id": _ID,
            **_SCRIPT_FIELDS,
            "next_run_at": _TIME,
            "created_at": _TIME,
            "updated_at": _TIME,
            "last_run": _nullable(_SCRIPT_RUN),
        },
    },
    "SubAccountFields": {
        "type": "object",
        "properties": {
            "external_id": {"anyOf": [{"type": "string", "minLength": 1, "maxLength": 255}, {"type": "integer"}]},
            "first_name": {"type": "string", "maxLength": 200},
            "last_name": {"type": "string", "maxLength": 200},
            "company_name": {"type": "string", "maxLength": 200},
            "email": {"type": "string", "format": "email", "maxLength": 254},
            "language": {"type": "string", "pattern": "^[a-z]{2,3}(-[A-Za-z]{2,4})?$"},
        },
        "required": ["external_id"],
    },
    "SubAccount": {
        "type": "object",
        "required": ["id", "external_id", "created_at"],
        "properties": {
            "id": _INT,
            "external_id": _STR,
            "first_name": _STR,
            "last_name": _STR,
            "email": _STR,
            "language": _STR,
            "company_name": _STR,
            "created_at": _TIME,
        },
    },
    "Partner": {
        "type": "object",
        "required": ["id", "name", "origins"],
        "properties": {
            "id": _INT,
            "name": _STR,
            "origins": {"type": "array", "items": _STR},
            "token": _STR,
            "revoked": {"type": "boolean"},
        },
    },
    "Token": {
        "type": "object",
        "required": ["token", "expires_in", "expires_at", "account_id", "external_id"],
        "properties": {
            "token": _STR,
            "expires_in": _nullable(_INT),
            "expires_at": _nullable(_INT),
            "account_id": _INT,
            "external_id": _STR,
        },
    },
    "Revoked": {
        "type": "object",
        "required": ["account_id", "external_id", "revoked"],
        "properties": {"account_id": _INT, "external_id": _STR, "revoked": {"type": "boolean"}},
    },
    "Run": {
        "type": "object",
        "required": ["id", "status"],
        "properties": {
            "id": _INT,
            "pipeline_run_id": _INT,
            "task_id": _nullable(_STR),
            "status": _STR,
            "started_at": _TIME,
            "finished_at": _TIME,
            "records": {},
            "tables": {},
            "categories": _nullable({"type": "array", "items": _STR}),
            "error": _nullable(_STR),
            "full": {"type": "boolean"},
            "trigger": _STR,
        },
    },
    "Connection": {
        "type": "object",
        "required": ["id", "name", "servertype_id", "connector", "health_status", "created_at", "last_run"],
        "properties": {
            "id": _INT,
            "name": _STR,
            "servertype_id": {"type": ["integer", "string", "null"]},
            "connector": _STR,
            "health_status": _STR,
            "detail": _nullable(_STR),
            "config": {"type": "object"},
            "created_at": _TIME,
            "last_run": _nullable(_ref("Run")),
            "live_count": _INT,
            "account_id": _INT,
            "external_id": _STR,
            "oauth_url": _STR,
            "sync_frequency": _nullable(_INT),
            "table_frequencies": {"type": "object", "additionalProperties": _INT},
            "next_sync_at": _TIME,
        },
    },
    "Webhook": {
        "type": "object",
        "required": ["url", "events"],
        "properties": {
            "url": _STR,
            "events": {"type": "array", "items": _STR},
            "created_at": _TIME,
            "updated_at": _TIME,
            "secret": {"type": "string", "description": "Only when the webhook is created and on rotation."},
        },
    },
    "WebhookDelivery": {
        "type": "object",
        "required": ["id", "webhook_id", "type", "status", "attempts"],
        "properties": {
            "id": _INT,
            "webhook_id": _STR,
            "type": _STR,
            "status": _STR,
            "attempts": {"type": "array", "items": {"type": "object"}},
            "next_attempt_at": _TIME,
            "created_at": _TIME,
            "delivered_at": _TIME,
            "payload": {"type": "object"},
        },
    },
    "ConnectionCreate": {
        "type": "object",
        "required": ["servertype_id"],
        "properties": {"servertype_id": {"type": ["integer", "string"]}, "name": {"type": "string", "maxLength": 200}},
        "additionalProperties": {"type": ["string", "integer", "number"]},
        "description": "The connector's connect-form fields go next to servertype_id and name.",
    },
    "Servertype": {
        "type": "object",
        "required": ["id", "name", "display_name", "auth_type", "connect_form"],
        "properties": {
            "id": {"type": ["integer", "string"]},
            "name": _STR,
            "display_name": _STR,
            "category": {},
            "logo_url": {},
            "auth_type": _STR,
            "connect_form": {"type": "object"},
            "capabilities": {},
        },
    },
    "Health": {
        "type": "object",
        "required": ["id", "name", "health_status"],
        "properties": {"id": _INT, "name": _STR, "health_status": _STR, "detail": _nullable(_STR)},
    },
    "SyncStatus": {
        "type": "object",
        "required": ["running", "pipeline_run_id"],
        "properties": {"running": {"type": "boolean"}, "pipeline_run_id": _nullable(_INT), "status": _nullable(_STR)},
    },
    "SyncStarted": {
        "type": "object",
        "required": ["server_id", "health_status", "run_data", "task_id", "detail", "syncing"],
        "properties": {
            "server_id": {
                "type": "string",
                "description": "The connection id, as a string (as the source document has it).",
            },
            "health_status": _STR,
            "task_id": {},
            "detail": _STR,
            "syncing": {"type": "boolean"},
            "run_data": {"type": "array", "items": {"type": "object", "required": ["pipeline_run_id"]}},
            "full": {"type": "boolean"},
            "run": _ref("Run"),
        },
    },
    "Log": {
        "type": "object",
        "required": ["ts", "level", "message"],
        "properties": {"ts": {}, "level": _STR, "message": _STR, "pipeline_run_id": _nullable(_INT)},
    },
    "Table": {
        "type": "object",
        "required": ["id", "name", "connection", "row_count", "fields"],
        "properties": {
            "id": _INT,
            "name": _STR,
            "connection": _INT,
            "database_id": _INT,
            "row_count": _INT,  # every row, deleted ones included (null: a query table whose query broke)
            "live_count": _nullable(_INT),
            "deleted_count": _nullable(_INT),  # null: a query table without a _deleted_at column
            "primary_key": {"type": "array", "items": _STR},
            "fields": {"type": "array", "items": {"type": "object"}},
            "created_at": _TIME,
        },
    },
    "Database": {
        "type": "object",
        "required": ["id", "name", "type"],
        "properties": {
            "id": _INT,
            "name": _STR,
            "type": _STR,
            "account_id": _INT,
            "external_id": _STR,
            "tables": {"type": "array", "items": _ref("Table")},
        },
    },
    "ConfigOptions": {
        "type": "object",
        "required": ["field", "options", "selected"],
        "properties": {
            "field": _STR,
            "label": _STR,
            "multiple": {"type": "boolean"},
            "options": {"type": "array", "items": {"type": "object", "required": ["value", "label"]}},
            "selected": {"type": "array"},
        },
    },
}

_PAGE = {"name": "page", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1}}
_PAGE_SIZE = {
    "name": "page_size",
    "in": "query",
    "required": False,
    "schema": {"type": "integer", "minimum": 1, "maximum": 500},
}
_WHICH = [
    {"name": "account_id", "in": "query", "required": False, "schema": _ID},
    {"name": "external_id", "in": "query", "required": False, "schema": _STR},
]


def _json(schema: dict[str, Any], description: str = "Success") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(schema: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


_CONNECTION = _ref("Connection")
_WAIT = {"name": "wait", "in": "query", "required": False, "schema": {"type": "number", "minimum": 0, "maximum": 120}}
# (METHOD, path) → requestBody / parameters / responses of the JSON API.
OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/api/partner"): {"responses": {"200": _json(_ref("Partner"))}},
    ("POST", "/api/partner/rotate-token"): {
        "requestBody": _body(
            {
                "type": "object",
                "properties": {"keep_customer_tokens": {"type": "boolean", "default": False}},
                "additionalProperties": False,
            },
            required=False,
        ),
        "responses": {
            "200": _json(
                _ref("Partner"),
                "The new token (the old one is dead, and so are the customer tokens minted with it"
                " unless keep_customer_tokens)",
            )
        },
    },
    ("POST", "/api/partner/revoke"): {
        "responses": {"200": _json(_ref("Partner"), "Every token of the partner is dead")}
    },
    ("PUT", "/api/partner/origins"): {
        "requestBody": _body(
            {
                "type": "object",
                "required": ["origins"],
                "properties": {"origins": {"type": "array", "items": _STR, "maxItems": 50}},
            }
        ),
        "responses": {"200": _json(_ref("Partner"))},
    },
    ("POST", "/api/partner/sub-account"): {
        "requestBody": _body(_ref("SubAccountFields")),
        "responses": {"201": _json(_ref("SubAccount"), "Created")},
    },
    ("GET", "/api/partner/sub-accounts"): {
        "parameters": [_PAGE, _PAGE_SIZE],
        "responses": {"200": _json(_page_of(_ref("SubAccount")))},
    },
    ("POST", "/api/partner/sub-account/integrate"): {
        "requestBody": _body(_ref("SubAccountFields"), required=False),
        "parameters": _WHICH,
        "responses": {"200": _json(_ref("Token"))},
    },
    ("POST", "/api/sub-account/integrate"): {"parameters": _WHICH, "responses": {"200": _json(_ref("Token"))}},
    ("GET", "/api/partner/sub-account/identity"): {
        "parameters": [*_WHICH, {"name": "expire", "in": "query", "required": False, "schema": {"type": "boolean"}}],
        "responses": {"200": _json(_ref("Token"))},
    },
    ("POST", "/api/partner/sub-account/{account_id}/revoke-tokens"): {"responses": {"200": _json(_ref("Revoked"))}},
    ("GET", "/api/servertypes"): {"responses": {"200": _json(_page_of(_ref("Servertype")))}},
    ("POST", "/api/servers"): {
        "requestBody": _body(_ref("ConnectionCreate")),
        "responses": {"201": _json(_CONNECTION, "Created (OAuth2: with oauth_url)")},
    },
    ("GET", "/api/servers"): {"responses": {"200": _json(_page_of(_CONNECTION))}},
    ("GET", "/api/server/{id}"): {"responses": {"200": _json(_CONNECTION)}},
    ("DELETE", "/api/server/{id}"): {"responses": {"204": {"description": "Deleted"}}},
    ("GET", "/api/server/{id}/logs"): {
        "parameters": [_PAGE, _PAGE_SIZE],
        "responses": {"200": _json(_page_of(_ref("Log")))},
    },
    ("GET", "/api/server/{id}/config-options"): {"responses": {"200": _json(_ref("ConfigOptions"))}},
    ("POST", "/api/server/{id}/config"): {
        "requestBody": _body({"type": "object", "additionalProperties": {"type": ["array", "string", "integer"]}}),
        "responses": {"200": _json(_CONNECTION)},
    },
    ("POST", "/api/server/{id}/reauthorise"): {
        "requestBody": _body(
            {"type": "object", "additionalProperties": {"type": ["string", "integer", "number"]}}, required=False
        ),
        "responses": {
            "200": _json(
                {
                    "type": "object",
                    "required": ["id"],
                    "properties": {"id": _INT, "auth_uri": _STR, "form": {"type": "object"}},
                }
            )
        },
    },
    ("POST", "/api/server/{id}/manual-refresh"): {
        "responses": {
            "200": _json(
                {"type": "object", "required": ["id", "refresh_url"], "properties": {"id": _INT, "refresh_url": _STR}}
            )
        },
    },
    ("POST", "/api/server/{id}/sync"): {
        "requestBody": _body(
            {
                "type": "object",
                "properties": {
                    "tables": {"type": "array", "items": _STR},
                    "full": {"type": "boolean"},
                    "categories": {"type": "array", "items": _STR},
                },
            },
            required=False,
        ),
        "parameters": [_WAIT],
        "responses": {
            "202": _json(_ref("SyncStarted"), "Queued (or still running after ?wait=)"),
            "200": _json(_ref("SyncStarted"), "Finished within ?wait= (with `run`)"),
        },
    },
    ("PATCH", "/api/server/{id}"): {
        "requestBody": _body(
            {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 200},
                    "sync_frequency": _nullable({"type": "integer", "minimum": 300}),
                    "table_frequencies": {
                        "type": "object",
                        "additionalProperties": {"type": "integer", "minimum": 300},
                    },
                },
            }
        ),
        "responses": {"200": _json(_CONNECTION)},
    },
    ("POST", "/api/server/{id}/disable"): {"responses": {"200": _json(_CONNECTION, "DISABLED")}},
    ("POST", "/api/server/{id}/enable"): {"responses": {"200": _json(_CONNECTION, "RE_ENABLED")}},
    ("PUT", "/api/partner/webhook"): {
        "requestBody": _body(
            {
                "type": "object",
                "required": ["url"],
                "properties": {
                    "url": {"type": "string", "maxLength": 2048},
                    "events": {"type": "array", "items": _STR},
                },
            }
        ),
        "responses": {"201": _json(_ref("Webhook"), "Created (with secret)"), "200": _json(_ref("Webhook"), "Changed")},
    },
    ("GET", "/api/partner/webhook"): {"responses": {"200": _json(_ref("Webhook"))}},
    ("DELETE", "/api/partner/webhook"): {"responses": {"204": {"description": "Removed"}}},
    ("POST", "/api/partner/webhook/rotate-secret"): {
        "responses": {"200": _json(_ref("Webhook"), "With the new secret")}
    },
    ("GET", "/api/partner/webhook/deliveries"): {
        "parameters": [_PAGE, _PAGE_SIZE],
        "responses": {"200": _json(_page_of(_ref("WebhookDelivery")))},
    },
    ("POST", "/api/partner/webhook/deliveries/{delivery_id}/redeliver"): {
        "responses": {
            "202": _json(
                {
                    "type": "object",
                    "required": ["id", "webhook_id", "status"],
                    "properties": {"id": _INT, "webhook_id": _STR, "status": _STR},
                }
            )
        },
    },
    ("GET", "/api/server/{id}/health"): {
        "responses": {"200": _json(_ref("Health")), "304": {"description": "Not modified (If-None-Match)"}},
    },
    ("GET", "/api/server/{id}/sync-status"): {"responses": {"200": _json(_ref("SyncStatus"))}},
    ("GET", "/api/server/{id}/runs"): {
        "parameters": [_PAGE, _PAGE_SIZE],
        "responses": {"200": _json(_page_of(_ref("Run")))},
    },
    ("GET", "/api/applications"): {
        "parameters": [{"name": "exclude_tables", "in": "query", "required": False, "schema": {"type": "boolean"}}],
        "responses": {"200": _json(_page_of(_ref("Database")))},
    },
    ("GET", "/api/database/tables/database/{database_id}"): {
        "parameters": [_PAGE, _PAGE_SIZE],
        "responses": {"200": _json(_page_of(_ref("Table")))},
    },
    ("GET", "/api/database/rows/table/{table_id}"): {
        "parameters": [
            _PAGE,
            _PAGE_SIZE,
            {"name": "user_field_names", "in": "query", "required": False, "schema": {"type": "boolean"}},
        ],
        "responses": {"200": _json(_page_of({"type": "object"}))},
    },
    ("POST", "/api/embed/session"): {
        "requestBody": _body({"type": "object", "required": ["parent_origin"], "properties": {"parent_origin": _STR}}),
        "responses": {"200": _json({"type": "object", "required": ["account_id", "external_id", "partner_id"]})},
    },
    ("POST", "/api/interface"): {
        "requestBody": _body(_ref("ScriptCreate")),
        "responses": {"201": _json(_ref("Script"), "Created")},
    },
    ("GET", "/api/interface"): {
        "parameters": [_PAGE, _PAGE_SIZE],
        "responses": {"200": _json(_page_of(_ref("Script")))},
    },
    ("GET", "/api/interface/{script_id}"): {"responses": {"200": _json(_ref("Script"))}},
    ("PATCH", "/api/interface/{script_id}"): {
        "requestBody": _body(_ref("ScriptChange")),
        "responses": {"200": _json(_ref("Script"))},
    },
    ("DELETE", "/api/interface/{script_id}"): {"responses": {"204": {"description": "Deleted (a run is stopped)"}}},
    ("POST", "/api/interface/{script_id}/run"): {
        "parameters": [_WAIT],
        "responses": {
            "200": _json(_ref("ScriptRun"), "Finished within ?wait"),
            "202": _json(_ref("ScriptRun"), "Queued or running"),
        },
    },
    ("GET", "/api/interface/{script_id}/runs"): {
        "parameters": [_PAGE, _PAGE_SIZE],
        "responses": {"200": _json(_page_of(_ref("ScriptRun")))},
    },
    ("GET", "/api/interface/{script_id}/runs/{run_id}"): {"responses": {"200": _json(_ref("ScriptRun"))}},
    ("GET", "/healthz"): {
        "responses": {
            "200": _json({"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}})
        },
    },
}
# Aliases answer exactly like the paths they stand for.
for _alias, _canonical in (
    (("POST", "/api/sub-account"), ("POST", "/api/partner/sub-account")),
    (("GET", "/api/sub-accounts"), ("GET", "/api/partner/sub-accounts")),
    (("GET", "/api/sub-account/identity"), ("GET", "/api/partner/sub-account/identity")),
    (("POST", "/interface"), ("POST", "/api/interface")),
    (
        ("POST", "/api/sub-account/{account_id}/revoke-tokens"),
        ("POST", "/api/partner/sub-account/{account_id}/revoke-tokens"),
    ),
):
    OPERATIONS.setdefault(_alias, OPERATIONS[_canonical])


def _walk(routes: Iterable[BaseRoute], prefix: str = "") -> Iterable[tuple[str, Route]]:
    for route in routes:
        if isinstance(route, Mount):
            yield from _walk(route.routes or [], prefix + route.path)
        elif isinstance(route, Route) and route.include_in_schema:
            yield prefix + route.path, route


def _summary(endpoint: Callable[..., Any]) -> str:
    doc = inspect.getdoc(endpoint) or endpoint.__name__.replace("_", " ")
    return doc.strip().splitlines()[0]


def _tag(path: str) -> str:
    if path.startswith(("/api/partner", "/api/sub-account")):
        return "partner"
    if path.startswith("/sandbox"):
        return "sandbox"
    if path.startswith(("/embed", "/oauth")):
        return "embed"
    return "api" if path.startswith("/api") else "meta"


def build_spec(routes: Sequence[BaseRoute]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for raw_path, route in _walk(routes):
        params = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": {"type": "integer" if convertor == "int" else "string"},
            }
            for name, convertor in _PARAM.findall(raw_path)
        ]
        path = _PARAM.sub(r"{\1}", raw_path)
        item = paths.setdefault(path, {})
        for method in sorted((route.methods or set()) - {"HEAD"}):
            # The sandbox imitates other companies' APIs: their errors are theirs, not our shape.
            error = (
                {"description": "Error (the provider's own shape)"}
                if path.startswith("/sandbox")
                else _json(_ref("Error"), "Error")
            )
            described = OPERATIONS.get((method, path.rstrip("/") or "/"), {})
            operation: dict[str, Any] = {
                "summary": _summary(route.endpoint),
                "operationId": f"{route.name}_{method.lower()}",
                "tags": [_tag(path)],
                "responses": {"default": error, **described.get("responses", {"2XX": {"description": "Success"}})},
            }
            all_params = params + described.get("parameters", [])
            if all_params:
                operation["parameters"] = all_params
            if "requestBody" in described:
                operation["requestBody"] = described["requestBody"]
            if path.startswith("/api/"):
                operation["security"] = [{"token": []}]
            item[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "bff: embedded-integrations kit", "version": "1"},
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "token": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Partner, integrate or identity token; `JWT <token>` is accepted too.",
                }
            },
        },
    }


def endpoint(routes: Sequence[BaseRoute]) -> Callable[[Request], Any]:
    cache: dict[str, Any] = {}

    async def openapi_json(request: Request) -> JSONResponse:
        """The OpenAPI 3.1 description of every route."""
        if "spec" not in cache:
            cache["spec"] = build_spec(request.app.routes)
        return JSONResponse(cache["spec"])

    return openapi_json
