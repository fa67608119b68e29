"""The read API over a sub-account's warehouse (the source document's §2 back-end flow).

``GET /api/applications/`` lists the sub-account's one warehouse ("application"),
whose id is the database id; ``GET /api/database/tables/database/{id}/`` its
tables (synced ones and query tables); ``GET /api/database/rows/table/{id}/`` a
table's rows, paged, with the filters of :mod:`bff.warehouse_reader`. Rows are
keyed by field id (``field_<id>``) unless ``user_field_names`` is true, then by
field name; ``_synced_at``, ``_run_id`` and ``_deleted_at`` come with every synced row. Another
sub-account's database or table ids answer exactly like ids that do not exist.

Back-end only: identity tokens, never the browser's integrate token (``403 token_not_allowed``),
and a limited number of reads per token and minute (``429 rate_limited``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute

from ..auth import require_identity, services
from ..contract.queries import ApplicationsQuery, RowsQuery
from ..errors import not_found, validation_error
from ..http import api_route, parse_query
from ..store import SubAccount
from ..tokens import Claims
from .paging import Pagination

DEFAULT_ROWS_PAGE = 100
ROW_QUERY_PARAMS = ("search", "order_by", "updated_since", "include", "exclude")


def database_dict(account: SubAccount) -> dict[str, Any]:
    return {
        "id": account.id,
        "name": "Warehouse",
        "type": "warehouse",
        "account_id": account.id,
        "external_id": account.external_id,
    }


async def list_applications(request: Request) -> JSONResponse:
    """The sub-account's warehouse (one), paged like every list; its tables too unless
    ``exclude_tables=1``."""
    account = await require_identity(request)
    page = Pagination(request)
    databases = [database_dict(account)][page.offset : page.offset + page.limit]
    if databases and not parse_query(request, ApplicationsQuery).exclude_tables:
        databases[0]["tables"] = await services(request).tables.listed(account)
    return JSONResponse(page.envelope(1, databases))


async def list_tables(request: Request) -> JSONResponse:
    """The tables of a warehouse: ``id, name, type, connection, row_count, fields``."""
    account = await require_identity(request)
    if request.path_params["database_id"] != account.id:
        raise not_found("No such database.")
    page = Pagination(request)
    tables = await services(request).tables.listed(account)
    return JSONResponse(page.envelope(len(tables), tables[page.offset : page.offset + page.limit]))


def _table_lookup(request: Request) -> tuple[Callable[[Claims], Awaitable[None]], dict[str, Any]]:
    """Look the path's table up while the token's caller is (see :func:`require_identity`).

    By id AND the verified token's sub-account, in the control database, before any warehouse
    table is opened: another customer's table id finds nothing, exactly like an id that does not
    exist. The result is read only after the caller checks passed.
    """
    found: dict[str, Any] = {}

    async def look_up(claims: Claims) -> None:
        assert claims.sub_account_id is not None
        found["table"] = await services(request).tables.find(claims.sub_account_id, request.path_params["table_id"])

    return look_up, found


# What else the rows API reads: paging and how rows are keyed.
ROW_PAGE_PARAMS = ("page", "page_size", "size", "user_field_names")


def _row_params(request: Request) -> list[tuple[str, str]]:
    """The row-selecting parameters; a parameter the rows API does not know (``&email=x`` where
    ``filter__email__equal=x`` was meant) is a ``400`` naming it, never silently ignored."""
    unknown = sorted(
        {
            key
            for key in request.query_params
            if not key.startswith("filter__") and key not in ROW_QUERY_PARAMS and key not in ROW_PAGE_PARAMS
        }
    )
    if unknown:
        known = ", ".join((*ROW_QUERY_PARAMS, *ROW_PAGE_PARAMS, "filter__<field>__<operator>"))
        raise validation_error(
            {key: f"Unknown parameter; the rows API takes {known}." for key in unknown},
            detail=f"Unknown parameter{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}.",
        )
    return [(k, v) for k, v in request.query_params.multi_items() if k.startswith("filter__") or k in ROW_QUERY_PARAMS]


async def list_rows(request: Request) -> JSONResponse:
    """A table's rows, filtered, ordered and paged; ``user_field_names=true`` keys them by field name."""
    look_up, found = _table_lookup(request)
    await require_identity(request, meanwhile=look_up)
    table = found.get("table")
    if table is None:
        raise not_found("No such table.")
    page = Pagination(request, default_size=DEFAULT_ROWS_PAGE, size_alias="size")
    by_name = bool(parse_query(request, RowsQuery).user_field_names)
    fields, count, rows = await services(request).tables.read_rows(
        table, _row_params(request), offset=page.offset, limit=page.limit
    )
    if not by_name:
        keys = {f.name: f"field_{f.id}" for f in fields}
        rows = [{keys.get(k, k): v for k, v in row.items()} for row in rows]
    return JSONResponse(page.envelope(count, rows))


def routes() -> list[BaseRoute]:
    return [
        *api_route("/api/applications/", list_applications, methods=["GET"]),
        *api_route("/api/database/tables/database/{database_id:int}/", list_tables, methods=["GET"]),
        *api_route("/api/database/rows/table/{table_id:int}/", list_rows, methods=["GET"]),
    ]
