"""OpenAPI 3.1 built from the routes that exist and the contract's pydantic models, so it cannot drift.

Paths and methods come from the router; each operation's ``operationId``, tag, body, query
parameters and answers from :data:`bff.contract.operations.OPERATIONS`; every schema from the
models in :mod:`bff.contract` (``model_json_schema``). The sandbox's routes imitate other
companies' APIs: they are listed (tag ``sandbox``) with ids made from their method and path.
"""

from __future__ import annotations

import inspect
import re
import types
from collections.abc import Callable, Iterable, Sequence
from typing import Any, get_args

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Mount, Route

from .contract import responses
from .contract.operations import OPERATIONS, TAGS, Operation

_PARAM = re.compile(r"{([a-zA-Z_][a-zA-Z0-9_]*)(?::([a-z]+))?}")
_REF = "#/components/schemas/{model}"
_NOT_A_WORD = re.compile(r"[^A-Za-z0-9]+")


def _walk(routes: Iterable[BaseRoute], prefix: str = "") -> Iterable[tuple[str, Route]]:
    for route in routes:
        if isinstance(route, Mount):
            yield from _walk(route.routes or [], prefix + route.path)
        elif isinstance(route, Route) and route.include_in_schema:
            yield prefix + route.path, route


def _summary(endpoint: Callable[..., Any]) -> str:
    doc = inspect.getdoc(endpoint) or endpoint.__name__.replace("_", " ")
    return doc.strip().splitlines()[0]


def derived_id(method: str, path: str) -> str:
    """``GET /sandbox/exact/api/v1/{division}`` → ``sandboxGetExactApiV1Division``: unique as
    method and path are, for the routes the contract does not name (the sandbox's)."""
    words = [w for w in _NOT_A_WORD.split(path) if w]
    head, *rest = words or ["root"]
    return head.lower() + method.title() + "".join(w[:1].upper() + w[1:] for w in rest)


def _models(answer: Any) -> list[type[BaseModel]]:
    if isinstance(answer, types.UnionType):
        return [m for m in get_args(answer) if isinstance(m, type) and issubclass(m, BaseModel)]
    return [answer] if isinstance(answer, type) and issubclass(answer, BaseModel) else []


