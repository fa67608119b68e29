"""Query tables (§13) and SQL access for BI tools.

``POST /api/table`` (alias ``POST /table``) ``{name, query}`` → ``201 {id, name, type: "query",
query, fields}``; ``GET``/``PATCH``/``DELETE /api/table/{id}``. Back-end only: identity tokens,
never the browser's integrate token. The SQL itself is checked and run by
:class:`bff.query_tables.QueryTables`, as the customer's own database role.

``POST /api/partner/sub-account/{id}/database-credentials`` (partner token, ``BFF_SQL_ACCESS=true``)
``{write?}`` → ``{host, port, database, user, password, schema}``; every call sets a new password.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute

from .. import auth
from ..auth import require_partner, services
from ..contract.requests import (
    DatabaseCredentialsRequest,
    OwnWarehouseRequest,
    QueryRun,
    QueryTableChange,
    QueryTableCreate,
)
from ..errors import ApiError, not_found
from ..http import api_route, parse_body
from ..query_tables import QueryTable
from ..store import SubAccount
from ..warehouse_own import bring_own_server

EXPORT_CHUNK = 256 * 1024

logger = logging.getLogger("bff.warehouse")


async def require_back_end(request: Request) -> SubAccount:
    caller = await auth.require_back_end(request, what="Query tables")
    assert caller.sub_account is not None
    return caller.sub_account


async def _own_query_table(request: Request, account: SubAccount) -> QueryTable:
    raw = request.path_params["table_id"]
    table = await services(request).query_tables.get(account.id, raw)
    if table is None:
        raise not_found("No such query table.")
    return table


async def create_table(request: Request) -> JSONResponse:
    """Save a query table: one SELECT over the customer's own tables, kept as a view."""
    account = await require_back_end(request)
    given = await parse_body(request, QueryTableCreate)
    table = await services(request).query_tables.create(account.id, given.name, given.query)
    return JSONResponse(table.public_dict(), status_code=201)


async def get_table(request: Request) -> JSONResponse:
    """One query table: its name, query and fields."""
    account = await require_back_end(request)
    return JSONResponse((await _own_query_table(request, account)).public_dict())


async def update_table(request: Request) -> JSONResponse:
    """Rename a query table or change its query (checked like a new one)."""
    account = await require_back_end(request)
    table = await _own_query_table(request, account)
    change = await parse_body(request, QueryTableChange)
    changed = await services(request).query_tables.update(table, name=change.name, query=change.query)
    return JSONResponse(changed.public_dict())


async def delete_table(request: Request) -> Response:
    """Delete a query table and its view."""
    account = await require_back_end(request)
    table = await _own_query_table(request, account)
    await services(request).query_tables.delete(table)
    return Response(status_code=204)


async def run_query(request: Request) -> JSONResponse:
    """Run one query as the customer: ``{query, limit?, write?}`` → ``{fields, rows, count, truncated}``.

    Read-only unless ``write`` is true: then one statement that may change the customer's own
    database (``INSERT``/``UPDATE``/``DELETE`` in synced tables, tables in schemas of its own), whose
    answer adds ``status`` (the command tag) and ``rowcount``. What ``pq.dbconnect(pq.DW_NAME)``
    calls; nothing is saved. Counted with the
    rows API's reads (``429 rate_limited``); more queries of one customer at once than the BFF
    opens connections for are ``429 too_many_queries``, a database without a free connection
    ``503 database_busy``.
    """
    account = await auth.require_identity(request)
    asked = await parse_body(request, QueryRun)
    query, limit = asked.query, asked.limit
    if asked.write:
        done = await services(request).query_tables.run_statement(account.id, query, limit=limit)
        return JSONResponse(
            {
                "fields": done.fields,
                "rows": done.rows,
                "count": len(done.rows),
                "truncated": done.truncated,
                "status": done.status,
                "rowcount": done.rowcount,
            }
        )
    fields, rows, truncated = await services(request).query_tables.run_query(account.id, query, limit=limit)
    return JSONResponse({"fields": fields, "rows": rows, "count": len(rows), "truncated": truncated})


