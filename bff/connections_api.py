"""Sub-account endpoints for the catalogue and connections, and the OAuth2 callback."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from . import connections as rt
from . import lifecycle
from .auth import SUB_ACCOUNT_KINDS, authenticate, require_connection, require_sub_account, services
from .connector_text import localized_config_select, localized_form, localized_servertype, request_locale
from .connectors import (
    ConnectorError,
    CredentialsRejected,
    OAuthError,
    build_authorize_url,
    exchange_code,
    new_pkce_pair,
)
from .connectors.definitions import Connector
from .crypto import connection_aad
from .errors import ApiError, connector_error, validation_error
from .http import MAX_PAGE_SIZE, Pagination, api_route, read_json
from .lifecycle import Event, Health
from .store import Connection, OAuthFlow, SubAccount, iso
from .templates import render
from .throttle import CONNECTIONS_CREATED, FAILED_CREDENTIALS, Throttle

OAUTH_FLOW_MAX_AGE = 15 * 60
# Unfinished connections (waiting for a consent or a choice) one sub-account may hold at once.
MAX_PENDING_CONNECTIONS = 20
OAUTH_START_PATH = "/oauth/start"
# A ticket (the one-time nonce the starter holds) is stored like a state, with this purpose prefix:
# it can be swapped for a browser binding and a provider URL once, and never completes a flow itself.
TICKET_PREFIX = "start:"
BINDING_COOKIE = "bff_oauth_"


# -- serialisation -------------------------------------------------------------------


async def connection_dict(request: Request, account: SubAccount, connection: Connection) -> dict[str, Any]:
    """The public shape of a connection: never credentials or provider tokens."""
    connector = services(request).connectors.get(connection.connector)
    last_run = await services(request).store.last_run(connection.id)
    return {
        "id": connection.id,
        "name": connection.name,
        "servertype_id": connector.id if connector else None,
        "connector": connection.connector,
        "health_status": connection.health_status,
        "detail": connection.detail,
        "config": connection.config,
        "created_at": iso(connection.created_at),
        "last_run": last_run.public_dict() if last_run else None,
        "sync_frequency": connection.sync_frequency,
        "table_frequencies": connection.table_frequencies,
        "next_sync_at": iso(connection.next_sync_at),
        "account_id": account.id,
        "external_id": account.external_id,
    }


def logo_base_url(request: Request) -> str:
    return f"{services(request).settings.public_url}/embed/v1/logos/"


# -- validation ------------------------------------------------------------------------


def parse_credentials(connector: Connector, data: dict[str, Any]) -> dict[str, str]:
    """The connect-form fields, each checked; errors are reported per field."""
    errors: dict[str, str] = {}
    credentials: dict[str, str] = {}
    for field in connector.connect_form:
        value = data.get(field.name)
        if value is None or (isinstance(value, str) and not value.strip()):
            if field.required:
                errors[field.name] = f"{field.label} is required."
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            errors[field.name] = f"{field.label} must be text."
            continue
        text_value = str(value).strip() if not field.secret else str(value)
        if len(text_value) > 4096:
            errors[field.name] = f"{field.label} is too long."
            continue
        if field.options and text_value not in {option.value for option in field.options}:
            errors[field.name] = f"Choose one of the offered values for {field.label}."
            continue
        credentials[field.name] = text_value
    if errors:
        raise validation_error(errors, detail="Some connection details are missing or invalid.")
    return credentials


def parse_name(data: dict[str, Any], default: str) -> str:
    name = data.get("name")
    if name is None or name == "":
        return default
    if not isinstance(name, str) or len(name) > 200:
        raise validation_error({"name": "Must be text of at most 200 characters."})
    return name.strip() or default


# -- catalogue --------------------------------------------------------------------------


async def list_servertypes(request: Request) -> JSONResponse:
    """The connector catalogue with each connector's connect form."""
    await authenticate(request, ("partner", *SUB_ACCOUNT_KINDS))
    base = logo_base_url(request)
    locale = request_locale(request)
    page = Pagination(request, default_size=MAX_PAGE_SIZE)
    connectors = sorted(rt.catalogue(services(request)).values(), key=lambda connector: connector.id)
    shown = connectors[page.offset : page.offset + page.limit]
    results = [localized_servertype(connector, connector.public_dict(base), locale) for connector in shown]
    return JSONResponse(page.envelope(len(connectors), results))


# -- connections ------------------------------------------------------------------------


