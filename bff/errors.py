"""One error shape for every 4xx/5xx: ``{"detail", "code", "errors"?}``.

Routes raise :class:`ApiError`; the handlers here turn it, Starlette's own
``HTTPException`` and anything unexpected into that JSON shape.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

logger = logging.getLogger("bff")

_DEFAULT_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "rate_limited",
}


class ApiError(Exception):
    """An expected failure that becomes a JSON error response."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        errors: Mapping[str, str] | None = None,
        extra: Mapping[str, object] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.errors = dict(errors) if errors else None
        self.extra = dict(extra) if extra else {}
        self.headers = dict(headers) if headers else None

    def body(self) -> dict[str, object]:
        body: dict[str, object] = {"detail": self.detail, "code": self.code}
        if self.errors:
            body["errors"] = self.errors
        body.update(self.extra)
        return body


def not_found(what: str = "Not found.") -> ApiError:
    return ApiError(404, "not_found", what)


def validation_error(errors: Mapping[str, str], detail: str = "Some fields are invalid.") -> ApiError:
    return ApiError(400, "validation_error", detail, errors=errors)


def error_response(status: int, code: str, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail, "code": code}, status_code=status, headers=headers)


async def api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def http_exception_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _DEFAULT_CODES.get(exc.status_code, "error")
    # Never echo the path or method back: they are attacker-chosen text.
    if exc.status_code == 404:
        detail = "There is no such route; see /openapi.json."
    elif exc.status_code == 405:
        detail = "This method is not allowed on this route; see /openapi.json."
    else:
        detail = exc.detail if isinstance(exc.detail, str) else "Request failed."
    return error_response(exc.status_code, code, detail, headers=exc.headers)


async def unexpected_error_handler(request: Request, exc: Exception) -> Response:
    # Log the type and path only: exception messages may quote request data.
    logger.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "Something went wrong on our side; it has been logged.")


EXCEPTION_HANDLERS = {
    ApiError: api_error_handler,
    HTTPException: http_exception_handler,
    Exception: unexpected_error_handler,
}