async def database_credentials(request: Request) -> JSONResponse:
    """A SQL login for one customer's own database (BFF_SQL_ACCESS=true): read-only, or with
    ``{"write": true}`` one that may also write it; a new password each call."""
    partner = await require_partner(request)
    svc = services(request)
    if not svc.settings.sql_access:
        raise ApiError(
            404,
            "sql_access_disabled",
            "SQL access is off on this server; the operator turns it on with BFF_SQL_ACCESS=true.",
        )
    write = (await parse_body(request, DatabaseCredentialsRequest, required=False)).write
    account = await svc.partners.find_sub_account(partner, account_id=request.path_params["account_id"])
    if account is None:
        raise not_found("No such sub-account.")
    credentials = await svc.query_tables.database_credentials(
        account.id, write=write, public_host=svc.settings.sql_access_host
    )
    return JSONResponse(credentials.public_dict(), headers={"Cache-Control": "no-store"})


async def _partners_sub_account(request: Request) -> SubAccount:
    partner = await require_partner(request)
    account = await services(request).partners.find_sub_account(partner, account_id=request.path_params["account_id"])
    if account is None:
        raise not_found("No such sub-account.")
    return account


async def export_sub_account(request: Request) -> Response:
    """The customer's whole database as a ``pg_dump`` archive (custom format, for ``pg_restore``),
    streamed; a customer without a database yet has nothing to export (``404 no_warehouse``)."""
    account = await _partners_sub_account(request)
    svc = services(request)
    placement = await svc.warehouse.placement(account.id)
    if placement is None:
        raise ApiError(404, "no_warehouse", "This sub-account has no warehouse yet (nothing was synced).")
    process = await svc.warehouse.servers.dump(placement)
    assert process.stdout is not None and process.stderr is not None
    first = await process.stdout.read(EXPORT_CHUNK)
    if not first:  # pg_dump writes its archive header at once; nothing means it failed
        problem = (await process.stderr.read()).decode(errors="replace").strip().splitlines()
        await process.wait()
        logger.error("export of sub-account %s failed: %s", account.id, problem[:1])
        raise ApiError(503, "export_failed", "The database could not be dumped; retry shortly.")
    logger.info("export of sub-account %s (database %s) started", account.id, placement.database)

    async def chunks() -> AsyncIterator[bytes]:
        assert process.stdout is not None
        try:
            chunk = first
            while chunk:
                yield chunk
                chunk = await process.stdout.read(EXPORT_CHUNK)
            code = await process.wait()
            logger.info("export of sub-account %s ended (pg_dump exit %s)", account.id, code)
        finally:
            if process.returncode is None:  # the client went away: stop the dump
                process.kill()
                await process.wait()

    return StreamingResponse(
        chunks(),
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": f'attachment; filename="sub-account-{account.id}.dump"',
            "Cache-Control": "no-store",
        },
    )


async def set_own_warehouse(request: Request) -> JSONResponse:
    """``PUT /api/partner/sub-account/{id}/warehouse {"url": …}``: this customer's database on a
    PostgreSQL server of its own (checked first; moved there if it is elsewhere). The URL is kept
    encrypted and never shown again."""
    account = await _partners_sub_account(request)
    url = (await parse_body(request, OwnWarehouseRequest)).url
    svc = services(request)
    placed = await bring_own_server(svc.warehouse, svc.vault, account.id, url)
    logger.info("sub-account %s now has its own warehouse server %s", account.id, placed["server"])
    return JSONResponse(placed, headers={"Cache-Control": "no-store"})


async def delete_sub_account(request: Request) -> Response:
    """Delete a sub-account: its connections, runs, scripts and query tables, then its database and
    every role of it."""
    account = await _partners_sub_account(request)
    await services(request).partners.delete_sub_account(account)
    return Response(status_code=204)


def routes() -> list[BaseRoute]:
    return [
        *api_route("/api/table/", create_table, methods=["POST"]),
        *api_route("/table/", create_table, methods=["POST"], name="create_table_alias"),
        *api_route("/api/table/{table_id:int}/", get_table, methods=["GET"]),
        *api_route("/api/table/{table_id:int}/", update_table, methods=["PATCH"], name="update_table"),
        *api_route("/api/table/{table_id:int}/", delete_table, methods=["DELETE"], name="delete_table"),
        *api_route("/api/database/query/", run_query, methods=["POST"]),
        *api_route(
            "/api/partner/sub-account/{account_id:int}/database-credentials", database_credentials, methods=["POST"]
        ),
        *api_route("/api/partner/sub-account/{account_id:int}/export", export_sub_account, methods=["GET"]),
        *api_route("/api/partner/sub-account/{account_id:int}/warehouse", set_own_warehouse, methods=["PUT"]),
        *api_route("/api/partner/sub-account/{account_id:int}", delete_sub_account, methods=["DELETE"]),
    ]