async def create_server(request: Request) -> JSONResponse:
    """Add a connection: credentials are tested first; OAuth2 returns the URL to open."""
    account = await require_sub_account(request)
    data = await read_json(request)
    svc = services(request)
    servertype_id = data.get("servertype_id")
    connector = (
        rt.connector_by_id(svc, servertype_id)
        if isinstance(servertype_id, (int, str)) and not isinstance(servertype_id, bool)
        else None
    )
    if connector is None:
        raise validation_error({"servertype_id": "Unknown connector; see GET /api/servertypes."})
    name = parse_name(data, connector.display_name)
    await refuse_too_many_pending(request, account)
    limits = throttle(request)
    await limits.take(CONNECTIONS_CREATED, str(account.id))

    if connector.auth_type == "oauth2":
        client = rt.oauth_client(svc, connector)
        if client is None:
            raise ApiError(400, "oauth_app_not_configured", f"{connector.display_name} has no OAuth app configured.")
        connection = await svc.store.create_connection(account.id, connector.name, name, Health.AUTHORIZING)
        await svc.connection_created(account, connection)
        oauth_url, nonce = await start_oauth_flow(request, account, connection, connector, purpose="connect")
        body = await connection_dict(request, account, connection)
        body["oauth_url"] = oauth_url
        body["oauth_nonce"] = nonce
        return JSONResponse(body, status_code=201, headers={"Cache-Control": "no-store"})

    credentials = parse_credentials(connector, data)
    await check_credentials(request, account, connector, credentials)
    status = lifecycle.target(Event.CONNECTED, choice_missing=connector.config_select is not None)
    connection = await svc.store.create_connection(
        account.id,
        connector.name,
        name,
        status,
        seal=lambda connection_id: rt.seal_secrets(svc, connection_id, rt.Secrets(credentials)),
    )
    await svc.store.add_log(connection.id, "info", f"Connected to {connector.display_name}; credentials verified.")
    await svc.connection_created(account, connection)
    return JSONResponse(await connection_dict(request, account, connection), status_code=201)


def throttle(request: Request) -> Throttle:
    svc = services(request)
    return Throttle(svc.store, svc.clock)


async def check_credentials(
    request: Request,
    account: SubAccount,
    connector: Connector,
    credentials: dict[str, str],
    *,
    config: dict[str, Any] | None = None,
) -> None:
    """Test credentials at the provider, unless this customer had too many rejected lately
    (counted across processes): the BFF must not become a password-guessing proxy."""
    limits = throttle(request)
    key = f"{account.id}:{connector.name}"
    await limits.check(FAILED_CREDENTIALS, key)
    try:
        await rt.session_for(services(request), connector, credentials=credentials, config=config).test()
    except ConnectorError as exc:
        if isinstance(exc, CredentialsRejected):
            await limits.hit(FAILED_CREDENTIALS, key)
        raise connector_error(
            exc, new_credentials=True, unreachable="Could not reach the provider to check the credentials"
        ) from None


async def refuse_too_many_pending(request: Request, account: SubAccount) -> None:
    """A customer cannot pile up unfinished connections (each is a live consent link and a row)."""
    connections = await services(request).store.list_connections(account.id)
    pending = sum(1 for connection in connections if lifecycle.is_pending(connection.health_status))
    if pending >= MAX_PENDING_CONNECTIONS:
        raise ApiError(
            429,
            "too_many_pending_connections",
            f"This account has {pending} unfinished connections (waiting for consent or a choice). "
            "Finish or delete some before adding more.",
        )


async def list_servers(request: Request) -> JSONResponse:
    """The sub-account's connections (no secrets)."""
    account = await require_sub_account(request)
    page = Pagination(request)
    connections = await services(request).store.list_connections(account.id)
    shown = connections[page.offset : page.offset + page.limit]
    results = [await connection_dict(request, account, c) for c in shown]
    return JSONResponse(page.envelope(len(connections), results))


async def get_server(request: Request) -> JSONResponse:
    """One connection and its status."""
    account, connection = await require_connection(request)
    return JSONResponse(await connection_dict(request, account, connection))


async def delete_server(request: Request) -> Response:
    """Delete a connection, its secrets, runs, logs and warehouse tables."""
    account, connection = await require_connection(request)
    svc = services(request)
    if await svc.sync.delete_connection(account.id, connection.id):
        await svc.webhooks.connection_deleted(account, connection)
    return Response(status_code=204)


