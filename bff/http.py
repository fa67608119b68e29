"""Request and response helpers shared by every route module."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.routing import Route

from .errors import ApiError, validation_error

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


class EitherSlashRoute(Route):
    """One route that answers its path with and without the trailing slash (one regex, no redirect)."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        if path != "/" and self.path_regex.pattern.endswith("$"):
            self.path_regex = re.compile(self.path_regex.pattern[:-1].rstrip("/") + "/?$")


def api_route(path: str, endpoint: Callable[..., Any], *, methods: Sequence[str], name: str | None = None) -> list[Route]:
    """The contract says every path answers with and without its trailing slash."""
    bare = path.rstrip("/") or "/"
    return [EitherSlashRoute(bare, endpoint, methods=list(methods), name=name or endpoint.__name__)]


async def read_json(request: Request, *, required: bool = True) -> dict[str, Any]:
    """Parse a JSON object body, with a clear error for every way it can be wrong."""
    body = await request.body()
    if not body.strip():
        if required:
            raise ApiError(400, "invalid_json", "The request body is empty; send a JSON object.")
        return {}
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise ApiError(
            415, "unsupported_media_type", "Send the body as JSON with `Content-Type: application/json`."
        )
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "invalid_json", "The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "The request body must be a JSON object.")
    return data


def query_int(request: Request, name: str, *, default: int | None = None, minimum: int = 1, maximum: int | None = None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise validation_error({name: "Must be an integer."}) from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise validation_error({name: f"Must be {bound}."})
    return value


def query_bool(request: Request, name: str, *, default: bool) -> bool:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.lower()
    if lowered in {"1", "true", "yes"}:
        return True
    if lowered in {"0", "false", "no"}:
        return False
    raise validation_error({name: "Must be true or false."})


class Pagination:
    """``?page=&page_size=`` → offset/limit, and the ``{count, next, previous, results}`` envelope."""

    def __init__(self, request: Request, *, default_size: int = DEFAULT_PAGE_SIZE, size_alias: str | None = None) -> None:
        self.request = request
        self.page = query_int(request, "page", default=1) or 1
        size_name = "page_size"
        if size_alias and not request.query_params.get("page_size") and request.query_params.get(size_alias):
            size_name = size_alias
        self.page_size = query_int(request, size_name, default=default_size, maximum=MAX_PAGE_SIZE) or default_size
        self.offset = (self.page - 1) * self.page_size
        self.limit = self.page_size

    def _link(self, page: int) -> str:
        params = dict(self.request.query_params)
        params["page"] = str(page)
        return f"{self.request.url.replace(query='')}?{urlencode(params)}"

    def envelope(self, count: int, results: list[Any]) -> dict[str, Any]:
        has_next = self.offset + len(results) < count
        return {
            "count": count,
            "next": self._link(self.page + 1) if has_next else None,
            "previous": self._link(self.page - 1) if self.page > 1 else None,
            "results": results,
        }


def require_str(data: dict[str, Any], name: str, errors: dict[str, str], *, max_length: int = 200, required: bool = False) -> str | None:
    value = data.get(name)
    if value is None or value == "":
        if required:
            errors[name] = "This field is required."
        return None
    if not isinstance(value, str):
        errors[name] = "Must be a string."
        return None
    if len(value) > max_length:
        errors[name] = f"Must be at most {max_length} characters."
        return None
    return value
