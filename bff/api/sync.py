"""Sub-account endpoints for sync runs and health: what ``syncServer``,
``getServerSyncRunStatus`` and ``getServerHealthStatus`` call."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from ..auth import require_connection, services
from ..contract.queries import WaitQuery
from ..contract.requests import SyncRequest
from ..http import api_route, parse_body, parse_query
from ..services.sync import SyncRunner
from ..shapes import run_dict
from .paging import Pagination


def runner(request: Request) -> SyncRunner:
    return services(request).sync


async def sync_server(request: Request) -> JSONResponse:
    """Start a sync run of the connection (optionally only some tables); it runs in the background.

    ``{"full": true}`` forgets the cursors and marks rows the provider no longer has as deleted;
    ``?wait=N`` (N ≤ 120) answers ``200`` with the finished run, or ``202`` if it is still going.
    """
    account, connection = await require_connection(request)
    wait = parse_query(request, WaitQuery).wait
    asked = await parse_body(request, SyncRequest, required=False)
    tables, full, categories = asked.tables, asked.full, [str(c) for c in asked.categories or []] or None
    run = await runner(request).request_sync(account, connection, tables, full=full, categories=categories)
    body: dict[str, Any] = {
        "server_id": str(connection.id),  # a string, as the source document shows it
        "health_status": connection.health_status,
        "run_data": [{"pipeline_run_id": run.id, "task_id": run.task_id}],
        "task_id": run.task_id,
        "detail": ("Full sync" if full else "Sync")
        + ("" if tables is None else f" of {', '.join(tables)}")
        + ("" if categories is None else f" for {', '.join(categories)}")
        + " started.",
        "syncing": True,
        "full": full,
    }
    if wait is not None:
        ended = await runner(request).wait_finished(run.id, connection, timeout=wait)
        if ended is not None:
            finished, updated = ended
            body.update(
                health_status=updated.health_status,
                syncing=False,
                detail=f"Sync {finished.status.replace('_', ' ')}.",
                run=run_dict(finished),
            )
            return JSONResponse(body, status_code=200)
        body["detail"] += f" Still running after {wait:g} s."
    return JSONResponse(body, status_code=202)


def _etag(body: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:32]
    return f'W/"{digest}"'


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    # Weak comparison (RFC 9110 §13.1.2): W/ prefixes do not matter.
    wanted = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == wanted for tag in if_none_match.split(","))


async def server_health(request: Request) -> Response:
    """The connection's health; answers 304 when ``If-None-Match`` holds the current ETag."""
    _, connection = await require_connection(request)
    body = {
        "id": connection.id,
        "name": connection.name,
        "health_status": connection.health_status,
        "detail": connection.detail,
    }
    etag = _etag(body)
    # no-cache: browsers may keep the answer but must ask again (cheaply, with the ETag).
    headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
    if _matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return JSONResponse(body, headers=headers)


async def sync_status(request: Request) -> JSONResponse:
    """Whether a run is queued or running; otherwise the last run's id and status."""
    _, connection = await require_connection(request)
    run, running = await runner(request).status(connection.id)
    return JSONResponse(
        {
            "running": running,
            "pipeline_run_id": run.id if run else None,
            "status": run.status if run else None,
        },
        headers={"Cache-Control": "no-store"},
    )


async def list_runs(request: Request) -> JSONResponse:
    """The connection's sync runs, newest first."""
    _, connection = await require_connection(request)
    page = Pagination(request, default_size=20)
    count, runs = await runner(request).runs(connection.id, offset=page.offset, limit=page.limit)
    return JSONResponse(page.envelope(count, [run_dict(run) for run in runs]))


def routes() -> list[BaseRoute]:
    return [
        *api_route("/api/server/{id:int}/sync", sync_server, methods=["POST"]),
        *api_route("/api/server/{id:int}/health", server_health, methods=["GET"]),
        *api_route("/api/server/{id:int}/sync-status", sync_status, methods=["GET"]),
        *api_route("/api/server/{id:int}/runs", list_runs, methods=["GET"]),
    ]
