"""Acme Books: a pretend partner product that embeds the widget from another origin.

It plays the partner's side of DESIGN §5 exactly: its own back-end mints the
integrate token (through :mod:`bff.client`), its page loads the loader module
from the BFF, and it reads synced data back server-side.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import secrets
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from jinja2 import Environment, FileSystemLoader, select_autoescape
from standardwebhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from bff.client import AsyncPartnerClient, BFFError

HERE = Path(__file__).parent
T = TypeVar("T")
CUSTOMERS: dict[str, dict[str, str]] = {
    "wood_123": {
        "first_name": "John",
        "last_name": "Doe",
        "email": "john@woodsolutions.test",
        "company_name": "Wood Solutions Ltd",
        "language": "en",
    },
    "bakery_7": {
        "first_name": "Anna",
        "last_name": "de Vries",
        "email": "anna@bakkerij.test",
        "company_name": "Bakkerij de Vries",
        "language": "nl",
    },
    "globex_42": {
        "first_name": "Hank",
        "last_name": "Scorpio",
        "email": "hank@globex.test",
        "company_name": "Globex Corporation",
        "language": "en",
    },
}
CONTACT_SYNC_WAIT = 30.0  # seconds the add-contact form waits for its refresh sync
ROWS_SHOWN = 5
PENDING_SETUP = ("AUTHORIZING", "CONFIG_SELECT")  # "Finish setup" instead of "Sync now"
CONNECTOR_NAME = re.compile(r"^[a-z0-9_]{1,64}$")


def content_security_policy(nonce: str, bff_url: str) -> str:
    """The strict CSP the README recommends for a partner page embedding the widget."""
    return (
        f"default-src 'self'; script-src 'nonce-{nonce}' {bff_url}; style-src 'self' 'nonce-{nonce}'; "
        f"img-src 'self' data: {bff_url}; connect-src 'self' {bff_url}; frame-src {bff_url}; "
        "base-uri 'none'; form-action 'self'; object-src 'none'; frame-ancestors 'none'"
    )


def connector_choice(request: Request) -> dict[str, Any]:
    """``?connectors=a,b`` → ``availableConnectors``, ``?connector=a`` → ``selectedConnector``.

    How another page of the product (onboarding, a "Connect your bank" link) preselects what the
    "Add connection" window offers. Names that are not connector names are ignored.
    """
    names = [n for n in request.query_params.get("connectors", "").split(",") if CONNECTOR_NAME.match(n)]
    selected = request.query_params.get("connector", "")
    choice: dict[str, Any] = {}
    if CONNECTOR_NAME.match(selected):
        choice["selectedConnector"] = selected
        if names and selected not in names:
            names.append(selected)
    if names:
        choice["availableConnectors"] = names
    return choice


def format_value(value: Any, field_type: str | None) -> str:
    """A warehouse value as the Data page shows it: numbers grouped, amounts with two decimals."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if field_type in ("number", "decimal") and isinstance(value, (int, float)):
        return f"{value:,.2f}"
    if isinstance(value, int) and field_type != "text":
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value)


ACTIVITY_KEPT = 50  # events remembered per customer (in memory: a demo)


@functools.lru_cache(maxsize=1)
def activity_strings() -> dict[str, dict[str, str]]:
    """The Activity feed's sentences by locale (demo_site/activity.json): the demo's own words,
    which the widget's string tables no longer carry to every customer's browser."""
    table: dict[str, dict[str, str]] = json.loads((HERE / "activity.json").read_text(encoding="utf-8"))
    return table


PENDING = ("AUTHORIZING", "CONFIG_SELECT")  # a connection that is not set up yet
SETTLED = ("OK", "HEALTHY")


