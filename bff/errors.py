"""One exception tree, one error shape for every 4xx/5xx: ``{"detail", "code", "errors"?}``.

::

    Exception
    ├── BFFError                    an expected failure; carries status, code, detail, errors?, extra
    │   ├── ApiError                a refusal stated where it happens (status and code given there)
    │   ├── NotFound                404 not_found
    │   ├── Invalid                 400 validation_error, ``errors`` per field
    │   │   ├── UnknownTables           bff.services.sync: a sync of tables the connection does not have
    │   │   ├── CategoriesNotSupported  bff.services.sync: categories_not_supported (no divisions to pick)
    │   │   ├── ScheduleError           bff.services.schedules: a frequency out of range
    │   │   └── FilterValueRejected     bff.query_tables: a filter value the column cannot take
    │   ├── QueryInvalid            400 query_invalid (bff.query_tables)
    │   ├── TooManyQueries          429 too_many_queries (bff.query_tables: a customer's connections in use)
    │   ├── DatabaseBusy            503 database_busy (bff.query_tables: no connection for the customer)
    │   ├── WarehouseMoving         503 warehouse_moving (bff.warehouse_connections: ``bff warehouse move`` under way; a LongWait for syncs)
    │   ├── Conflict                409, the code per subclass
    │   │   ├── ConnectionNotReady      bff.services.sync: connection_not_ready / connection_disabled
    │   │   ├── RunAlreadyActive        bff.store: sync_already_running (+ pipeline_run_id)
    │   │   ├── ScriptRunActive         bff.store.scripts: script_already_running (+ run_id)
    │   │   ├── ExternalIdTaken         bff.store: external_id_taken (+ id)
    │   │   ├── NameTaken               bff.query_tables: name_taken
    │   │   └── QueryTableBroken        bff.query_tables: query_table_broken
    └── ConnectorError              bff.connectors.errors (its own tree, no HTTP in it):
                                    :func:`connector_error` maps it, the one place that does

Domain code raises these; one handler (:func:`bff_error_handler`) turns any :class:`BFFError`,
and any :class:`ConnectorError` a route lets through, into the JSON shape. Starlette's own
``HTTPException`` and anything unexpected get the same shape.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .connectors.errors import ConfigRequired, ConnectorError, CredentialsRejected, ProviderRejected, RetriesExhausted
from .connectors.writer import FieldErrors, ObjectNotSupported, UpsertAmbiguous

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


class BFFError(Exception):
    """An expected failure that becomes a JSON error response: ``status``, ``code``, ``detail``."""

    status: int = 500
    code: str = "internal_error"

    def __init__(
        self,
        detail: str,
        *,
        errors: Mapping[str, str] | None = None,
        extra: Mapping[str, object] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
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


class ApiError(BFFError):
    """A refusal whose status and code are stated where it is raised (auth, input, routes)."""

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
        super().__init__(detail, errors=errors, extra=extra, headers=headers)
        self.status = status
        self.code = code


class NotFound(BFFError):
    status = 404
    code = "not_found"


class Invalid(BFFError):
    """Input refused field by field (``errors``)."""

    status = 400
    code = "validation_error"

    def __init__(self, errors: Mapping[str, str], detail: str = "Some fields are invalid.") -> None:
        super().__init__(detail, errors=errors)


class Conflict(BFFError):
    status = 409
    code = "conflict"


def not_found(what: str = "Not found.") -> NotFound:
    return NotFound(what)


def validation_error(errors: Mapping[str, str], detail: str = "Some fields are invalid.") -> Invalid:
    return Invalid(errors, detail)


def token_not_allowed(detail: str) -> ApiError:
    """``403 token_not_allowed``: a valid token of a kind this surface does not take."""
    return ApiError(403, "token_not_allowed", detail)


def connector_error(exc: ConnectorError, *, new_credentials: bool = False, unreachable: str | None = None) -> BFFError:
    """A connector failure → its answer (DESIGN §12). ``new_credentials``: the credentials were just
    sent, so a rejection is ``422 credentials_rejected`` (nothing was stored). ``unreachable``: the
    sentence for any other failure, answered ``502 provider_unavailable`` (checks before any write)."""
    if isinstance(exc, CredentialsRejected):
        if new_credentials:
            return ApiError(422, "credentials_rejected", f"The provider rejected these credentials: {exc.detail}")
        return ApiError(409, "connection_unauthorised", f"{exc.detail} Re-authorise the connection.")
    if unreachable is not None:
        return ApiError(502, "provider_unavailable", f"{unreachable}: {exc.detail}")
    if isinstance(exc, ObjectNotSupported):
        return ApiError(404, "object_not_supported", exc.detail)
    if isinstance(exc, FieldErrors):
        return validation_error(exc.errors, exc.detail)
    if isinstance(exc, UpsertAmbiguous):
        return ApiError(409, "upsert_ambiguous", exc.detail)
    if isinstance(exc, ProviderRejected):
        errors = {"provider_status": str(exc.status), "provider_message": exc.message or ""}
        return ApiError(422, "provider_rejected", exc.detail, errors=errors)
    if isinstance(exc, RetriesExhausted):
        if exc.cause == "rate_limited":
            return ApiError(429, "provider_rate_limited", exc.detail, headers={"Retry-After": exc.retry_after or "1"})
        if exc.cause == "timeout":
            return ApiError(504, "provider_timeout", exc.detail)
        return ApiError(502, "provider_error", exc.detail)
    if isinstance(exc, ConfigRequired):
        return ApiError(409, "connection_not_ready", exc.detail)
    return ApiError(502, "provider_error", exc.detail)


def error_response(status: int, code: str, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail, "code": code}, status_code=status, headers=headers)


async def bff_error_handler(request: Request, exc: Exception) -> Response:
    error = connector_error(exc) if isinstance(exc, ConnectorError) else exc
    assert isinstance(error, BFFError)
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


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
    BFFError: bff_error_handler,
    ConnectorError: bff_error_handler,
    HTTPException: http_exception_handler,
    Exception: unexpected_error_handler,
}