async def server_logs(request: Request) -> JSONResponse:
    """The connection's log lines, newest first."""
    _, connection = await require_connection(request)
    page = Pagination(request, default_size=100)
    count, lines = await services(request).store.list_logs(connection.id, offset=page.offset, limit=page.limit)
    return JSONResponse(page.envelope(count, lines))


# -- CONFIG_SELECT ----------------------------------------------------------------------------


def _config_connector(request: Request, connection: Connection) -> Connector:
    connector = services(request).connectors[connection.connector]
    if connector.config_select is None:
        raise ApiError(400, "no_config_step", f"{connector.display_name} has no configuration step.")
    if not lifecycle.can_configure(connection.health_status):
        raise ApiError(409, "connection_not_ready", "Finish authorising the connection first.")
    return connector


async def _config_options(request: Request, connection: Connection, connector: Connector) -> list[dict[str, Any]]:
    svc = services(request)
    try:
        return await rt.session_for_connection(svc, connection).config_options()
    except ConnectorError as exc:
        error = connector_error(exc, unreachable="Could not load the options")
        if isinstance(exc, CredentialsRejected):
            # The stored credentials stopped working: the same event as in a sync or a writeback.
            await lifecycle.transition(
                svc.store,
                connection.id,
                Event.CREDENTIALS_REJECTED,
                detail=error.detail,
                logs=[("warning", error.detail)],
            )
        raise error from None


async def config_options(request: Request) -> JSONResponse:
    """The CONFIG_SELECT choices (e.g. divisions) offered by the provider."""
    _, connection = await require_connection(request)
    connector = _config_connector(request, connection)
    assert connector.config_select is not None
    locale = request_locale(request)
    options = await _config_options(request, connection, connector)
    return JSONResponse(
        {
            **localized_config_select(connector, connector.config_select.public_dict(), locale),
            "options": options,
            "selected": connection.config.get(connector.config_select.field, []),
        }
    )


async def save_config(request: Request) -> JSONResponse:
    """Store the CONFIG_SELECT choice; the connection becomes ready to sync."""
    account, connection = await require_connection(request)
    connector = _config_connector(request, connection)
    select = connector.config_select
    assert select is not None
    data = await read_json(request)
    chosen = data.get(select.field)
    if isinstance(chosen, (str, int)) and not isinstance(chosen, bool):
        chosen = [chosen]
    if (
        not isinstance(chosen, list)
        or not chosen
        or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in chosen)
    ):
        raise validation_error({select.field: f"Choose at least one of the {select.label.lower()}."})
    values = list(dict.fromkeys(str(v) for v in chosen))
    if not select.multiple and len(values) > 1:
        raise validation_error({select.field: "Choose exactly one."})
    offered = {str(option["value"]) for option in await _config_options(request, connection, connector)}
    unknown = [v for v in values if v not in offered]
    if unknown:
        raise validation_error({select.field: f"Not offered by the provider: {', '.join(unknown)}."})
    svc = services(request)
    await lifecycle.transition(
        svc.store,
        connection.id,
        Event.CONFIG_SAVED,
        config={**connection.config, select.field: values},
        logs=[("info", f"{select.label} selected: {', '.join(values)}.")],
    )
    updated = await svc.store.get_connection(account.id, connection.id)
    assert updated is not None
    return JSONResponse(await connection_dict(request, account, updated))


# -- re-authorisation and manual refresh -------------------------------------------------------


def choice_missing(connector: Connector, connection: Connection) -> bool:
    """The connector has a CONFIG_SELECT step and this connection has no saved choice yet."""
    select = connector.config_select
    return select is not None and not connection.config.get(select.field)


async def reauthorise(request: Request) -> JSONResponse:
    """OAuth2: a new consent URL. Key/login: the form, or new credentials tested and stored."""
    account, connection = await require_connection(request)
    svc = services(request)
    connector = services(request).connectors[connection.connector]
    data = await read_json(request, required=False)
    if connector.auth_type == "oauth2":
        if connection.health_status == Health.AUTHORIZING:
            # Never authorised (the sign-in window was closed): "Finish setup" starts a new sign-in
            # that ends like a first connect (CONFIG_SELECT or OK), not as a re-authorisation.
            auth_uri, nonce = await start_oauth_flow(request, account, connection, connector, purpose="connect")
        else:
            auth_uri, nonce = await start_oauth_flow(request, account, connection, connector, purpose="reauthorise")
            await lifecycle.transition(svc.store, connection.id, Event.SIGN_IN_STARTED, keep_detail=True)
        return JSONResponse(
            {"auth_uri": auth_uri, "oauth_nonce": nonce, "id": connection.id}, headers={"Cache-Control": "no-store"}
        )
    if not data:
        fields = localized_form(connector, [f.public_dict() for f in connector.connect_form], request_locale(request))
        return JSONResponse({"id": connection.id, "form": {"fields": fields}})
    credentials = parse_credentials(connector, data)
    await check_credentials(request, account, connector, credentials, config=connection.config)
    await lifecycle.transition(
        svc.store,
        connection.id,
        Event.REAUTHORISED,
        choice_missing=choice_missing(connector, connection),
        secrets=rt.seal_secrets(svc, connection.id, rt.Secrets(credentials)),
        logs=[("info", "Credentials replaced and verified.")],
    )
    updated = await svc.store.get_connection(account.id, connection.id)
    assert updated is not None
    return JSONResponse(await connection_dict(request, account, updated))


