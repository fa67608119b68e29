"""The ``connections`` table: a sub-account's connections, their secrets (sealed), health
and schedule. Health changes go through :mod:`bff.lifecycle`, which calls :meth:`ConnectionStore.update`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from psycopg.types.json import Jsonb

from .base import UNSET, Row, Unset, assignments, build, given, insert_logs

if TYPE_CHECKING:
    from . import Store

__all__ = ["CONNECTION_COLUMNS", "Connection", "ConnectionStore", "HealthChange", "guarded", "health_change"]

# Seconds between scheduled syncs of a new connection (DESIGN §10; the column default, migration 0005).
DEFAULT_SYNC_FREQUENCY = 21600


@dataclasses.dataclass(frozen=True, kw_only=True)
class Connection:
    id: int
    sub_account_id: int
    connector: str
    name: str
    health_status: str
    detail: str | None
    config: dict[str, Any]
    secrets: bytes | None  # AES-GCM ciphertext; see crypto.Vault
    created_at: float
    updated_at: float
    # Schedule (DESIGN §10): seconds between syncs (None = on demand), per-table overrides,
    # when each table is due, and the earliest of those.
    sync_frequency: int | None = DEFAULT_SYNC_FREQUENCY
    table_frequencies: dict[str, int] = dataclasses.field(default_factory=dict)
    table_due: dict[str, float] = dataclasses.field(default_factory=dict)
    next_sync_at: float | None = None
    # The tables (streams) chosen to sync; None: every one the connector has.
    selected_tables: list[str] | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class HealthChange:
    """A connection's health moved from one status to another (what webhooks and the scheduler hear)."""

    connection_id: int
    sub_account_id: int
    old: str
    new: str
    detail: str | None


CONNECTION_COLUMNS = (
    "id, sub_account_id, connector, name, health_status, detail, config, secrets, created_at, updated_at,"
    " sync_frequency, table_frequencies, table_due, next_sync_at, selected_tables"
)


def health_change(row: Row | None) -> HealthChange | None:
    if row is None:
        return None
    return HealthChange(
        connection_id=int(row["id"]),
        sub_account_id=int(row["sub_account_id"]),
        old=str(row["old"]),
        new=str(row["health_status"]),
        detail=row["detail"],
    )


def guarded(assignment: str) -> str:
    """``column = value`` → ``column = value`` only while the locked row's old health is one of
    ``%(health_from)s`` (a transition's source states), else the column keeps its value."""
    if not assignment.startswith(("health_status ", "detail ")):
        return assignment
    column, value = assignment.split(" = ", 1)
    return f"{column} = CASE WHEN o.old = ANY(%(health_from)s) THEN {value} ELSE c.{column} END"


