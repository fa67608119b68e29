"""OpenAPI 3.1 built from the routes that exist, so it cannot drift from them."""

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
    if path.startswith("/api/partner") or path.startswith("/api/sub-account"):
        return "partner"
    if path.startswith("/sandbox"):
        return "sandbox"
    if path.startswith("/embed") or path.startswith("/oauth"):
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
            operation: dict[str, Any] = {
                "summary": _summary(route.endpoint),
                "operationId": f"{route.name}_{method.lower()}",
                "tags": [_tag(path)],
                "responses": {
                    "default": {
                        "description": "Error",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                    },
                    "2XX": {"description": "Success"},
                },
            }
            if params:
                operation["parameters"] = params
            if path.startswith("/api/"):
                operation["security"] = [{"token": []}]
            item[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "bff: embedded-integrations kit", "version": "1"},
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": {"Error": ERROR_SCHEMA},
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
