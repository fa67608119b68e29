"""Request and response helpers shared by every route module."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import to_json
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Match, Route
from starlette.types import Scope

from .connectors.records import decode_json
from .errors import ApiError, validation_error

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
# Ids are BIGINT in the store; a bigger number names nothing (404), it must not reach SQL.
MAX_ID = 2**63 - 1
# Query integers (page, ids) beyond this are refused with 400 before any arithmetic or SQL.
MAX_QUERY_INT = 2**31 - 1
# JSON bodies are a few levels deep; deeper ones are refused before anything walks them.
MAX_JSON_DEPTH = 32


class EitherSlashRoute(Route):
    """One route that answers its path with and without the trailing slash (one regex, no redirect)."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        if path != "/" and self.path_regex.pattern.endswith("$"):
            self.path_regex = re.compile(self.path_regex.pattern[:-1].rstrip("/") + "/?$")

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is not Match.NONE:
            params = child.get("path_params", {})
            if any(isinstance(value, int) and value > MAX_ID for value in params.values()):
                return Match.NONE, {}
        return match, child


def api_route(
    path: str, endpoint: Callable[..., Any], *, methods: Sequence[str], name: str | None = None
) -> list[Route]:
    """The contract says every path answers with and without its trailing slash."""
    bare = path.rstrip("/") or "/"
    return [EitherSlashRoute(bare, endpoint, methods=list(methods), name=name or endpoint.__name__)]


class JSONAnswer(JSONResponse):
    """Starlette's :class:`JSONResponse` for content without floats (strings, integers, booleans,
    None, lists and dicts of them: minted tokens), rendered by pydantic_core: the same bytes, every
    character escaped alike (tests/test_request_models.py), several times faster than the
    ``json.dumps`` call, which builds an encoder per response. Floats are written differently
    (``1e16``, not ``1e+16``; NaN as ``null``, not refused): use JSONResponse for them."""

    def render(self, content: Any) -> bytes:
        return to_json(content)


class NoStoreJSONAnswer(JSONAnswer):
    """``JSONAnswer(content, headers={"Cache-Control": "no-store"})`` (minted tokens): the same raw
    headers in the same order, written directly instead of through Starlette's header mapping."""

    def init_headers(self, headers: Mapping[str, str] | None = None) -> None:
        self.raw_headers = [_NO_STORE, (b"content-length", str(len(self.body)).encode("latin-1")), _JSON_TYPE]


_NO_STORE = (b"cache-control", b"no-store")
_JSON_TYPE = (b"content-type", b"application/json")


async def read_body(request: Request) -> bytes:
    """``await request.body()``, and the request left as that leaves it (``request.body()`` again gives
    the same bytes), without Starlette's async generator per body: the ASGI messages are read here."""
    if hasattr(request, "_body") or getattr(request, "_stream_consumed", None) is not False:
        return await request.body()  # read before, or a Starlette that keeps its state otherwise
    chunks: list[bytes] = []
    while True:
        message = await request.receive()
        if message["type"] == "http.request":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        elif message["type"] == "http.disconnect":
            request._is_disconnected = True
            raise ClientDisconnect()
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    request._stream_consumed = True
    request._body = body  # where request.body() looks first
    return body


async def read_json(request: Request, *, required: bool = True) -> dict[str, Any]:
    """Parse a JSON object body, with a clear error for every way it can be wrong."""
    body = await read_body(request)
    if not body.strip():
        if required:
            raise ApiError(400, "invalid_json", "The request body is empty; send a JSON object.")
        return {}
    content_type = (header(request, b"content-type") or "").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise ApiError(415, "unsupported_media_type", "Send the body as JSON with `Content-Type: application/json`.")
    try:
        data = decode_json(body)  # pydantic_core's parser, json.loads for what it refuses: json.loads's values
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "invalid_json", "The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "The request body must be a JSON object.")
    if could_hold_unstorable(body):
        check_json_value(data)
    return data


def could_hold_unstorable(body: bytes) -> bool:
    """Whether :func:`check_json_value` can refuse what ``body`` parses to. Without a backslash and in
    ASCII, no string can hold a NUL or a surrogate (raw control characters are not JSON); with at most
    MAX_JSON_DEPTH brackets, nothing nests deeper. Checking the bytes costs far less than the walk."""
    return not body.isascii() or b"\\" in body or body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH


def header(request: Request, name: bytes) -> str | None:
    """``request.headers.get(name)`` (``name`` in lower case: ASGI's header names are) without building
    Starlette's header mapping: the first such header."""
    for key, value in request.scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


