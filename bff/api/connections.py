"""Sub-account endpoints for the catalogue and connections (DESIGN §5): thin routes over
:class:`bff.services.connections.Connections`; the OAuth2 pages are in :mod:`bff.api.oauth`."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from .. import connections as rt
from ..auth import SUB_ACCOUNT_KINDS, authenticate, require_connection, require_sub_account, services
from ..connector_text import DEFAULT_LOCALE, localized_config_select, localized_form, localized_servertype
from ..contract.queries import LocaleQuery
from ..contract.requests import (
    UNKNOWN_CONNECTOR,
    ConfigChoice,
    ConnectionCreate,
    Credentials,
    EmbedSessionRequest,
    origin_not_allowed,
)
from ..errors import ApiError, validation_error
from ..http import MAX_PAGE_SIZE, api_route, parse_body, parse_query
from ..services.connections import MAX_PENDING_CONNECTIONS, parse_credentials
from ..store import Connection, SubAccount
from .paging import Pagination

__all__ = ["MAX_PENDING_CONNECTIONS", "routes"]

NO_STORE = {"Cache-Control": "no-store"}


async def connection_dict(request: Request, account: SubAccount, connection: Connection) -> dict[str, Any]:
    """The public shape of a connection: never credentials or provider tokens."""
    return await services(request).connections.view(account, connection)


# -- catalogue --------------------------------------------------------------------------


def _locale(request: Request) -> str:
    """``?locale=`` (``nl``, ``nl-BE``, …) → one of the catalogue's locales; English when absent."""
    return parse_query(request, LocaleQuery).locale or DEFAULT_LOCALE


async def list_servertypes(request: Request) -> JSONResponse:
    """The connector catalogue with each connector's connect form."""
    await authenticate(request, ("partner", *SUB_ACCOUNT_KINDS))
    base = f"{services(request).settings.public_url}/embed/v1/logos/"
    locale = _locale(request)
    page = Pagination(request, default_size=MAX_PAGE_SIZE)
    connectors = sorted(rt.catalogue(services(request)).values(), key=lambda connector: connector.id)
    shown = connectors[page.offset : page.offset + page.limit]
    results = [localized_servertype(connector, connector.public_dict(base), locale) for connector in shown]
    return JSONResponse(page.envelope(len(connectors), results))


# -- connections ------------------------------------------------------------------------


async def create_server(request: Request) -> JSONResponse:
    """Add a connection: credentials are tested first; OAuth2 returns the URL to open."""
    account = await require_sub_account(request)
    given = await parse_body(request, ConnectionCreate)
    svc = services(request)
    connector = rt.connector_by_id(svc, given.servertype_id)
    if connector is None:
        raise validation_error({"servertype_id": UNKNOWN_CONNECTOR})
    name = (given.name or "").strip() or connector.display_name
    # oauth_strict: the sign-in's start page goes on only with oauth_nonce handed over by the
    # window that opened it (the widget does this), not on its own after a Continue press.
    connection, sign_in = await svc.connections.create(
        account, connector, name, given.form_values(), strict=given.oauth_strict
    )
    body = await svc.connections.view(account, connection)
    if sign_in is None:
        return JSONResponse(body, status_code=201)
    return JSONResponse({**body, "oauth_url": sign_in.url, "oauth_nonce": sign_in.nonce}, 201, NO_STORE)


async def list_servers(request: Request) -> JSONResponse:
    """The sub-account's connections (no secrets)."""
    account = await require_sub_account(request)
    page = Pagination(request)
    count, views = await services(request).connections.page(account, offset=page.offset, limit=page.limit)
    return JSONResponse(page.envelope(count, views))


async def get_server(request: Request) -> JSONResponse:
    """One connection and its status."""
    account, connection = await require_connection(request)
    return JSONResponse(await connection_dict(request, account, connection))


async def delete_server(request: Request) -> Response:
    """Delete a connection, its secrets, runs, logs and warehouse tables."""
    account, connection = await require_connection(request)
    await services(request).connections.delete(account, connection)
    return Response(status_code=204)


async def server_logs(request: Request) -> JSONResponse:
    """The connection's log lines, newest first."""
    _, connection = await require_connection(request)
    page = Pagination(request, default_size=100)
    count, lines = await services(request).connections.logs(connection, offset=page.offset, limit=page.limit)
    return JSONResponse(page.envelope(count, lines))


# -- CONFIG_SELECT ----------------------------------------------------------------------------


async def config_options(request: Request) -> JSONResponse:
    """The CONFIG_SELECT choices (e.g. divisions) offered by the provider."""
    _, connection = await require_connection(request)
    svc = services(request)
    connector = svc.connections.config_connector(connection)
    assert connector.config_select is not None
    options = await svc.connections.config_options(connection)
    return JSONResponse(
        {
            **localized_config_select(connector, connector.config_select.public_dict(), _locale(request)),
            "options": options,
            "selected": connection.config.get(connector.config_select.field, []),
        }
    )


async def save_config(request: Request) -> JSONResponse:
    """Store the CONFIG_SELECT choice; the connection becomes ready to sync."""
    account, connection = await require_connection(request)
    svc = services(request)
    select = svc.connections.config_connector(connection).config_select
    assert select is not None
    choice = await parse_body(request, ConfigChoice)
    updated = await svc.connections.save_config(account, connection, (choice.model_extra or {}).get(select.field))
    return JSONResponse(await connection_dict(request, account, updated))


# -- re-authorisation and manual refresh -------------------------------------------------------


async def reauthorise(request: Request) -> JSONResponse:
    """OAuth2: a new consent URL. Key/login: the form, or new credentials tested and stored."""
    account, connection = await require_connection(request)
    svc = services(request)
    connector = svc.connectors[connection.connector]
    given = await parse_body(request, Credentials, required=False)
    data = given.model_extra or {}
    if connector.auth_type == "oauth2":
        sign_in = await svc.connections.start_reauthorising(account, connection, connector, strict=given.oauth_strict)
        return JSONResponse({"auth_uri": sign_in.url, "oauth_nonce": sign_in.nonce, "id": connection.id}, 200, NO_STORE)
    if not data:
        fields = localized_form(connector, [f.public_dict() for f in connector.connect_form], _locale(request))
        return JSONResponse({"id": connection.id, "form": {"fields": fields}})
    credentials = parse_credentials(connector, data)
    updated = await svc.connections.replace_credentials(account, connection, connector, credentials)
    return JSONResponse(await connection_dict(request, account, updated))


async def manual_refresh(request: Request) -> JSONResponse:
    """The provider page where the customer refreshes bank data by hand (SaltEdge-style)."""
    _, connection = await require_connection(request)
    connector = services(request).connectors[connection.connector]
    url = connector.manual_refresh_url(rt.context(services(request)))
    if url is None:
        raise ApiError(400, "manual_refresh_not_supported", f"{connector.display_name} has no manual refresh.")
    return JSONResponse({"id": connection.id, "refresh_url": url})


# -- embed session --------------------------------------------------------------------------------


async def embed_session(request: Request) -> JSONResponse:
    """The iframe proves its parent page's origin is registered for the token's partner."""
    caller = await authenticate(request, SUB_ACCOUNT_KINDS)
    assert caller.partner is not None and caller.sub_account is not None
    origin = (await parse_body(request, EmbedSessionRequest)).parent_origin
    if not await services(request).partners.has_origin(caller.partner, origin):
        raise origin_not_allowed()
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
    ]