async def manual_refresh(request: Request) -> JSONResponse:
    """The provider page where the customer refreshes bank data by hand (SaltEdge-style)."""
    _, connection = await require_connection(request)
    connector = services(request).connectors[connection.connector]
    url = connector.manual_refresh_url(rt.context(services(request)))
    if url is None:
        raise ApiError(400, "manual_refresh_not_supported", f"{connector.display_name} has no manual refresh.")
    return JSONResponse({"id": connection.id, "refresh_url": url})


# -- OAuth2 -------------------------------------------------------------------------------------


def _state_hash(state: str) -> str:
    # Only a hash is stored: a database leak does not yield usable states.
    return hashlib.sha256(state.encode()).hexdigest()


async def start_oauth_flow(
    request: Request, account: SubAccount, connection: Connection, connector: Connector, *, purpose: str
) -> tuple[str, str]:
    """The start page's URL and a one-time ticket (the nonce) for the caller, never the provider's URL.

    The provider's URL (with a state nobody has seen and a fresh PKCE challenge) is only handed
    to a browser that swaps the ticket at the start page, which also binds that browser with a
    cookie the callback requires (RFC 9700 §4.7): a consent link forwarded to somebody else
    cannot complete into this account.
    """
    svc = services(request)
    if rt.oauth_client(svc, connector) is None:
        raise ApiError(400, "oauth_app_not_configured", f"{connector.display_name} has no OAuth app configured.")
    ticket = secrets.token_urlsafe(32)
    await svc.store.create_oauth_flow(
        _state_hash(ticket),
        connection_id=connection.id,
        sub_account_id=account.id,
        purpose=TICKET_PREFIX + purpose,
        verifier=None,
    )
    return svc.settings.public_url + OAUTH_START_PATH, ticket


def _public_origin(request: Request) -> str:
    parts = urlsplit(services(request).settings.public_url)
    return f"{parts.scheme}://{parts.netloc}"


def _binding_cookie(request: Request, state_hash: str) -> tuple[str, str, bool]:
    """(name, path, secure): ``__Host-`` on HTTPS, so no sibling subdomain can plant one."""
    secure = services(request).settings.public_url.startswith("https:")
    name = BINDING_COOKIE + state_hash[:24]
    return ("__Host-" + name, "/", True) if secure else (name, "/oauth/callback", False)


async def start_page(request: Request) -> HTMLResponse:
    """The page ``oauth_url`` opens: it takes the ticket from the window that opened it and goes on to the provider."""
    nonce = secrets.token_urlsafe(16)
    html = render("oauth_start.html", nonce=nonce, start_path=OAUTH_START_PATH)
    return HTMLResponse(
        html,
        headers={
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
            "Content-Security-Policy": (
                f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; "
                "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
            ),
        },
    )