def describe_event(event: Mapping[str, Any], locale: str = "en") -> str | None:
    """The Activity feed's sentence for a webhook event (None: not shown), in the widget's words."""
    t = activity_strings().get(locale) or activity_strings()["en"]
    data = event.get("data") or {}

    def say(key: str, **more: Any) -> str:
        return str(t[key]).format(name=data.get("name") or f"#{data.get('server_id')}", **more)

    kind, health = event.get("type"), data.get("health_status")
    if kind == "sync.finished":
        status = data.get("status")
        if status == "succeeded":
            records = ", ".join(f"{int(n):,} {table}" for table, n in (data.get("records") or {}).items())
            return say("synced", records=records or t["nothingNew"])
        return say("syncedWithErrors" if status == "completed_with_errors" else "syncFailed", error=data.get("error"))
    if kind == "script.finished":
        if data.get("status") == "succeeded":
            return say("scriptDone")
        return say("scriptFailed", error=data.get("error") or f"exit code {data.get('exit_code')}")
    if kind == "connection.created":
        # An OAuth connection starts signing in: "connected" only once it is (health_changed below).
        return say("signInStarted") if health == "AUTHORIZING" else say("created") if health in SETTLED else None
    if kind == "connection.deleted":
        return say("notFinished") if health in PENDING else say("deleted")
    if kind == "connection.health_changed":
        old, new, detail = data.get("from"), data.get("to"), data.get("detail") or ""
        if new == "ERROR":
            return say("signInFailed" if old == "AUTHORIZING" else "needsAttention", detail=detail)
        if new in SETTLED and old in (*PENDING, "CHECKING"):
            return say("created")
        simple = {
            "CONFIG_SELECT": "choiceNeeded",
            "DISABLED": "paused",
            "RE_ENABLED": "resumed",
            "RE_AUTHORISED": "reconnected",
        }
        return say(simple[new]) if new in simple else None  # OK → HEALTHY: the sync lines say it
    return None


def is_numeric(field_type: str | None) -> bool:
    return field_type in ("number", "decimal", "integer")


async def synced_tables(client: Any) -> list[dict[str, Any]]:
    """The customer's synced tables (saved queries left out)."""
    tables: list[dict[str, Any]] = []
    applications = await client.applications()
    if applications:
        async for table in client.tables(int(applications[0]["id"])):
            if table.get("type") == "query":  # saved queries belong to no connection
                continue
            tables.append(table)
    return tables


class PartnerSession:
    """The site's partner client. ``token_file`` is `bff demo`'s demo-partner.json: when the BFF says
    the token was revoked, the file is read again (`bff partner rotate-token` writes the new token
    there) and the call made once more; without a new token the error says what to run."""

    def __init__(self, bff_url: str, token: str, token_file: Path | None) -> None:
        self.bff_url, self.token_file = bff_url, token_file
        self.clients = [AsyncPartnerClient(bff_url, token)]
        self.token = token

    async def call(self, use: Callable[[AsyncPartnerClient], Awaitable[T]]) -> T:
        try:
            return await use(self.clients[-1])
        except BFFError as exc:
            if exc.code != "token_revoked" or self.token_file is None:
                raise
            try:
                saved = json.loads(self.token_file.read_text())
            except (OSError, ValueError):
                saved = {}
            fresh = saved.get("token") if isinstance(saved, dict) else None
            if not isinstance(fresh, str) or fresh == self.token:
                raise BFFError(
                    exc.code,
                    exc.status,
                    f"{exc.detail} Run `bff partner rotate-token {saved.get('id', 'ID')} --data-dir"
                    f" {self.token_file.parent}`: the demo takes the new token from {self.token_file.name}"
                    " at once, no restart needed.",
                ) from None
            self.token = fresh
            self.clients.append(AsyncPartnerClient(self.bff_url, fresh))
        return await use(self.clients[-1])

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


