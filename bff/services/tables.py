"""The customer's tables as the read API shows them: synced tables and query tables listed
together, one found by id for one sub-account only, and its rows read with the rows API's query."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..query_tables import QueryTable
from ..store import SubAccount
from ..warehouse import WarehouseTable
from ..warehouse_reader import SYNCED_META, ReadField, parse_row_query, read_synced_rows, synced_fields

if TYPE_CHECKING:
    from . import Services

Table = WarehouseTable | QueryTable


class Tables:
    def __init__(self, services: Services) -> None:
        self.services = services

    async def listed(self, account: SubAccount) -> list[dict[str, Any]]:
        """Every table of the sub-account in its public shape: synced ones, then query tables
        (one whose query broke, say its connection went, is listed with its error)."""
        svc = self.services
        tables = await svc.warehouse.list_tables(account.id)
        listed = [table.public_dict(database_id=account.id, counts=counts) for table, counts in tables]
        for query_table, counts, error in await svc.query_tables.list_tables(account.id):
            listed.append(query_table.public_dict(counts=counts, error=error))
        return listed

    async def find(self, sub_account_id: int, table_id: int) -> Table | None:
        """A synced or query table by id, only if it is this sub-account's (in the control database,
        before any warehouse table is opened)."""
        table: Table | None = await self.services.warehouse.get_table(sub_account_id, table_id)
        if table is None:
            table = await self.services.query_tables.get(sub_account_id, table_id)
        return table

    async def read_rows(
        self, table: Table, params: Iterable[tuple[str, str]], *, offset: int, limit: int
    ) -> tuple[tuple[ReadField, ...], int, list[dict[str, Any]]]:
        """A page of the table's rows selected by the rows API's ``params`` (filters, search,
        order): its fields, how many rows match, and the rows keyed by field name."""
        if isinstance(table, QueryTable):
            query = parse_row_query(params, table.fields, has_synced_at=table.has_synced_at)
            count, rows = await self.services.query_tables.read_rows(table, query, offset=offset, limit=limit)
            return table.fields, count, rows
        fields = synced_fields(table)
        query = parse_row_query(params, fields, meta=SYNCED_META)
        count, rows = await read_synced_rows(self.services.warehouse.servers, table, query, offset=offset, limit=limit)
        return fields, count, rows
