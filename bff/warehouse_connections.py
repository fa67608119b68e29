"""Connections to a customer's database logged in as one of its roles (customer SQL), and the
refusals of the warehouse's connections: ``429 too_many_queries``, ``503 database_busy`` and, while
``bff warehouse move`` runs, ``503 warehouse_moving`` (a long wait for a sync). Split from
:mod:`bff.warehouse_servers`, which makes and keeps these."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import dict_row

from .connectors.retry import LongWait
from .errors import BFFError

IDLE_SECONDS = 60.0  # connections unused this long are closed


class TooManyQueries(BFFError):
    """This customer already has as many queries running as the BFF opens for one customer."""

    status = 429
    code = "too_many_queries"

    def __init__(self) -> None:
        super().__init__(
            "Too many queries of this customer are running at once; retry when one has finished.",
            headers={"Retry-After": "1"},
        )


class DatabaseBusy(BFFError):
    """PostgreSQL refused another connection (the customer role's connection limit, or the server's)."""

    status = 503
    code = "database_busy"

    def __init__(self) -> None:
        super().__init__(
            "The database has no connection free for this customer's query; retry shortly.",
            headers={"Retry-After": "1"},
        )


MOVING_RETRY_SECONDS = 3.0


class WarehouseMoving(LongWait, BFFError):
    """The customer's database is being moved to another server (``bff warehouse move``): its
    writes are refused until the move is over. An API request is answered ``503 warehouse_moving``;
    a sync waits (a long wait: it saves its place and goes on from its cursors once moved)."""

    status = 503
    code = "warehouse_moving"

    def __init__(self) -> None:
        reason = "the customer's database is being moved to another server"
        Exception.__init__(self, reason)
        self.delay, self.reason = MOVING_RETRY_SECONDS, reason
        self.detail = "This customer's database is being moved to another server; retry in a few seconds."
        self.errors, self.extra = None, {}
        self.headers = {"Retry-After": str(int(MOVING_RETRY_SECONDS))}


def refused_connection(exc: psycopg.OperationalError) -> bool:
    text = str(exc)
    return "too many connections" in text or "remaining connection slots" in text


class CustomerConnections:
    """Connections logged in as one customer role, reused: at most ``cap`` at once, idle ones
    closed after :data:`IDLE_SECONDS`. A connection goes back only when it is idle, after
    ``DISCARD ALL`` (what one query set in its session never reaches the next)."""

    def __init__(
        self,
        conninfo: str,
        user: str,
        *,
        cap: int,
        wait_seconds: float,
        if_moving: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._conninfo = conninfo
        self._if_moving = if_moving
        self._user = user
        self._idle: collections.deque[tuple[AsyncConnection[Any], float]] = collections.deque()
        self.cap = cap
        self._slots = asyncio.Semaphore(cap)
        self.wait_seconds = wait_seconds
        self.out = 0  # connections in use now
        self.last_used = time.monotonic()

    def limit(self, cap: int, wait_seconds: float) -> None:
        """Change the cap (connections already out give their slot back to the old one)."""
        if cap != self.cap:
            self.cap, self._slots = cap, asyncio.Semaphore(cap)
        self.wait_seconds = wait_seconds

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        slots = self._slots
        try:
            await asyncio.wait_for(slots.acquire(), timeout=self.wait_seconds)
        except TimeoutError:
            raise TooManyQueries() from None
        conn: AsyncConnection[Any] | None = None
        self.out += 1
        try:
            conn = await self._take()
            yield conn
        except BaseException as exc:
            if conn is not None:
                await conn.close()
                conn = None
            if isinstance(exc, psycopg.OperationalError) and self._if_moving is not None:
                await self._if_moving()  # refused or ended by a move: 503 warehouse_moving
            raise
        finally:
            self.out -= 1
            self.last_used = time.monotonic()
            if conn is not None:
                await self._give_back(conn)
            slots.release()

    async def _take(self) -> AsyncConnection[Any]:
        now = time.monotonic()
        while self._idle:
            conn, since = self._idle.pop()
            if not conn.closed and now - since < IDLE_SECONDS:
                return conn
            await conn.close()
        try:
            conn = await AsyncConnection.connect(self._conninfo, autocommit=True, row_factory=dict_row)
        except psycopg.OperationalError as exc:
            if refused_connection(exc):
                raise DatabaseBusy() from None  # the role's CONNECTION LIMIT, or the server's
            raise
        cur = await conn.execute("SELECT session_user AS who, current_user AS acting")
        row = await cur.fetchone()
        # The whole design rests on this: customer SQL never runs in a superuser's session.
        if row != {"who": self._user, "acting": self._user}:
            await conn.close()
            raise RuntimeError(f"refusing to run customer SQL: the session is {row}, not {self._user!r}")
        return conn

    async def _give_back(self, conn: AsyncConnection[Any]) -> None:
        if conn.closed or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            await conn.close()
            return
        try:
            await conn.execute("DISCARD ALL")
        except psycopg.Error:
            await conn.close()
            return
        self._idle.append((conn, time.monotonic()))

    async def close(self) -> None:
        while self._idle:
            conn, _ = self._idle.pop()
            await conn.close()


__all__ = [
    "IDLE_SECONDS",
    "CustomerConnections",
    "DatabaseBusy",
    "TooManyQueries",
    "WarehouseMoving",
    "refused_connection",
]
