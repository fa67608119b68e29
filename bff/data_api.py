"""The read API over a sub-account's warehouse (the source document's §2 back-end flow).

``GET /api/applications/`` lists the sub-account's one warehouse ("application"),
whose id is the database id; ``GET /api/database/tables/database/{id}/`` its
tables; ``GET /api/database/rows/table/{id}/`` a table's rows, paged. Rows are
keyed by field id (``field_<id>``) unless ``user_field_names`` is true, then by
field name; ``_synced_at`` and ``_run_id`` come with every row. Another
sub-account's database or table ids answer exactly like ids that do not exist.

Back-end only: identity tokens, never the browser's integrate token (``403 token_not_allowed``),
and a limited number of reads per token and minute (``429 rate_limited``).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute

from .auth import require_identity, services
from .errors import not_found
from .http import Pagination, api_route, query_bool
from .store import SubAccount
from .warehouse import Warehouse, WarehouseTable

DEFAULT_ROWS_PAGE = 100


def warehouse(request: Request) -> Warehouse:
    return services(request).warehouse


def database_dict(account: SubAccount) -> dict[str, Any]:
    return {
        "id": account.id,
        "name": "Warehouse",
        "type": "warehouse",
        "account_id": account.id,
        "external_id": account.external_id,
    }


async def table_dicts(request: Request, account: SubAccount) -> list[dict[str, Any]]:
    tables = await warehouse(request).list_tables(account.id)
    return [table.public_dict(database_id=account.id, row_count=count) for table, count in tables]


async def list_applications(request: Request) -> JSONResponse:
    """The sub-account's warehouse; its tables too unless ``exclude_tables=1``."""
    account = await require_identity(request)
    database = database_dict(account)
    if not query_bool(request, "exclude_tables", default=False):
        database["tables"] = await table_dicts(request, account)
    return JSONResponse({"count": 1, "next": None, "previous": None, "results": [database]})


async def list_tables(request: Request) -> JSONResponse:
    """The tables of a warehouse: ``id, name, connection, row_count, fields``."""
    account = await require_identity(request)
    if request.path_params["database_id"] != account.id:
        raise not_found("No such database.")
    page = Pagination(request)
    tables = await table_dicts(request, account)
    return JSONResponse(page.envelope(len(tables), tables[page.offset : page.offset + page.limit]))


async def _own_table(request: Request, account: SubAccount) -> WarehouseTable:
    table_id = request.path_params["table_id"]
    # The control database says whose table it is before any warehouse file is opened.
    if await warehouse(request).table_owner(table_id) != account.id:
        raise not_found("No such table.")
    table = await warehouse(request).get_table(account.id, table_id)
    if table is None:
        raise not_found("No such table.")
    return table


async def list_rows(request: Request) -> JSONResponse:
    """A table's rows in a stable order, paged; ``user_field_names=true`` keys them by field name."""
    account = await require_identity(request)
    table = await _own_table(request, account)
    page = Pagination(request, default_size=DEFAULT_ROWS_PAGE)
    by_name = query_bool(request, "user_field_names", default=False)
    count, rows = await warehouse(request).read_rows(account.id, table, offset=page.offset, limit=page.limit)
    if not by_name:
        keys = {f.name: f"field_{f.id}" for f in table.fields}
        rows = [{keys.get(k, k): v for k, v in row.items()} for row in rows]
    return JSONResponse(page.envelope(count, rows))


def routes() -> list[BaseRoute]:
    return [
        *api_route("/api/applications/", list_applications, methods=["GET"]),
        *api_route("/api/database/tables/database/{database_id:int}/", list_tables, methods=["GET"]),
        *api_route("/api/database/rows/table/{table_id:int}/", list_rows, methods=["GET"]),
    ]
