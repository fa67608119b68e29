"""Sub-account endpoints for a connection's schedule and lifecycle (DESIGN §10):
``PATCH /api/server/{id}``, ``POST /api/server/{id}/disable`` and ``…/enable``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute

from ..auth import require_connection, services
from ..errors import validation_error
from ..http import api_route, read_json
from ..services.schedules import ScheduleError, parse_frequency, parse_table_frequencies, streams_of
from ..store import UNSET

PATCHABLE = ("name", "sync_frequency", "table_frequencies", "tables")


async def patch_server(request: Request) -> JSONResponse:
    """Rename the connection, change its schedule or choose its tables:
    ``{name?, sync_frequency?, table_frequencies?, tables?}`` (``tables: null``: every table)."""
    account, connection = await require_connection(request)
    data = await read_json(request)
    errors: dict[str, str] = {}
    unknown = [key for key in data if key not in PATCHABLE]
    for key in unknown:
        errors[key] = f"Cannot be changed here; send any of: {', '.join(PATCHABLE)}."
    name: str | None = None
    if "name" in data:
        value = data["name"]
        if not isinstance(value, str) or not value.strip() or len(value) > 200:
            errors["name"] = "Must be text of 1 to 200 characters."
        else:
            name = value.strip()
    frequency: int | None = None
    if "sync_frequency" in data:
        try:
            frequency = parse_frequency(data["sync_frequency"], "sync_frequency")
        except ScheduleError as exc:  # collected: every field's error in one answer
            errors.update(exc.errors)
    tables: dict[str, int] | None = None
    if "table_frequencies" in data:
        try:
            tables = parse_table_frequencies(
                data["table_frequencies"], streams_of(services(request).connectors, connection)
            )
        except ScheduleError as exc:
            errors.update(exc.errors)
    selected: list[str] | None = None
    if "tables" in data:
        known = [stream.name for stream in services(request).connectors[connection.connector].streams]
        chosen = parse_selection(data["tables"], known)
        if isinstance(chosen, str):
            errors["tables"] = chosen
        else:
            selected = chosen
    if errors:
        raise validation_error(errors)
    updated = await services(request).connections.change(
        account,
        connection,
        name=name,
        sync_frequency=frequency if "sync_frequency" in data else UNSET,
        table_frequencies=tables,
        selected_tables=selected if "tables" in data else UNSET,
    )
    return JSONResponse(await services(request).connections.view(account, updated))


def parse_selection(value: object, known: list[str]) -> list[str] | None | str:
    """The tables chosen (in the connector's order), None for every one, or why not (a message)."""
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(t, str) for t in value):
        return f"Must be a non-empty list of table names (of {', '.join(known)}), or null for every table."
    unknown = [t for t in value if t not in known]
    if unknown:
        return f"Unknown table(s): {', '.join(unknown)}. This connection has: {', '.join(known)}."
    return [name for name in known if name in value]


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