class _Schemas:
    """Every model the operations use, as one ``components/schemas`` (``$ref``s between them)."""

    def __init__(self, operations: Iterable[Operation]) -> None:
        wanted: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {(responses.Error, "serialization"): None}
        for op in operations:
            for model, _ in op.answers.values():
                for one in _models(model):
                    wanted[(one, "serialization")] = None
            for model in (op.body, op.query):
                if model is not None:
                    wanted[(model, "validation")] = None
        refs, defs = models_json_schema(list(wanted), ref_template=_REF)
        self.refs: dict[tuple[Any, JsonSchemaMode], dict[str, Any]] = dict(refs)
        self.components: dict[str, Any] = dict(sorted(defs.get("$defs", {}).items()))

    def ref(self, model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
        return self.refs[(model, mode)]

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        ref = schema.get("$ref")
        return self.resolve(self.components[ref.rsplit("/", 1)[1]]) if ref else schema

    def answer(self, model: Any) -> dict[str, Any]:
        found = _models(model)
        if len(found) == 1:
            return self.ref(found[0], "serialization")
        return {"anyOf": [self.ref(m, "serialization") for m in found]}

    def parameters(self, query: type[BaseModel]) -> list[dict[str, Any]]:
        """A query model's fields as query parameters; an object-typed field is a family of
        parameters (``style: form, explode: true``: each key is one)."""
        schema = self.resolve(self.ref(query, "validation"))
        required = set(schema.get("required", []))
        found = []
        for name, raw in schema.get("properties", {}).items():
            prop = {k: v for k, v in raw.items() if k not in ("title", "default")}
            branches = [b for b in prop.pop("anyOf", []) if b != {"type": "null"}]
            if len(branches) == 1:
                prop = {**branches[0], **prop}
            elif branches:
                prop["anyOf"] = branches
            description = prop.pop("description", None)
            param: dict[str, Any] = {"name": name, "in": "query", "required": name in required, "schema": prop}
            if description:
                param["description"] = description
            if self.resolve(prop).get("type") == "object":
                param.update(style="form", explode=True)
            found.append(param)
        return found


def _content(schemas: _Schemas, model: Any, content_type: str) -> dict[str, Any]:
    if model is not None:
        return {content_type: {"schema": schemas.answer(model)}}
    # Text is described; bytes of any type (images, what a provider answers through the proxy) are not.
    return {content_type: {"schema": {"type": "string"}}} if content_type.startswith("text/") else {}


def _operation(
    schemas: _Schemas, op: Operation, method: str, path: str, path_params: list[dict[str, Any]], summary: str
) -> dict[str, Any]:
    answers: dict[str, Any] = {}
    for status, (model, description) in sorted(op.answers.items()):
        answer: dict[str, Any] = {"description": description}
        content = _content(schemas, model, op.content_type) if status != 204 and status != 304 else {}
        if content:
            answer["content"] = content
        answers[str(status)] = answer
    error: dict[str, Any] = {"description": op.errors}
    if op.errors == "Error":
        error["content"] = {"application/json": {"schema": schemas.ref(responses.Error, "serialization")}}
    operation: dict[str, Any] = {
        "operationId": op.id,
        "summary": summary,
        "tags": [op.tag],
        "responses": {**answers, "default": error},
    }
    parameters = path_params + (schemas.parameters(op.query) if op.query is not None else [])
    if parameters:
        operation["parameters"] = parameters
    if op.body is not None:
        operation["requestBody"] = {
            "required": op.body_required,
            "content": {"application/json": {"schema": schemas.ref(op.body, "validation")}},
        }
    if path.startswith("/api/") or path in ("/table", "/interface"):
        operation["security"] = [{"token": []}]
    return operation


def _sandbox_operation(method: str, path: str, path_params: list[dict[str, Any]], summary: str) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": derived_id(method, path),
        "summary": summary,
        "tags": ["sandbox"],
        # The sandbox imitates other companies' APIs: their answers and errors are theirs.
        "responses": {"default": {"description": "The fake provider's answer (its own shape)"}},
    }
    if path_params:
        operation["parameters"] = path_params
    return operation


def _refs(value: Any) -> Iterable[str]:
    if isinstance(value, dict):
        if isinstance(value.get("$ref"), str):
            yield value["$ref"].rsplit("/", 1)[1]
        for inner in value.values():
            yield from _refs(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _refs(inner)


def _used(components: dict[str, Any], paths: dict[str, Any]) -> dict[str, Any]:
    """The schemas the paths use (query models become parameters: theirs are not kept whole)."""
    todo, seen = list(_refs(paths)), set[str]()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(_refs(components[name]))
    return {name: schema for name, schema in components.items() if name in seen}


def build_spec(routes: Sequence[BaseRoute]) -> dict[str, Any]:
    schemas = _Schemas(OPERATIONS.values())
    paths: dict[str, dict[str, Any]] = {}
    for raw_path, route in _walk(routes):
        path_params = [
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
            summary = _summary(route.endpoint)
            op = OPERATIONS.get((method, path.rstrip("/") or "/"))
            if op is None:  # the sandbox; tests/test_openapi.py checks nothing else is missing
                item[method.lower()] = _sandbox_operation(method, path, path_params, summary)
            else:
                item[method.lower()] = _operation(schemas, op, method, path, path_params, summary)
    used = {op["tags"][0] for item in paths.values() for op in item.values()}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "bff: embedded-integrations kit",
            "version": "1",
            "description": "Errors share one shape (Error): branch on `code`.",
        },
        "tags": [{"name": name, "description": text} for name, text in TAGS.items() if name in used],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": _used(schemas.components, paths),
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
