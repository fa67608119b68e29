"""The sandbox providers app: a fake OAuth2 CRM, an API-key accounting app and a bank.

Wire contract: docs/sandbox-api.md. The BFF mounts the app with
``Mount("/sandbox", app=create_sandbox_app(...))``; every route here is relative to
that mount point and every URL handed out is rebuilt from the request itself.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from . import pages
from .chat import SandboxChat
from .data import DIVISIONS, ENTITY_TYPES, REFRESH_BATCH, Key, Record, Table, iso, parse_iso
from .oauth import CrmOAuth
from .options import SandboxOptions
from .state import DELETABLE, PROVIDERS, TOUCHABLE, Faults, SandboxData, Stats
from .store import FILE_NAME as STORE_FILE
from .store import SandboxStore
from .writes import SandboxWrites

MAX_PAGE = 500
DEFAULT_PAGE = 100
ACCOUNTING_KEY = "sandbox-valid-key"
BANK_LOGIN = ("sandbox", "sandbox")
BANK_ACCOUNT = {
    "id": "acc_1",
    "name": "Current account",
    "iban": "NL00SAND0000000001",
    "currency": "EUR",
}
CRM_ME = {"id": "user_1", "email": "owner@sandbox-crm.test", "portal": "Sandbox CRM"}
ACCOUNTING_ME = {"company": "Sandbox Accounting BV", "user": "api"}

# A data-API handler answers with its response and how many records it served.
DataHandler = Callable[[Request], Awaitable[tuple[Response, int]]]


class ApiError(Exception):
    def __init__(self, status_code: int, error: str, description: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(description)
        self.status_code = status_code
        self.error = error
        self.description = description
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = {"error": self.error, "error_description": self.description}
        return JSONResponse(body, status_code=self.status_code, headers=self.headers)


class ControlError(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class Sandbox:
    """One sandbox instance: its data, knobs, counters and route handlers."""

    def __init__(self, options: SandboxOptions, clock: Callable[[], float], store: SandboxStore) -> None:
        self.options = options
        self.clock = clock
        self.store = store
        self.data = SandboxData(options.scale, store)
        self.stats = Stats()
        self.faults = Faults(options)
        self.revoked: set[str] = set(store.get("revoked_providers", []))
        self.oauth = CrmOAuth(options, clock, lambda: "crm" in self.revoked, store)
        self.writes = SandboxWrites(self)
        self.chat = SandboxChat(self)

    def routes(self) -> list[BaseRoute]:
        api = self._data_api
        return [
            Route("/crm/oauth/authorize", self.oauth.authorize, methods=["GET"]),
            Route("/crm/oauth/decision", self.oauth.decision, methods=["POST"]),
            Route("/crm/oauth/token", self.oauth.token, methods=["POST"]),
            Route("/crm/api/me", api("crm.me", self.crm_me), methods=["GET"]),
            Route("/crm/api/contacts", api("crm.contacts", self.contacts), methods=["GET"]),
            Route("/crm/api/contacts/deleted", api("crm.contacts.deleted", self.deleted_contacts), methods=["GET"]),
            Route("/crm/api/deals", api("crm.deals", self.deals), methods=["GET"]),
            Route("/accounting/api/me", api("accounting.me", self.accounting_me), methods=["GET"]),
            Route(
                "/accounting/api/divisions",
                api("accounting.divisions", self.divisions),
                methods=["GET"],
            ),
            Route(
                "/accounting/api/divisions/{code}/invoices",
                api("accounting.invoices", self.invoices),
                methods=["GET"],
            ),
            Route(
                "/accounting/api/divisions/{code}/deleted",
                api("accounting.deleted", self.deleted_records),
                methods=["GET"],
            ),
            Route("/accounting/api/entitytypes", api("accounting.entitytypes", self.entity_types), methods=["GET"]),
            Route("/bank/api/accounts", api("bank.accounts", self.accounts), methods=["GET"]),
            Route(
                "/bank/api/transactions",
                api("bank.transactions", self.transactions),
                methods=["GET"],
            ),
            *self.writes.routes(api),
            *self.chat.routes(api),
            Route("/bank/refresh", self.bank_refresh, methods=["GET", "POST"]),
            Route("/_control/stats", self._guarded(self.control_stats), methods=["GET"]),
            Route("/_control/reset-stats", self._guarded(self.control_reset_stats), methods=["POST"]),
            Route("/_control/touch", self._guarded(self.control_touch), methods=["POST"]),
            Route("/_control/delete", self._guarded(self.control_delete), methods=["POST"]),
            Route("/_control/revoke", self._guarded(self._control_revocation(True)), methods=["POST"]),
            Route("/_control/restore", self._guarded(self._control_revocation(False)), methods=["POST"]),
        ]

    # -- data-API plumbing --------------------------------------------------

    def _data_api(self, key: str, handler: DataHandler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            self.stats.requests[key] = self.stats.requests.get(key, 0) + 1
            self.stats.calls += 1
            # Decide before sleeping so concurrent calls are numbered by arrival.
            verdict = self.faults.verdict(request.url.path)
            if self.options.latency_ms:
                await asyncio.sleep(self.options.latency_ms / 1000)
            if verdict == "rate_limited":
                self.stats.rate_limited += 1
                return self._rate_limited()
            if verdict == "failed":
                self.stats.failed += 1
                return ApiError(500, "server_error", "Injected failure (sandbox knob).").response()
            try:
                response, served = await handler(request)
            except ApiError as exc:
                return exc.response()
            self.stats.records_served[key] = self.stats.records_served.get(key, 0) + served
            return response

        return endpoint

    def _rate_limited(self) -> Response:
        seconds = self.options.retry_after
        return ApiError(
            429,
            "rate_limited",
            f"Too many requests; retry after {seconds} s.",
            {"Retry-After": str(seconds)},
        ).response()

    def require_crm(self, request: Request) -> None:
        if not self.oauth.bearer_ok(request):
            header = 'Bearer realm="Sandbox CRM", error="invalid_token"'
            raise ApiError(
                401, "invalid_token", "The access token is missing, invalid or expired.", {"WWW-Authenticate": header}
            )

    def require_accounting(self, request: Request) -> None:
        key = request.headers.get("x-api-key", "")
        valid = hmac.compare_digest(key.encode(), ACCOUNTING_KEY.encode())
        if not valid or "accounting" in self.revoked:
            raise ApiError(401, "invalid_api_key", "The API key is missing or not valid.")

    def _require_bank(self, request: Request) -> None:
        if not _basic_matches(request.headers.get("authorization", ""), BANK_LOGIN) or ("bank" in self.revoked):
            raise ApiError(
                401,
                "invalid_credentials",
                "The login or password is wrong.",
                {"WWW-Authenticate": 'Basic realm="Sandbox Bank"'},
            )

    # -- CRM ----------------------------------------------------------------

    async def crm_me(self, request: Request) -> tuple[Response, int]:
        self.require_crm(request)
        return JSONResponse(CRM_ME), 0

    async def contacts(self, request: Request) -> tuple[Response, int]:
        self.require_crm(request)
        table = self.data.contacts
        email = request.query_params.get("email")
        if email is not None:  # search by e-mail (case-insensitive, exact)
            hits = [r for r in table.records if r["email"].lower() == email.lower()]
            return JSONResponse({"results": hits}), len(hits)
        limit = _page_size(request, "limit")
        start = table.index_after_time(_updated_after(request))
        cursor = request.query_params.get("after")
        if cursor:
            start = max(start, table.index_after_key(_decode_cursor(cursor)))
        end = min(start + limit, len(table))
        body: dict[str, Any] = {"results": table.records[start:end]}
        if end < len(table):
            # Keyset cursor: "after this (updated_at, id)", so touches between pages
            # can neither skip nor shift the records still to come.
            body["paging"] = {"next": {"after": _encode_cursor(table.keys[end - 1])}}
        return JSONResponse(body), end - start

    async def deleted_contacts(self, request: Request) -> tuple[Response, int]:
        """Contacts deleted after ``since`` (ISO 8601), oldest first: ``{results: [{id, deleted_at}]}``."""
        self.require_crm(request)
        raw = request.query_params.get("since")
        try:
            since = parse_iso(raw) if raw else None
        except ValueError:
            raise ApiError(400, "invalid_request", "since must be an ISO-8601 date-time.") from None
        hits = [
            {"id": record_id, "deleted_at": iso(stamp)}
            for record_id, stamp in self.data.deleted_contacts
            if since is None or stamp > since
        ]
        return JSONResponse({"results": hits}), len(hits)

    async def deals(self, request: Request) -> tuple[Response, int]:
        self.require_crm(request)
        table = self.data.deals
        name = request.query_params.get("name")
        if name is not None:  # search by exact name
            hits = [r for r in table.records if r["name"] == name]
            return JSONResponse(
                {"results": hits, "total": len(hits), "offset": 0, "limit": len(hits), "has_more": False}
            ), len(hits)
        limit = _page_size(request, "limit")
        offset = _int_param(request, "offset", 0, minimum=0)
        first = table.index_after_time(_updated_after(request))
        total = len(table) - first
        results = table.records[first + offset : first + offset + limit] if offset < total else []
        body = {
            "results": results,
            "total": total,
            "offset": offset,
            "limit": limit,
            "has_more": offset + len(results) < total,
        }
        return JSONResponse(body), len(results)

    # -- accounting ---------------------------------------------------------

    async def accounting_me(self, request: Request) -> tuple[Response, int]:
        self.require_accounting(request)
        return JSONResponse(ACCOUNTING_ME), 0

    async def divisions(self, request: Request) -> tuple[Response, int]:
        self.require_accounting(request)
        divisions = [{"code": code, "name": name} for code, name in DIVISIONS]
        return JSONResponse({"divisions": divisions}), len(divisions)

    async def invoices(self, request: Request) -> tuple[Response, int]:
        self.require_accounting(request)
        table = self._division(request.path_params["code"])
        page_size = _page_size(request, "page_size")
        page = _int_param(request, "page", 1, minimum=1)
        results, total = _numbered_page(table, _updated_after(request), page, page_size)
        return _numbered_answer(results, page, page_size, total), len(results)

    async def deleted_records(self, request: Request) -> tuple[Response, int]:
        """Records deleted in one division, oldest first, paged like the invoices:
        ``{results: [{entitykey, division, entitytype, deleted_at}], page, page_size, page_count, total}``."""
        self.require_accounting(request)
        self._division(request.path_params["code"])
        table = self.data.deleted_invoices[int(request.path_params["code"])]
        page_size = _page_size(request, "page_size")
        page = _int_param(request, "page", 1, minimum=1)
        rows, total = _numbered_page(table, _updated_after(request, "deleted_after"), page, page_size)
        results = [
            {
                "entitykey": row["id"],
                "division": row["division"],
                "entitytype": row["entitytype"],
                "deleted_at": row["updated_at"],
            }
            for row in rows
        ]
        return _numbered_answer(results, page, page_size, total), len(results)

    async def entity_types(self, request: Request) -> tuple[Response, int]:
        self.require_accounting(request)
        types = [{"number": number, "name": name} for number, name in ENTITY_TYPES]
        return JSONResponse({"results": types}), len(types)

    def _division(self, raw_code: str) -> Table:
        table = self.data.invoices.get(int(raw_code)) if raw_code.isdigit() else None
        if table is None:
            raise ApiError(404, "not_found", f"There is no division {raw_code}.")
        return table

    # -- bank ---------------------------------------------------------------

    async def accounts(self, request: Request) -> tuple[Response, int]:
        self._require_bank(request)
        return JSONResponse({"accounts": [BANK_ACCOUNT]}), 1

    async def transactions(self, request: Request) -> tuple[Response, int]:
        self._require_bank(request)
        per_page = _page_size(request, "per_page")
        page = _int_param(request, "page", 1, minimum=1)
        results, total = _numbered_page(self.data.transactions, _updated_after(request), page, per_page)
        headers = {}
        if page * per_page < total:
            # Keep every other query parameter (updated_after, per_page) of this call.
            next_url = request.url.include_query_params(page=page + 1)
            headers["Link"] = f'<{next_url}>; rel="next"'
        return JSONResponse(results, headers=headers), len(results)

    async def bank_refresh(self, request: Request) -> Response:
        message = ""
        if request.method == "POST":
            form = await request.form()
            if not pages.csrf_ok(request, form.get(pages.CSRF_FIELD)):
                return pages.csrf_failure()
            added = self.data.import_transactions(REFRESH_BATCH)
            message = f"{len(added)} new transactions imported."
        csrf = pages.csrf_token(request)
        context = {
            "account": BANK_ACCOUNT,
            "transaction_count": len(self.data.transactions),
            "action": request.scope.get("root_path", "") + "/bank/refresh",
            "message": message,
            "csrf_field": pages.CSRF_FIELD,
            "csrf": csrf,
        }
        return pages.with_csrf_cookie(pages.render("bank_refresh.html", context), request, csrf)

    # -- test controls ------------------------------------------------------

    def _control_refused(self, request: Request) -> JSONResponse | None:
        """``None`` when the caller may use the controls: they are open, or it sent the admin key."""
        if self.options.controls_open:
            return None
        key = self.options.admin_key
        if key is None:
            return JSONResponse(
                {
                    "detail": "Sandbox controls are off: set BFF_SANDBOX_ADMIN_KEY and send it as a Bearer token.",
                    "code": "sandbox_controls_disabled",
                },
                status_code=403,
            )
        scheme, _, sent = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(sent.strip().encode(), key.encode()):
            return JSONResponse(
                {
                    "detail": "Send the sandbox admin key as `Authorization: Bearer <BFF_SANDBOX_ADMIN_KEY>`.",
                    "code": "sandbox_admin_key_required",
                },
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="sandbox-controls"'},
            )
        return None

    def _guarded(self, endpoint: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            return self._control_refused(request) or await endpoint(request)

        guarded.__doc__ = endpoint.__doc__
        guarded.__name__ = getattr(endpoint, "__name__", "control")
        return guarded

    async def control_stats(self, request: Request) -> Response:
        return JSONResponse(self.stats.snapshot())

    async def control_reset_stats(self, request: Request) -> Response:
        self.stats.reset()
        # Restart the knob cadence too, so "the Nth call from now" is predictable.
        self.faults.reset()
        return Response(status_code=204)

    async def control_touch(self, request: Request) -> Response:
        try:
            body = await _json_object(request)
            resource = _one_of(body, "resource", TOUCHABLE)
            count = body.get("count")
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise ControlError("invalid_count", f"count must be a positive integer; got {count!r}.")
        except ControlError as exc:
            return _control_error(exc)
        return JSONResponse({"touched": self.data.touch(resource, count)})

    async def control_delete(self, request: Request) -> Response:
        try:
            body = await _json_object(request)
            resource = _one_of(body, "resource", DELETABLE)
            count = body.get("count")
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise ControlError("invalid_count", f"count must be a positive integer; got {count!r}.")
        except ControlError as exc:
            return _control_error(exc)
        return JSONResponse({"deleted": self.data.delete(resource, count, self.clock())})

    def _control_revocation(self, revoke: bool) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                body = await _json_object(request)
                provider = _one_of(body, "provider", PROVIDERS)
            except ControlError as exc:
                return _control_error(exc)
            if revoke:
                self.revoked.add(provider)
            else:
                self.revoked.discard(provider)
            self.store.set("revoked_providers", sorted(self.revoked))
            return JSONResponse({"provider": provider, "revoked": revoke})

        return endpoint


def create_sandbox_app(
    options: SandboxOptions | None = None, *, clock: Callable[[], float] = time.time, state_dir: Path | None = None
) -> Starlette:
    """Build a sandbox app (its own data, tokens and counters).

    ``clock`` returns epoch seconds; tests inject a fake one to expire codes/tokens.
    With ``state_dir``, its sign-ins (OAuth grants and tokens), written records and revocations are
    kept there (``sandbox.sqlite3``), so an app built again on that directory carries on; without,
    in memory. The ``Sandbox`` instance is exposed as ``app.state.sandbox`` for introspection.
    """
    # Built in code without options (a test's own sandbox): nobody else can reach the controls.
    options = options or SandboxOptions(controls_open=True)
    store = SandboxStore(state_dir / STORE_FILE if state_dir is not None else None, scale=options.scale)
    sandbox = Sandbox(options, clock, store)
    app = Starlette(routes=sandbox.routes())
    app.state.sandbox = sandbox
    return app


# -- request parsing helpers -----------------------------------------------


def _int_param(request: Request, name: str, default: int, *, minimum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw, 10)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ApiError(400, "invalid_request", f"{name} must be an integer >= {minimum}.")
    return value


def _page_size(request: Request, name: str) -> int:
    # Oversized pages are clamped, like most real APIs do, rather than refused.
    return min(_int_param(request, name, DEFAULT_PAGE, minimum=1), MAX_PAGE)


def _updated_after(request: Request, name: str = "updated_after") -> float | None:
    raw = request.query_params.get(name)
    if not raw:
        return None
    try:
        return parse_iso(raw)
    except ValueError:
        raise ApiError(400, "invalid_request", f"{name} must be an ISO-8601 date-time.") from None


def _numbered_answer(results: list[dict[str, Any]], page: int, page_size: int, total: int) -> JSONResponse:
    """A page of an Exact-style numbered list: ``{results, page, page_size, page_count, total}``."""
    body = {
        "results": results,
        "page": page,
        "page_size": page_size,
        "page_count": math.ceil(total / page_size),
        "total": total,
    }
    return JSONResponse(body)


def _numbered_page(table: Table, updated_after: float | None, page: int, size: int) -> tuple[list[Record], int]:
    first = table.index_after_time(updated_after)
    total = len(table) - first
    start = first + (page - 1) * size
    return table.records[start : start + size], total


def _encode_cursor(key: Key) -> str:
    raw = f"{key[0]}.{key[1]}".encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _decode_cursor(cursor: str) -> Key:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, _, record_id = raw.partition(".")
        if not record_id:
            raise ValueError(cursor)
        return int(stamp), record_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ApiError(400, "invalid_request", "The after cursor is not valid.") from None


def _basic_matches(header: str, expected: tuple[str, str]) -> bool:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    login, colon, password = decoded.partition(":")
    login_ok = hmac.compare_digest(login.encode(), expected[0].encode())
    password_ok = hmac.compare_digest(password.encode(), expected[1].encode())
    return bool(colon) and login_ok and password_ok


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ControlError("invalid_json", "The request body must be JSON.") from None
    if not isinstance(body, dict):
        raise ControlError("invalid_body", "The request body must be a JSON object.")
    return body


def _one_of(body: Mapping[str, Any], field: str, allowed: Collection[str]) -> str:
    """``body[field]`` if it is one of ``allowed``, else ``unknown_<field>``."""
    value = body.get(field)
    if value not in allowed:
        raise ControlError(f"unknown_{field}", f"{field} must be one of {', '.join(allowed)}; got {value!r}.")
    return str(value)


def _control_error(exc: ControlError) -> JSONResponse:
    return JSONResponse({"detail": exc.detail, "code": exc.code}, status_code=400)
