"""The store: the control database, one repository per aggregate over one pool.

PostgreSQL through psycopg 3 (async) and a connection pool; rows come back as dicts and are
turned into frozen dataclasses by column name (never by position). :class:`Store` holds the
pool, transactions and the ``meta`` key/values; the SQL lives in the repositories, one module
per aggregate: ``partners.py`` (partners, their origins, the token caller's joined read),
``sub_accounts.py``, ``connections.py``, ``runs.py`` (runs and log lines), ``oauth_flows.py``,
``throttles.py``, ``idempotency.py``, ``refresh.py``, ``webhooks.py`` and ``scripts.py``. The
customers' placements and connection schemas are in ``placements.py``; the warehouse index
(``warehouse_tables``, ``warehouse_fields``) and the query tables' rows are still written by
``bff/warehouse.py`` and ``bff/query_tables.py`` themselves. How a row looks
in an API answer is decided in ``bff/shapes.py``, not here. Schema changes are Alembic
migrations in ``bff/store/migrations`` (``bff db upgrade``; ``serve``, ``worker`` and ``demo``
apply them on start).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from .base import UNSET, Row, Unset, iso
from .connections import DEFAULT_SYNC_FREQUENCY, Connection, ConnectionStore, HealthChange
from .migrate import migrate
from .oauth_flows import OAuthFlow
from .partners import Partner, PartnerStore
from .runs import ACTIVE_RUN_STATUSES, LogLine, Run, RunAlreadyActive, RunStore
from .sub_accounts import SUB_ACCOUNT_FIELDS, ExternalIdTaken, SubAccount, SubAccountStore

__all__ = [
    "ACTIVE_RUN_STATUSES",
    "DEFAULT_SYNC_FREQUENCY",
    "SUB_ACCOUNT_FIELDS",
    "UNSET",
    "Connection",
    "ExternalIdTaken",
    "HealthChange",
    "LogLine",
    "OAuthFlow",
    "Partner",
    "Run",
    "RunAlreadyActive",
    "Store",
    "SubAccount",
    "Unset",
    "iso",
    "migrate",
]


class Store:
    """Async access to the control database: the pool and transactions, and one repository per
    aggregate on it (``store.partners``, ``store.sub_accounts``, ``store.connections``,
    ``store.runs``). One instance per process."""

    def __init__(self, url: str, *, clock: Callable[[], float] = time.time, max_connections: int = 10) -> None:
        self.url = url
        self._clock = clock
        self._max_connections = max_connections
        self._pool: AsyncConnectionPool[Any] | None = None
        self.partners = PartnerStore(self)
        self.sub_accounts = SubAccountStore(self)
        self.connections = ConnectionStore(self)
        self.runs = RunStore(self)

    # -- plumbing ---------------------------------------------------------------------

    async def open(self) -> None:
        from ..db import open_pool

        self._pool = await open_pool(self.url, max_size=self._max_connections, name="bff-store")

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def pool(self) -> AsyncConnectionPool[Any]:
        assert self._pool is not None, "Store.open() was not called"
        return self._pool

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        """A pooled autocommit connection (one statement = one transaction)."""
        async with self.pool.connection() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection[Any]]:
        """A pooled connection inside one transaction, committed on exit."""
        async with self.pool.connection() as conn, conn.transaction():
            yield conn

    async def _one(self, query: str, params: Mapping[str, Any] | Sequence[Any] = ()) -> Row | None:
        async with self.pool.connection() as conn:
            cur = await conn.execute(query, params)
            row: Row | None = await cur.fetchone()
            return row

    async def _all(self, query: str, params: Mapping[str, Any] | Sequence[Any] = ()) -> list[Row]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(query, params)
            return list(await cur.fetchall())

    def now(self) -> float:
        return float(self._clock())

    # -- meta ---------------------------------------------------------------------------

    async def get_meta(self, key: str) -> str | None:
        row = await self._one("SELECT value FROM meta WHERE key = %(k)s", {"k": key})
        return str(row["value"]) if row else None

    async def set_meta_once(self, key: str, value: str) -> str:
        """Store ``value`` unless the key exists; the value that is stored (first writer wins)."""
        row = await self._one(
            "WITH ins AS (INSERT INTO meta (key, value) VALUES (%(k)s, %(v)s) ON CONFLICT (key) DO NOTHING RETURNING value)"
            " SELECT value FROM ins UNION ALL SELECT value FROM meta WHERE key = %(k)s LIMIT 1",
            {"k": key, "v": value},
        )
        assert row is not None
        return str(row["value"])
