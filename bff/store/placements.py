"""The ``warehouse_placements`` and ``warehouse_schemas`` tables (migration 0014): which server and
database each customer's warehouse is on, and the schema of each connection in it. The SQL behind
:mod:`bff.warehouse_servers` and :mod:`bff.warehouse`."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from psycopg import AsyncConnection

if TYPE_CHECKING:
    from . import Store

__all__ = ["Placement", "PlacementStore"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Placement:
    """Where one customer's database is: a server (named as :func:`bff.warehouse_servers.server_name`
    names it) and the database's name (``wh_<random>``, also the name of its owner role)."""

    sub_account_id: int
    server: str
    database: str
    ready: bool = True


_COLUMNS = "sub_account_id, server, database, ready"


class PlacementStore:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def get(self, sub_account_id: int) -> Placement | None:
        row = await self._store._one(
            f"SELECT {_COLUMNS} FROM warehouse_placements WHERE sub_account_id = %s", (sub_account_id,)
        )
        return Placement(**row) if row else None

    async def locked(self, conn: AsyncConnection[Any], sub_account_id: int) -> Placement | None:
        """The placement, inside ``conn``'s transaction, which from here on is the only one that may
        place this customer (a transaction-level lock in the control database, which no customer
        login can reach)."""
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('bff.placement'), %s::int)", (sub_account_id,))
        cur = await conn.execute(
            f"SELECT {_COLUMNS} FROM warehouse_placements WHERE sub_account_id = %s", (sub_account_id,)
        )
        row = await cur.fetchone()
        return Placement(**row) if row else None

    async def insert(self, conn: AsyncConnection[Any], placement: Placement, *, if_absent: bool = False) -> None:
        """``if_absent``: a placement another process recorded meanwhile is kept (nothing inserted)."""
        await conn.execute(
            "INSERT INTO warehouse_placements (sub_account_id, server, database, ready, created_at)"
            " VALUES (%s, %s, %s, %s, %s)" + (" ON CONFLICT (sub_account_id) DO NOTHING" if if_absent else ""),
            (placement.sub_account_id, placement.server, placement.database, placement.ready, self._store.now()),
        )

    async def set_ready(self, sub_account_id: int, *, server: str | None = None) -> None:
        await self._store._one(
            "UPDATE warehouse_placements SET ready = TRUE, server = COALESCE(%s, server)"
            " WHERE sub_account_id = %s RETURNING NULL AS done",
            (server, sub_account_id),
        )

    # -- moves (bff warehouse move) ---------------------------------------------------------------

    async def moving_to(self, sub_account_id: int) -> tuple[Placement | None, str | None]:
        """The placement and the server it is being moved to (None when no move is under way)."""
        row = await self._store._one(
            f"SELECT {_COLUMNS}, moving_to FROM warehouse_placements WHERE sub_account_id = %s", (sub_account_id,)
        )
        if row is None:
            return None, None
        target = row.pop("moving_to")
        return Placement(**row), target

    async def start_move(self, sub_account_id: int, server: str) -> None:
        await self._store._one(
            "UPDATE warehouse_placements SET moving_to = %s WHERE sub_account_id = %s RETURNING NULL AS done",
            (server, sub_account_id),
        )

    async def end_move(self, sub_account_id: int, *, server: str | None = None) -> None:
        """The move is over: on ``server`` when it succeeded (one statement: every process sees the
        customer on one server or the other), where it was when it did not."""
        await self._store._one(
            "UPDATE warehouse_placements SET moving_to = NULL, server = COALESCE(%s, server)"
            " WHERE sub_account_id = %s RETURNING NULL AS done",
            (server, sub_account_id),
        )

    async def delete(self, sub_account_id: int) -> None:
        await self._store._one(
            "DELETE FROM warehouse_placements WHERE sub_account_id = %s RETURNING NULL AS gone", (sub_account_id,)
        )
        await self._store._one(
            "DELETE FROM warehouse_schemas WHERE sub_account_id = %s RETURNING NULL AS gone", (sub_account_id,)
        )

    async def customers_per_server(self, conn: AsyncConnection[Any] | None = None) -> dict[str, int]:
        statement = "SELECT server, COUNT(*) AS n FROM warehouse_placements GROUP BY server"
        if conn is None:
            rows = await self._store._all(statement)
        else:
            rows = await (await conn.execute(statement)).fetchall()
        return {str(r["server"]): int(r["n"]) for r in rows}

    async def all(self) -> list[Placement]:
        rows = await self._store._all(f"SELECT {_COLUMNS} FROM warehouse_placements ORDER BY sub_account_id")
        return [Placement(**r) for r in rows]

    # -- connection schemas ------------------------------------------------------------------------

    async def schema_of(self, conn: AsyncConnection[Any], connection_id: int) -> str | None:
        cur = await conn.execute("SELECT name FROM warehouse_schemas WHERE connection_id = %s", (connection_id,))
        row = await cur.fetchone()
        return str(row["name"]) if row else None

    async def schema_names(self, conn: AsyncConnection[Any], sub_account_id: int) -> set[str]:
        cur = await conn.execute("SELECT name FROM warehouse_schemas WHERE sub_account_id = %s", (sub_account_id,))
        return {str(r["name"]) for r in await cur.fetchall()}

    async def add_schema(self, conn: AsyncConnection[Any], sub_account_id: int, connection_id: int, name: str) -> None:
        await conn.execute(
            "INSERT INTO warehouse_schemas (connection_id, sub_account_id, name) VALUES (%s, %s, %s)",
            (connection_id, sub_account_id, name),
        )

    async def rename_schema(self, conn: AsyncConnection[Any], connection_id: int, name: str) -> None:
        await conn.execute("UPDATE warehouse_schemas SET name = %s WHERE connection_id = %s", (name, connection_id))

    async def forget_schema(self, conn: AsyncConnection[Any], connection_id: int) -> str | None:
        cur = await conn.execute(
            "DELETE FROM warehouse_schemas WHERE connection_id = %s RETURNING name", (connection_id,)
        )
        row = await cur.fetchone()
        return str(row["name"]) if row else None