class ConnectionStore:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def create(
        self,
        sub_account_id: int,
        connector: str,
        name: str,
        health_status: str,
        config: Mapping[str, Any] | None = None,
        *,
        seal: Callable[[int], bytes] | None = None,
    ) -> Connection:
        """Insert a connection; ``seal(id)`` encrypts its secrets in the same transaction
        (the id is the ciphertext's associated data), so no row exists without them."""
        now = self._store.now()
        async with self._store.transaction() as conn:
            cur = await conn.execute(
                "INSERT INTO connections (sub_account_id, connector, name, health_status, config, created_at, updated_at)"
                f" VALUES (%(s)s, %(c)s, %(n)s, %(h)s, %(cfg)s, %(now)s, %(now)s) RETURNING {CONNECTION_COLUMNS}",
                {
                    "s": sub_account_id,
                    "c": connector,
                    "n": name,
                    "h": health_status,
                    "cfg": Jsonb(dict(config or {})),
                    "now": now,
                },
            )
            row = await cur.fetchone()
            assert row is not None
            if seal is not None:
                cur = await conn.execute(
                    f"UPDATE connections SET secrets = %s WHERE id = %s RETURNING {CONNECTION_COLUMNS}",
                    (seal(int(row["id"])), row["id"]),
                )
                row = await cur.fetchone()
                assert row is not None
        return Connection(**row)

    async def get(self, sub_account_id: int, connection_id: int) -> Connection | None:
        """A connection, only if it belongs to this sub-account."""
        return build(
            Connection,
            await self._store._one(
                f"SELECT {CONNECTION_COLUMNS} FROM connections WHERE id = %s AND sub_account_id = %s",
                (connection_id, sub_account_id),
            ),
        )

    async def get_by_id(self, connection_id: int) -> Connection | None:
        """Internal use only (callbacks, the sync runner): no tenant check."""
        return build(
            Connection,
            await self._store._one(f"SELECT {CONNECTION_COLUMNS} FROM connections WHERE id = %s", (connection_id,)),
        )

    async def list_for(self, sub_account_id: int) -> list[Connection]:
        rows = await self._store._all(
            f"SELECT {CONNECTION_COLUMNS} FROM connections WHERE sub_account_id = %s ORDER BY id", (sub_account_id,)
        )
        return [Connection(**row) for row in rows]

    async def update(
        self,
        connection_id: int,
        *,
        health_status: str | None = None,
        detail: str | None | Unset = UNSET,
        config: Mapping[str, Any] | None = None,
        secrets: bytes | None = None,
        name: str | None = None,
        sync_frequency: int | None | Unset = UNSET,
        table_frequencies: Mapping[str, int] | None = None,
        selected_tables: Sequence[str] | None | Unset = UNSET,
        health_from: Sequence[str] | None = None,
        logs: Sequence[tuple[str, str]] = (),
    ) -> HealthChange | None:
        """Change a connection's columns (and add ``logs``) in one transaction; its health before
        and after (:func:`bff.lifecycle.transition` tells the events), or None when it is gone. With ``health_from`` (see :mod:`bff.lifecycle`), the
        health and detail change only if the locked row's health is one of those states."""
        sets, params = assignments(
            {
                "health_status": given(health_status),
                "detail": detail,
                "config": given(config),
                "secrets": given(secrets),
                "name": given(name),
                "sync_frequency": sync_frequency,
                "table_frequencies": given(table_frequencies),
                "selected_tables": selected_tables
                if isinstance(selected_tables, Unset) or selected_tables is None
                else Jsonb(list(selected_tables)),
            }
        )
        if health_from is not None:
            params["health_from"] = list(health_from)
            sets = [guarded(assignment) for assignment in sets]
        sets.insert(0, "updated_at = %(now)s")
        params.update(id=connection_id, now=self._store.now())
        # The old status comes from the locked row, so concurrent updates each see their own "from".
        async with self._store.transaction() as conn:
            cur = await conn.execute(
                f"UPDATE connections c SET {', '.join(sets)}"
                " FROM (SELECT id, health_status AS old FROM connections WHERE id = %(id)s FOR UPDATE) o"
                " WHERE c.id = o.id RETURNING c.id, c.sub_account_id, o.old, c.health_status, c.detail",
                params,
            )
            row = await cur.fetchone()
            if row is not None:
                await insert_logs(conn, connection_id, logs, None, now=params["now"])
        return health_change(row)

    async def set_schedule(self, connection_id: int, table_due: Mapping[str, float]) -> None:
        """Store when each table is due next; ``next_sync_at`` becomes the earliest (None: never)."""
        due = {k: float(v) for k, v in table_due.items()}
        await self._store._one(
            "UPDATE connections SET table_due = %s, next_sync_at = %s WHERE id = %s RETURNING id",
            (Jsonb(due), min(due.values()) if due else None, connection_id),
        )

    async def list_due(self, now: float, *, limit: int = 500) -> list[Connection]:
        """Connections whose earliest table is due at ``now``, the longest-waiting first."""
        rows = await self._store._all(
            f"SELECT {CONNECTION_COLUMNS} FROM connections WHERE next_sync_at <= %s ORDER BY next_sync_at LIMIT %s",
            (now, limit),
        )
        return [Connection(**row) for row in rows]

    async def claim_schedule(self, connection: Connection, table_due: Mapping[str, float]) -> bool:
        """Move a due connection's schedule on, only if nobody else did since it was read
        (compare-and-set): of two schedulers that saw it due, exactly one gets True."""
        due = {k: float(v) for k, v in table_due.items()}
        row = await self._store._one(
            "UPDATE connections SET table_due = %s, next_sync_at = %s"
            " WHERE id = %s AND next_sync_at = %s AND table_due = %s RETURNING id",
            (
                Jsonb(due),
                min(due.values()) if due else None,
                connection.id,
                connection.next_sync_at,
                Jsonb(connection.table_due),
            ),
        )
        return row is not None

    async def delete(self, sub_account_id: int, connection_id: int) -> bool:
        row = await self._store._one(
            "DELETE FROM connections WHERE id = %s AND sub_account_id = %s RETURNING id",
            (connection_id, sub_account_id),
        )
        return row is not None