Parsed = TypeVar("Parsed", bound=BaseModel)

# What a field's value is told when pydantic refuses it, by the kind of error (see
# ``bff.contract.requests.Input``: a model may say something more specific per field).
_SAID = {
    "missing": "This field is required.",
    "bool_type": "Must be true or false.",
    "string_type": "Must be a string.",
    "string_too_short": "Must not be empty.",
    "string_too_long": "Must be at most {max_length} characters.",
    "int_type": "Must be an integer.",
    "float_type": "Must be a number.",
    "list_type": "Must be a list.",
    "dict_type": "Must be an object.",
    "literal_error": "Must be one of {expected}.",
}


async def parse_body(request: Request, model: type[Parsed], *, required: bool = True, context: Any = None) -> Parsed:
    """The request's JSON body parsed and checked by ``model``, the pydantic model that the
    operation's ``requestBody`` in /openapi.json is generated from: what the document says is
    what is taken. A refusal is ``400 validation_error`` naming each field (a model's own words
    where it has them, :meth:`bff.contract.requests.Input.refused`)."""
    return validated(model, await read_json(request, required=required), context=context)


def parse_query(request: Request, model: type[Parsed], *, named: Mapping[str, str] | None = None) -> Parsed:
    """The query parameters ``model`` describes (the operation's query model in /openapi.json,
    or a part of it), parsed by it; an empty value is an absent one. ``named``: a field read from
    a parameter of another name (``{"page_size": "size"}``), and refused under that name."""
    names = {field: (named or {}).get(field, field) for field in model.model_fields}
    data = {field: value for field, name in names.items() if (value := request.query_params.get(name))}
    return validated(model, data, rename={field: name for field, name in names.items() if field != name})


def validated(
    model: type[Parsed], data: Any, *, context: Any = None, rename: Mapping[str, str] | None = None
) -> Parsed:
    try:
        return model.model_validate(data, strict=True, context=context)
    except ValidationError as exc:
        refused = getattr(model, "refused", None)
        errors = {(rename or {}).get(field, field): message for field, message in field_errors(model, exc).items()}
        raise (refused(errors) if refused is not None else validation_error(errors)) from None


def field_errors(model: type[BaseModel], exc: ValidationError) -> dict[str, str]:
    """pydantic's errors as ``{field: message}``, the first one per field: a validator's own
    message (a ``ValueError`` it raised, or several fields at once from ``FieldsRefused``), else
    what the model says for the field (``say``), else a sentence for the kind of error."""
    say: dict[str, str] = getattr(model, "say", {})
    report_as: dict[str, str] = getattr(model, "report_as", {})
    errors: dict[str, str] = {}
    for error in exc.errors(include_url=False):
        loc = error["loc"]
        field = str(loc[0]) if loc else "body"
        kind = error["type"]
        cause = error.get("ctx", {}).get("error")
        refused_fields = getattr(cause, "errors", None)
        if kind == "value_error" and isinstance(refused_fields, dict):
            for name, message in refused_fields.items():
                errors.setdefault(name, message)
            continue
        if kind == "extra_forbidden":
            message = say.get("*unknown", "Unknown field.")
            field = report_as.get("*unknown", field)
        elif kind == "value_error" and cause is not None:
            message = str(cause)
        else:
            own = say.get(f"{field}:{kind}") or say.get(field)
            template = _SAID.get(kind)
            message = own or (template.format(**error.get("ctx", {})) if template else f"{error['msg']}.")
        errors.setdefault(report_as.get(field, field), message)
    return errors


def check_json_value(data: Any) -> None:
    """Refuse what parses but cannot be stored: nesting deeper than MAX_JSON_DEPTH, lone surrogates
    (``"\\ud800"``) and NUL characters."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if not (value.isascii() or _is_encodable(value)):  # ASCII holds no surrogate
                raise ApiError(400, "invalid_json", "The request body holds a lone UTF-16 surrogate (e.g. \\ud800).")
            if "\x00" in value:  # PostgreSQL text cannot hold NUL
                raise ApiError(400, "invalid_json", "The request body holds a NUL character (\\u0000).")
        elif isinstance(value, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise ApiError(
                    400, "invalid_json", f"The request body is nested more than {MAX_JSON_DEPTH} levels deep."
                )
            depth += 1
            # Keys, then values; numbers, booleans and null have nothing to check.
            for items in (value, value.values()) if isinstance(value, dict) else (value,):
                stack += [(item, depth) for item in items if isinstance(item, (str, dict, list))]


def _is_encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