async def oauth_start(request: Request) -> Response:
    """Swap a ticket for a browser binding (an HttpOnly cookie) and the provider's URL.

    Called only by the start page itself (same origin, JSON): a page on another site cannot
    make a victim's browser do it. ``opener_origin`` is the origin the start page received the
    ticket from: the connect iframe (this origin) or a page the ticket's partner registered.
    """
    svc = services(request)
    own_origin = _public_origin(request)
    if (
        request.headers.get("origin") != own_origin
        or request.headers.get("sec-fetch-site", "same-origin") != "same-origin"
    ):
        raise ApiError(403, "origin_not_allowed", "Only the sign-in start page may start a sign-in.")
    data = await read_json(request)
    ticket, opener = data.get("nonce"), data.get("opener_origin")
    if not isinstance(ticket, str) or not isinstance(opener, str) or len(ticket) > 128 or len(opener) > 300:
        raise validation_error({"nonce": "Send the nonce and the origin it came from."})
    flow = await svc.store.consume_oauth_flow(_state_hash(ticket), max_age=OAUTH_FLOW_MAX_AGE)
    if flow is None or not flow.purpose.startswith(TICKET_PREFIX):
        raise ApiError(
            400, "oauth_start_invalid", "This sign-in has expired or was already started. Start again from the app."
        )
    account = await svc.store.get_sub_account_by_id(flow.sub_account_id)
    connection = await svc.store.get_connection(flow.sub_account_id, flow.connection_id)
    if account is None or connection is None:
        raise ApiError(400, "oauth_start_invalid", "This connection no longer exists. Start again from the app.")
    if opener != own_origin and not await svc.store.partner_has_origin(account.partner_id, opener):
        raise ApiError(
            403, "origin_not_allowed", "The sign-in was handed over by a page that is not registered for this partner."
        )
    connector = services(request).connectors[connection.connector]
    client = rt.oauth_client(svc, connector)
    if client is None:
        raise ApiError(400, "oauth_app_not_configured", f"{connector.display_name} has no OAuth app configured.")
    state = secrets.token_urlsafe(32)
    verifier, challenge = new_pkce_pair() if connector.oauth and connector.oauth.pkce else (None, None)
    sealed = svc.vault.encrypt(verifier.encode(), connection_aad(connection.id, "pkce")) if verifier else None
    purpose = flow.purpose.removeprefix(TICKET_PREFIX)
    await svc.store.create_oauth_flow(
        _state_hash(state), connection_id=connection.id, sub_account_id=account.id, purpose=purpose, verifier=sealed
    )
    url = build_authorize_url(connector, client=client, state=state, code_challenge=challenge, context=rt.context(svc))
    response = JSONResponse({"authorize_url": url}, headers={"Cache-Control": "no-store"})
    name, path, secure = _binding_cookie(request, _state_hash(state))
    response.set_cookie(
        name,
        svc.tokens.sign_oauth_binding(_state_hash(state)),
        max_age=OAUTH_FLOW_MAX_AGE,
        path=path,
        secure=secure,
        httponly=True,
        samesite="lax",
    )
    return response


def callback_page(
    request: Request, *, ok: bool, connection_id: int | None, message: str, status: int = 200
) -> HTMLResponse:
    nonce = secrets.token_urlsafe(16)
    svc = services(request)
    html = render(
        "oauth_callback.html",
        ok=ok,
        message=message,
        nonce=nonce,
        result={
            "source": "peliqan-oauth",
            "type": "oauth_result",
            "connection_id": connection_id,
            "ok": ok,
            "error": None if ok else message,
            "target_origin": svc.settings.public_url,
        },
    )
    return HTMLResponse(
        html,
        status_code=status,
        headers={
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": (
                f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; base-uri 'none'; "
                "form-action 'none'; frame-ancestors 'none'"
            ),
        },
    )


async def oauth_callback(request: Request) -> HTMLResponse:
    """The registered redirect URI: exchanges the code (with the PKCE verifier) and reports to the opener."""
    svc = services(request)
    params = request.query_params
    state = params.get("state")
    if not state:
        return callback_page(
            request,
            ok=False,
            connection_id=None,
            message="This sign-in response has no state; start again from the app.",
            status=400,
        )
    name, _, _ = _binding_cookie(request, _state_hash(state))
    binding = request.cookies.get(name, "")
    if not svc.tokens.oauth_binding_matches(binding, _state_hash(state), max_age=OAUTH_FLOW_MAX_AGE):
        # Not the browser that started this sign-in (a forwarded link), or a ticket used as a state.
        return callback_page(
            request,
            ok=False,
            connection_id=None,
            status=400,
            message="This sign-in was started in another browser or window, so it cannot be finished here. "
            "Nothing was connected. If you want to connect your account, start again from the app.",
        )
    flow = await svc.store.consume_oauth_flow(_state_hash(state), max_age=OAUTH_FLOW_MAX_AGE)
    if flow is None or flow.purpose.startswith(TICKET_PREFIX):
        response = callback_page(
            request,
            ok=False,
            connection_id=None,
            status=400,
            message="This sign-in link has expired or was already used. Close this window and start again.",
        )
    else:
        # The binding cookie stays until it expires: it names a state that is now used up.
        response = await finish_oauth_flow(request, flow)
    return response


