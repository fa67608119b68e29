"""Sub-account endpoints for a connection's schedule and lifecycle (DESIGN §10):
``PATCH /api/server/{id}``, ``POST /api/server/{id}/disable`` and ``…/enable``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute

from ..auth import require_connection, services
from ..contract.requests import ConnectionChange
from ..http import api_route, parse_body
from ..services.schedules import streams_of
from ..store import UNSET


async def patch_server(request: Request) -> JSONResponse:
    """Rename the connection, change its schedule or choose its tables:
    ``{name?, sync_frequency?, table_frequencies?, tables?}`` (``tables: null``: every table)."""
    account, connection = await require_connection(request)
    connectors = services(request).connectors
    change = await parse_body(
        request,
        ConnectionChange,
        context={
            "frequency_streams": streams_of(connectors, connection),
            "streams": [stream.name for stream in connectors[connection.connector].streams],
        },
    )
    given = change.model_fields_set
    updated = await services(request).connections.change(
        account,
        connection,
        name=change.name,
        sync_frequency=change.sync_frequency if "sync_frequency" in given else UNSET,
        table_frequencies=change.table_frequencies,
        selected_tables=change.tables if "tables" in given else UNSET,
    )
    return JSONResponse(await services(request).connections.view(account, updated))


async def disable_server(request: Request) -> JSONResponse:
    """``DISABLED``: no scheduled runs and no manual syncs until it is enabled again. A run
    already going finishes; the connection stays disabled."""
    account, connection = await require_connection(request)
    connections = services(request).connections
    return JSONResponse(await connections.view(account, await connections.disable(account, connection)))


async def enable_server(request: Request) -> JSONResponse:
    """``RE_ENABLED``, then the normal flow: a sync at once and the schedule again."""
    account, connection = await require_connection(request)
    connections = services(request).connections
    return JSONResponse(await connections.view(account, await connections.enable(account, connection)))


def routes() -> list[BaseRoute]:
    return [
        *api_route("/api/server/{id:int}", patch_server, methods=["PATCH"]),
        *api_route("/api/server/{id:int}/disable", disable_server, methods=["POST"]),
        *api_route("/api/server/{id:int}/enable", enable_server, methods=["POST"]),
    ]