def create_site_app(
    *,
    bff_url: str,
    partner_token: str,
    site_url: str,
    session_secret: str | None = None,
    customers: Mapping[str, Mapping[str, str]] | None = None,
    webhook_secret: str | None = None,
    partner_token_file: Path | None = None,
) -> Starlette:
    """The demo site. ``partner_token`` never leaves this server.

    ``customers`` is the site's user directory (``external_id`` → profile fields); it defaults to
    the three demo customers. It is read on every request, so a test can add customers to it.
    ``partner_token_file`` (`bff demo`'s demo-partner.json) is where a rotated token is found.
    """
    directory: Mapping[str, Mapping[str, str]] = CUSTOMERS if customers is None else customers
    templates = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))
    templates.filters["value"] = format_value
    templates.filters["thousands"] = lambda n: f"{int(n):,}"
    templates.tests["numeric"] = is_numeric
    partner = PartnerSession(bff_url, partner_token, partner_token_file)
    verifier = Webhook(webhook_secret) if webhook_secret else None
    activity: dict[str, deque[dict[str, Any]]] = {}
    seen: deque[str] = deque(maxlen=500)  # webhook-ids already taken: a retry is not a new event

    def page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        nonce = secrets.token_urlsafe(16)
        html = templates.get_template(name).render(
            request=request, nonce=nonce, bff_url=bff_url, customer=current(request), customers=directory, **context
        )
        return HTMLResponse(
            html,
            status_code=status,
            headers={
                "Content-Security-Policy": content_security_policy(nonce, bff_url),
                "Referrer-Policy": "same-origin",
                # Pages carry an integrate token and customer data: never kept by the browser or a proxy.
                "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff",
            },
        )

    site_origin = site_url.rstrip("/")

    def cross_site(request: Request) -> bool:
        """A form posted from another site (login CSRF): browsers say so in Sec-Fetch-Site and Origin."""
        if request.headers.get("sec-fetch-site", "same-origin") not in {"same-origin", "none"}:
            return True
        origin = request.headers.get("origin")
        return origin is not None and origin != site_origin

    def current(request: Request) -> dict[str, str] | None:
        external_id = request.session.get("external_id")
        if not isinstance(external_id, str) or external_id not in directory:
            return None
        return {"external_id": external_id, **directory[external_id]}

    async def mint(external_id: str) -> dict[str, Any]:
        return await partner.call(lambda client: client.integrate_token(external_id, **directory[external_id]))

    async def identity_client(external_id: str) -> Any:
        return await partner.call(lambda client: client.sub_account_client(external_id=external_id))

    async def customer_client(external_id: str) -> Any:
        await mint(external_id)  # provisions the sub-account on first use
        return await identity_client(external_id)

    async def home(request: Request) -> Response:
        if current(request):
            return RedirectResponse("/integrations", status_code=303)
        return page(request, "login.html")

    async def login(request: Request) -> Response:
        if cross_site(request):
            return page(request, "login.html", status=403, error=f"Sign in from {site_origin} itself.")
        form = await request.form()
        external_id = str(form.get("customer", ""))
        if external_id not in directory:
            return page(request, "login.html", status=400, error="Choose one of the demo customers.")
        request.session["external_id"] = external_id
        request.session["csrf"] = secrets.token_urlsafe(16)
        return RedirectResponse("/integrations", status_code=303)

    async def logout(request: Request) -> Response:
        if cross_site(request):
            return PlainTextResponse("Sign out from this site itself.", status_code=403)
        request.session.clear()
        return RedirectResponse("/", status_code=303)

    async def integrations(request: Request) -> Response:
        who = current(request)
        if who is None:
            return RedirectResponse("/", status_code=303)
        try:
            minted = await mint(who["external_id"])
            client = await identity_client(who["external_id"])
            connections = [c async for c in client.connections()]
        except BFFError as exc:
            return page(request, "error.html", status=502, error=exc)
        totals = {c["id"]: c.get("live_count", 0) for c in connections}  # rows held, as the panel says
        return page(
            request,
            "integrations.html",
            token=minted["token"],
            connections=connections,
            totals=totals,
            pending_setup=PENDING_SETUP,
            csrf=request.session.get("csrf", ""),
            choice=connector_choice(request),
        )

    async def embedded(request: Request) -> Response:
        """The same connections, shown by the widget's own panel (Peliqan.mountConnections)."""
        who = current(request)
        if who is None:
            return RedirectResponse("/", status_code=303)
        try:
            minted = await mint(who["external_id"])
        except BFFError as exc:
            return page(request, "error.html", status=502, error=exc)
        return page(request, "embedded.html", token=minted["token"], csrf=request.session.get("csrf", ""))

    def require_xhr(request: Request) -> dict[str, str] | None:
        # Same-origin fetches only: a custom header plus the session's CSRF value.
        who = current(request)
        if who is None or request.headers.get("x-csrf-token") != request.session.get("csrf"):
            return None
        return who

    async def fresh_token(request: Request) -> Response:
        who = require_xhr(request)
        if who is None:
            return JSONResponse({"detail": "Sign in first.", "code": "not_signed_in"}, status_code=403)
        try:
            minted = await mint(who["external_id"])
        except BFFError as exc:
            return JSONResponse({"detail": exc.detail, "code": exc.code}, status_code=exc.status or 502)
        return JSONResponse(
            {"token": minted["token"], "expires_at": minted["expires_at"]}, headers={"Cache-Control": "no-store"}
        )

    async def delete_connection(request: Request) -> Response:
        who = require_xhr(request)
        if who is None:
            return JSONResponse({"detail": "Sign in first.", "code": "not_signed_in"}, status_code=403)
        client = await customer_client(who["external_id"])
        try:
            await client.delete_connection(int(request.path_params["id"]))
        except BFFError as exc:
            return JSONResponse({"detail": exc.detail, "code": exc.code}, status_code=exc.status or 502)
        return Response(status_code=204)

    async def connection_summary(request: Request) -> Response:
        """Rows the connection has in the warehouse now (the page shows them next to a run's new records)."""
        who = require_xhr(request)
        if who is None:
            return JSONResponse({"detail": "Sign in first.", "code": "not_signed_in"}, status_code=403)
        try:
            client = await customer_client(who["external_id"])
            rows = (await client.connection(int(request.path_params["id"]))).get("live_count", 0)
        except BFFError as exc:
            return JSONResponse({"detail": exc.detail, "code": exc.code}, status_code=exc.status or 502)
        return JSONResponse({"rows": rows}, headers={"Cache-Control": "no-store"})

    async def receive_webhook(request: Request) -> Response:
        """The partner back-end's webhook endpoint: verified with the standardwebhooks package."""
        if verifier is None:
            return JSONResponse({"detail": "Webhooks are not configured.", "code": "not_configured"}, status_code=404)
        body = await request.body()
        try:
            event = verifier.verify(body, dict(request.headers))
        except WebhookVerificationError:
            return JSONResponse({"detail": "Bad signature.", "code": "bad_signature"}, status_code=401)
        message_id = request.headers.get("webhook-id", "")
        if message_id in seen:
            return Response(status_code=204)
        seen.append(message_id)
        text = describe_event(event)
        external_id = str((event.get("data") or {}).get("external_id", ""))
        if text and external_id:
            feed = activity.setdefault(external_id, deque(maxlen=ACTIVITY_KEPT))
            feed.appendleft({"id": message_id, "type": event.get("type"), "text": text, "at": event.get("timestamp")})
        return Response(status_code=204)

    async def activity_feed(request: Request) -> Response:
        """The signed-in customer's recent events, newest first (the page polls it)."""
        who = current(request)
        if who is None:
            return JSONResponse({"detail": "Sign in first.", "code": "not_signed_in"}, status_code=403)
        events = list(activity.get(who["external_id"], ()))
        return JSONResponse({"events": events}, headers={"Cache-Control": "no-store"})

    async def favicon(request: Request) -> Response:
        return FileResponse(
            HERE / "static" / "favicon.ico",
            media_type="image/x-icon",
            headers={"Cache-Control": "public, max-age=86400"},
        )

    async def data(request: Request) -> Response:
        """The seed's back-end flow, server-side: sub-accounts → connections → tables → rows."""
        who = current(request)
        if who is None:
            return RedirectResponse("/", status_code=303)
        try:
            # Only the signed-in customer's own sub-account: never the partner's other customers.
            minted = await mint(who["external_id"])
            sub_accounts = [
                {"id": minted["account_id"], "external_id": minted["external_id"], "company_name": who["company_name"]}
            ]
            client = await identity_client(who["external_id"])
            connections = [c async for c in client.connections()]
            last_runs = {int(c["id"]): c.get("last_run") or {} for c in connections}
            names = {int(c["id"]): c["name"] for c in connections}
            tables: list[dict[str, Any]] = []
            saved = await saved_queries(client)
            opened = await open_saved_query(client, saved, request.query_params.get("query"))
            for table in await synced_tables(client):
                rows = []
                async for row in client.rows(int(table["id"]), page_size=ROWS_SHOWN):
                    rows.append(row)
                    if len(rows) == ROWS_SHOWN:
                        break
                run = last_runs.get(int(table["connection"]), {})
                types = {f["name"]: f.get("type") for f in table.get("fields", [])}
                tables.append(
                    {
                        **table,
                        "rows": rows,
                        "types": types,
                        "connection_name": names.get(int(table["connection"]), ""),
                        "new_in_last_run": (run.get("records") or {}).get(table["name"]) if run.get("status") else None,
                    }
                )
        except BFFError as exc:
            return page(request, "error.html", status=502, error=exc)
        return page(
            request,
            "data.html",
            sub_accounts=sub_accounts,
            connections=connections,
            tables=tables,
            saved=saved,
            opened=opened,
            csrf=request.session.get("csrf", ""),
            query_error=request.session.pop("query_error", None),
            query_draft=request.session.pop("query_draft", None),
            has_crm=any(c["connector"] == "sandbox_crm" for c in connections),
            contact_error=request.session.pop("contact_error", None),
            contact_draft=request.session.pop("contact_draft", None),
            contact_added=request.session.pop("contact_added", None),
        )

    async def saved_queries(client: Any) -> list[dict[str, Any]]:
        applications = await client.applications()
        if not applications:
            return []
        return [t async for t in client.tables(int(applications[0]["id"])) if t.get("type") == "query"]

    async def open_saved_query(client: Any, saved: list[dict[str, Any]], raw_id: str | None) -> dict[str, Any] | None:
        chosen = next((t for t in saved if raw_id and str(t["id"]) == raw_id), None)
        if chosen is None:
            return None
        types = {f["name"]: f.get("type") for f in chosen.get("fields", [])}
        rows: list[dict[str, Any]] = []
        error = chosen.get("error")
        if error is None:
            try:
                async for row in client.rows(int(chosen["id"]), page_size=ROWS_SHOWN):
                    rows.append(row)
                    if len(rows) == ROWS_SHOWN:
                        break
            except BFFError as exc:
                error = exc.detail
        return {**chosen, "rows": rows, "types": types, "error": error}

    async def signed_in_form(request: Request, doing: str) -> tuple[dict[str, str], Any] | Response:
        """The signed-in customer and a form posted from this site with this session's CSRF value;
        otherwise the answer to send instead."""
        who = current(request)
        if who is None:
            return RedirectResponse("/", status_code=303)
        if cross_site(request):
            refused = BFFError("cross_site", 403, f"{doing} from this site itself.")
            return page(request, "error.html", status=403, error=refused)
        form = await request.form()
        if not secrets.compare_digest(str(form.get("csrf", "")), str(request.session.get("csrf", "")) or "-"):
            expired = BFFError("form_expired", 403, "This form has expired; reload the page.")
            return page(request, "error.html", status=403, error=expired)
        return who, form

    async def create_saved_query(request: Request) -> Response:
        """The partner's back-end saves a customer's query (identity token; never the browser)."""
        checked = await signed_in_form(request, "Save queries")
        if isinstance(checked, Response):
            return checked
        who, form = checked
        name, query = str(form.get("name", "")).strip(), str(form.get("query", ""))
        client = await customer_client(who["external_id"])
        try:
            created = await client.create_query_table(name, query)
        except BFFError as exc:
            request.session["query_error"] = exc.detail if not exc.errors else "; ".join(exc.errors.values())
            request.session["query_draft"] = {"name": name, "query": query}
            return RedirectResponse("/data#saved-queries", status_code=303)
        return RedirectResponse(f"/data?query={int(created['id'])}#saved-queries", status_code=303)

    async def add_contact(request: Request) -> Response:
        """The writeback document's one-liner, from the partner's back-end: add a contact to the
        customer's CRM with `refresh=true`, wait for that sync, and show the new row."""
        checked = await signed_in_form(request, "Add contacts")
        if isinstance(checked, Response):
            return checked
        who, form = checked
        fields = {k: str(form.get(k, "")).strip() for k in ("email", "first_name", "last_name")}
        client = await customer_client(who["external_id"])
        crm = await anext((c async for c in client.connections() if c["connector"] == "sandbox_crm"), None)
        if crm is None:
            request.session["contact_error"] = "Connect Sandbox CRM first (Integrations page)."
            return RedirectResponse("/data#add-contact", status_code=303)
        connection = await client.connect(int(crm["id"]))
        before = (crm.get("last_run") or {}).get("id")
        try:
            added = await connection.add("contact", {k: v for k, v in fields.items() if v}, refresh=True)
        except BFFError as exc:
            request.session["contact_error"] = exc.detail  # the provider's own words, in a sentence
            request.session["contact_draft"] = fields
            return RedirectResponse("/data#add-contact", status_code=303)
        # refresh=true queued one sync of the contacts table: wait (bounded) until it has run.
        for _ in range(int(CONTACT_SYNC_WAIT / 0.25)):
            run = await anext(client.runs(int(crm["id"])), None)
            if run is not None and run["id"] != before and run["status"] not in ("queued", "running", "waiting"):
                break
            await asyncio.sleep(0.25)
        request.session["contact_added"] = str(added.get("id", ""))
        return RedirectResponse("/data#add-contact", status_code=303)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await partner.aclose()

    app = Starlette(
        routes=[
            Route("/", home, methods=["GET"]),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            Route("/integrations", integrations, methods=["GET"]),
            Route("/integrations/token", fresh_token, methods=["POST"]),
            Route("/integrations/embedded", embedded, methods=["GET"]),
            Route("/integrations/{id:int}/delete", delete_connection, methods=["POST"]),
            Route("/integrations/{id:int}/summary", connection_summary, methods=["GET"]),
            Route("/favicon.ico", favicon, methods=["GET"]),
            Route("/webhooks", receive_webhook, methods=["POST"]),
            Route("/integrations/activity", activity_feed, methods=["GET"]),
            Route("/data", data, methods=["GET"]),
            Route("/data/queries", create_saved_query, methods=["POST"]),
            Route("/data/contacts", add_contact, methods=["POST"]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
        middleware=[
            Middleware(
                SessionMiddleware,
                secret_key=session_secret or secrets.token_urlsafe(32),
                session_cookie="acme_session",
                same_site="lax",
                https_only=site_url.startswith("https:"),
            )
        ],
        lifespan=lifespan,
    )
    return app