async def finish_oauth_flow(request: Request, flow: OAuthFlow) -> HTMLResponse:
    """The flow is this browser's and now used: exchange the code, store the tokens, report."""
    svc = services(request)
    params = request.query_params
    connection = await svc.store.get_connection(flow.sub_account_id, flow.connection_id)
    if connection is None:
        return callback_page(
            request, ok=False, connection_id=None, status=400, message="This connection no longer exists."
        )
    connector = services(request).connectors[connection.connector]
    if params.get("error"):
        reason = params.get("error_description") or params.get("error") or "unknown error"
        detail = (
            "Access was denied at the provider."
            if params.get("error") == "access_denied"
            else f"The provider reported an error: {reason[:200]}"
        )
        await lifecycle.transition(
            svc.store,
            connection.id,
            Event.SIGN_IN_FAILED,
            detail=detail,
            logs=[("warning", f"Authorisation failed: {detail}")],
        )
        return callback_page(request, ok=False, connection_id=connection.id, message=detail)
    code = params.get("code")
    if not code:
        return callback_page(
            request,
            ok=False,
            connection_id=connection.id,
            status=400,
            message="The provider sent no authorisation code.",
        )
    client = rt.oauth_client(svc, connector)
    assert client is not None
    verifier = (
        svc.vault.decrypt(flow.verifier, connection_aad(connection.id, "pkce")).decode() if flow.verifier else None
    )
    try:
        tokens = await exchange_code(
            connector,
            http=svc.http,
            client=client,
            code=code,
            code_verifier=verifier,
            context=rt.context(svc),
            clock=svc.clock,
        )
    except (OAuthError, ConnectorError) as exc:
        detail = f"Could not complete authorisation: {exc.detail}"
        await lifecycle.transition(
            svc.store, connection.id, Event.SIGN_IN_FAILED, detail=detail, logs=[("error", detail)]
        )
        return callback_page(request, ok=False, connection_id=connection.id, message=detail)
    await lifecycle.transition(
        svc.store,
        connection.id,
        Event.REAUTHORISED if flow.purpose == "reauthorise" else Event.CONNECTED,
        choice_missing=choice_missing(connector, connection),
        secrets=rt.seal_secrets(svc, connection.id, rt.Secrets(credentials={}, tokens=tokens)),
        logs=[("info", f"Authorised with {connector.display_name}.")],
    )
    return callback_page(
        request,
        ok=True,
        connection_id=connection.id,
        message=f"{connector.display_name} is connected. You can close this window.",
    )


# -- embed session --------------------------------------------------------------------------------


async def embed_session(request: Request) -> JSONResponse:
    """The iframe proves its parent page's origin is registered for the token's partner."""
    caller = await authenticate(request, SUB_ACCOUNT_KINDS)
    assert caller.partner is not None and caller.sub_account is not None
    data = await read_json(request)
    origin = data.get("parent_origin")
    if not isinstance(origin, str) or not await services(request).store.partner_has_origin(caller.partner.id, origin):
        raise ApiError(403, "origin_not_allowed", "This page's origin is not registered for this partner.")
    return JSONResponse(
        {
            "account_id": caller.sub_account.id,
            "external_id": caller.sub_account.external_id,
            "partner_id": caller.partner.id,
            "expires_at": caller.claims.expires_at,
            "locale": caller.sub_account.language,
        }
    )


def routes() -> list[BaseRoute]:
    return [
        *api_route("/api/servertypes", list_servertypes, methods=["GET"]),
        *api_route("/api/servers", create_server, methods=["POST"]),
        *api_route("/api/servers", list_servers, methods=["GET"]),
        *api_route("/api/server/{id:int}", get_server, methods=["GET"]),
        *api_route("/api/server/{id:int}", delete_server, methods=["DELETE"]),
        *api_route("/api/server/{id:int}/logs", server_logs, methods=["GET"]),
        *api_route("/api/server/{id:int}/config-options", config_options, methods=["GET"]),
        *api_route("/api/server/{id:int}/config", save_config, methods=["POST"]),
        *api_route("/api/server/{id:int}/reauthorise", reauthorise, methods=["POST"]),
        *api_route("/api/server/{id:int}/manual-refresh", manual_refresh, methods=["POST"]),
        *api_route("/api/embed/session", embed_session, methods=["POST"]),
        Route("/oauth/callback", oauth_callback, methods=["GET"]),
        Route(OAUTH_START_PATH, start_page, methods=["GET"]),
        Route(OAUTH_START_PATH, oauth_start, methods=["POST"]),
    ]
