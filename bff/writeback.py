"""Writeback services: a writer per request, idempotency keys, and coalesced refreshes.

One :class:`Writeback` per app (created on first use, kept in
``app.state.writeback``). ``refresh=true`` writes call
:meth:`RefreshQueue.request`; the queue waits until the writes of a connection
have paused for ``REFRESH_DELAY`` seconds (and any running sync has finished),
then asks the sync runner for ONE run of every table those writes touched: five
writes in a row give one sync, not five.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psycopg
from starlette.requests import Request

from . import connections as rt
from .connectors import RetryPolicy
from .connectors.writer import Writer
from .idempotency import IdempotencyStore
from .store import Connection, RunAlreadyActive, SubAccount
from .store.idempotency import PgIdempotencyStore
from .sync import ConnectionNotReady, UnknownTables

if TYPE_CHECKING:
    from .services import Services

__all__ = ["LOG_FLUSH_DELAY", "REFRESH_DELAY", "LogBuffer", "RefreshQueue", "Writeback", "writeback_for"]

logger = logging.getLogger("bff.writeback")

REFRESH_DELAY = 0.5  # seconds without writes before the refresh sync is queued
LOG_FLUSH_DELAY = 0.25  # seconds a write's log line may wait to be stored with others in one transaction
RETRY_WAIT = 0.2  # seconds between attempts while the connection's previous run is finishing


class RefreshQueue:
    """Coalesces ``refresh=true`` writes into one sync per connection."""

    def __init__(self, services: Services, *, delay: float = REFRESH_DELAY) -> None:
        self.services = services
        self.delay = delay
        self._tables: dict[int, set[str] | None] = {}  # connection id → tables (None = all)
        self._last: dict[int, float] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self.queued_runs: list[int] = []  # run ids this queue asked for (for tests and logs)

    def request(self, account: SubAccount, connection: Connection, table: str | None) -> None:
        tables = self._tables.get(connection.id, set())
        if table is None or tables is None:
            self._tables[connection.id] = None
        else:
            tables.add(table)
            self._tables[connection.id] = tables
        self._last[connection.id] = time.monotonic()
        task = self._tasks.get(connection.id)
        if task is None or task.done():
            self._tasks[connection.id] = asyncio.create_task(
                self._run(account, connection.id), name=f"refresh-{connection.id}"
            )

    async def idle(self) -> None:
        """Wait until every pending refresh has been handed to the sync runner."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    async def _run(self, account: SubAccount, connection_id: int) -> None:
        try:
            while (wait := self._last[connection_id] + self.delay - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            runner = self.services.sync
            while True:
                connection = await self.services.store.get_connection(account.id, connection_id)
                if connection is None:
                    return
                tables = self._tables.get(connection_id)
                try:
                    run = await runner.request_sync(account, connection, sorted(tables) if tables else None)
                except RunAlreadyActive:
                    # A run started before these writes may not see them: wait for it, then queue ours.
                    await runner.wait(connection_id, timeout=RETRY_WAIT * 50)
                    await asyncio.sleep(RETRY_WAIT)
                    continue
                except (ConnectionNotReady, UnknownTables) as exc:  # not ready, disabled: the write itself succeeded
                    logger.info("refresh of connection %s not queued: %s", connection_id, type(exc).__name__)
                    return
                self.queued_runs.append(run.id)
                return
        finally:
            self._tables.pop(connection_id, None)
            self._last.pop(connection_id, None)
            self._tasks.pop(connection_id, None)

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


class LogBuffer:
    """Connection log lines of writes, stored in batches off the request path.

    A store write costs milliseconds (a transaction, an fsync); a write's answer
    should not wait for its log line. Lines are kept in order and stored within
    ``LOG_FLUSH_DELAY`` seconds; :meth:`flush` stores them now.
    """

    def __init__(self, services: Services, *, delay: float = LOG_FLUSH_DELAY) -> None:
        self.services = services
        self.delay = delay
        self._pending: list[tuple[int, list[tuple[str, str]]]] = []
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def add(self, connection_id: int, lines: list[tuple[str, str]]) -> None:
        self._pending.append((connection_id, lines))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._later(), name="writeback-log-flush")

    async def _later(self) -> None:
        await asyncio.sleep(self.delay)
        await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            batch, self._pending = self._pending, []
            by_connection: dict[int, list[tuple[str, str]]] = {}
            for connection_id, lines in batch:
                by_connection.setdefault(connection_id, []).extend(lines)
            for connection_id, lines in by_connection.items():
                try:
                    await self.services.store.add_logs(connection_id, lines)
                except psycopg.Error as exc:  # the database is having a moment: a lost log line, not a lost write
                    logger.warning(
                        "could not store writeback log lines of connection %s: %s", connection_id, type(exc).__name__
                    )


class Writeback:
    """Per-app state of the writeback API."""

    def __init__(self, services: Services, *, idempotency: IdempotencyStore | None = None) -> None:
        self.services = services
        self.refresh = RefreshQueue(services)
        self.log = LogBuffer(services)
        self.idempotency: IdempotencyStore = idempotency or PgIdempotencyStore(services.store, clock=services.clock)

    def writer(self, connection: Connection, *, short: bool, log: Callable[[str, str], None]) -> Writer:
        policy = RetryPolicy.short() if short else RetryPolicy.default()
        return Writer(rt.session_for_connection(self.services, connection, log=log, policy=policy))


def writeback_for(request: Request) -> Writeback:
    """The app's :class:`Writeback` (made on first use)."""
    found: Any = getattr(request.app.state, "writeback", None)
    if found is None:
        found = request.app.state.writeback = Writeback(request.app.state.services)
    assert isinstance(found, Writeback)
    return found
