"""Writeback services: a writer per request, idempotency keys, and coalesced refreshes.

One :class:`Writeback` per process (``Services.writeback``). ``refresh=true`` writes call
:meth:`RefreshRequests.request`: the connection's refresh job runs ``REFRESH_DELAY``
seconds after the first of them (and after any running sync has finished) on any
worker, and asks the sync runner for ONE run of every table those writes touched:
five writes in a row, through any number of web processes, give one sync, not five.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import psycopg
from starlette.requests import Request

from .. import connections as rt
from .. import lifecycle
from ..connectors import ConnectorError, CredentialsRejected, RetryPolicy
from ..connectors.writer import Writer
from ..errors import ApiError, connector_error
from ..idempotency import IdempotencyStore, StoredAnswer
from ..lifecycle import Event
from ..store import Connection, RunAlreadyActive
from ..store.idempotency import PgIdempotencyStore
from ..store.refresh import ALL_STREAMS, RefreshRequestStore
from .sync import ConnectionNotReady, UnknownTables

if TYPE_CHECKING:
    from . import Services

__all__ = [
    "LOG_FLUSH_DELAY",
    "REFRESH_DELAY",
    "EngineLog",
    "LogBuffer",
    "RefreshRequests",
    "WriteOutcome",
    "Writeback",
    "writeback_for",
]

logger = logging.getLogger("bff.writeback")

REFRESH_DELAY = 0.5  # seconds from a connection's first refresh=true write to its refresh job
LOG_FLUSH_DELAY = 0.25  # seconds a write's log line may wait to be stored with others in one transaction
RETRY_WAIT = 0.5  # seconds between attempts while the connection's previous run is finishing
IDLE_POLL = 0.05


class RefreshRequests:
    """Coalesces ``refresh=true`` writes into one sync per connection, across every process.

    A write records the table it touched (``refresh_requests``) and defers the connection's
    ``writeback_refresh`` job ``delay`` seconds ahead under a queueing lock: while that job
    waits, further writes from any web process only add their tables. The job (any worker)
    follows a sync already running, re-deferring itself rather than holding a worker slot,
    then takes the recorded tables and asks the sync runner for ONE run of them. Five writes
    in a row give one sync.
    """

    def __init__(self, services: Services, *, delay: float = REFRESH_DELAY) -> None:
        self.services = services
        self.delay = delay
        self.requests = RefreshRequestStore(services.store)

    async def request(self, connection: Connection, table: str | None) -> None:
        await self.requests.add(connection.id, [table or ALL_STREAMS])
        await self.services.queue.defer_refresh(connection.id, at=time.time() + self.delay)

    async def execute(self, connection_id: int) -> None:
        """The body of a ``writeback_refresh`` job."""
        store, queue = self.services.store, self.services.queue
        connection = await store.connections.get_by_id(connection_id)
        if connection is None:
            return  # deleted: its requests went with it
        if await store.runs.active(connection_id) is not None:
            # A sync that started before these writes may not see them: ours follows it.
            await queue.defer_refresh(connection_id, at=time.time() + RETRY_WAIT)
            return
        streams = await self.requests.take(connection_id)
        account = await store.sub_accounts.get_by_id(connection.sub_account_id) if streams else None
        if account is None:
            return
        tables = None if ALL_STREAMS in streams else sorted(streams)
        try:
            await self.services.sync.request_sync(account, connection, tables, trigger="writeback")
        except RunAlreadyActive:  # a sync started meanwhile: put the tables back and follow it
            await self.requests.add(connection_id, streams)
            await queue.defer_refresh(connection_id, at=time.time() + RETRY_WAIT)
        except (ConnectionNotReady, UnknownTables) as exc:  # not ready, disabled: the writes themselves succeeded
            logger.info("refresh of connection %s not queued: %s", connection_id, type(exc).__name__)

    async def idle(self, connection_id: int | None = None, *, timeout: float = 30.0) -> None:
        """Wait until no refresh is waiting (in any process) and its sync has been queued."""
        deadline = time.monotonic() + timeout
        while await self.services.queue.refresh_jobs_pending(connection_id) and time.monotonic() < deadline:
            await asyncio.sleep(IDLE_POLL)


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
                    await self.services.store.runs.add_logs(connection_id, lines)
                except psycopg.Error as exc:  # the database is having a moment: a lost log line, not a lost write
                    logger.warning(
                        "could not store writeback log lines of connection %s: %s", connection_id, type(exc).__name__
                    )


READS = ("get", "search")
# The API's part of a write: the writer call, and the status it answers with (201 created, …).
Action = Callable[[Writer], Awaitable[tuple[int, Any]]]


@dataclasses.dataclass(frozen=True)
class WriteOutcome:
    """What the API answers: status and body; ``replayed`` when an Idempotency-Key replayed it."""

    status: int
    body: Any
    replayed: bool = False


class Writeback:
    """Per-app state of the writeback API, and :meth:`execute`."""

    def __init__(self, services: Services, *, idempotency: IdempotencyStore | None = None) -> None:
        self.services = services
        self.refresh = RefreshRequests(services)
        self.log = LogBuffer(services)
        self.idempotency: IdempotencyStore = idempotency or PgIdempotencyStore(services.store, clock=services.clock)

    def writer(self, connection: Connection, *, short: bool, log: Callable[[str, str], None]) -> Writer:
        policy = RetryPolicy.short() if short else RetryPolicy.default()
        return Writer(rt.session_for_connection(self.services, connection, log=log, policy=policy))

    async def execute(
        self,
        connection: Connection,
        action: str,
        object_name: str,
        call: Action,
        *,
        idempotency: tuple[str, str] | None = None,
        short: bool = False,
        refresh: bool = False,
    ) -> WriteOutcome:
        """One write (or read) end to end: the ``Idempotency-Key`` (``(key, fingerprint)``), the
        provider call, a rejection of the stored credentials (``bff.lifecycle``), the connection
        log and the ``refresh=true`` sync. A failure raises its :class:`bff.errors.BFFError`."""
        key = idempotency[0] if idempotency else None
        if idempotency is not None:
            begun = await self.idempotency.begin(connection.id, *idempotency)
            if begun.replay is not None:
                return WriteOutcome(begun.replay.status, begun.replay.body, replayed=True)
            if begun.reused:
                raise ApiError(409, "idempotency_key_reused", "This Idempotency-Key was used for a different request.")
            if begun.in_use:
                raise ApiError(409, "idempotency_key_in_use", "A request with this Idempotency-Key is still running.")
        log = EngineLog()
        status, answer = 500, None
        try:
            try:
                status, answer = await call(self.writer(connection, short=short, log=log))
            except ConnectorError as exc:
                error = connector_error(exc)
                if isinstance(exc, CredentialsRejected):
                    await lifecycle.transition(
                        self.services.store,
                        self.services.events,
                        connection.id,
                        Event.CREDENTIALS_REJECTED,
                        detail=error.detail,
                    )
                status = error.status
                if key is not None and error.status == 422:  # the provider's own refusal is kept
                    await self.idempotency.finish(connection.id, key, StoredAnswer(error.status, error.body()))
                    key = None
                raise error from None
        finally:
            if key is not None:
                if 200 <= status < 300:
                    await self.idempotency.finish(connection.id, key, StoredAnswer(status, answer))
                else:
                    await self.idempotency.release(connection.id, key)
            self._log_write(connection, action, object_name, status, log)
        if refresh and 200 <= status < 300 and action not in READS:
            obj = self.services.connectors[connection.connector].object(object_name)
            await self.refresh.request(connection, obj.stream if obj else None)
            if isinstance(answer, dict):
                answer = {**answer, "refresh_queued": True}
        return WriteOutcome(status, answer)

    def _log_write(self, connection: Connection, action: str, object_name: str, status: int, log: EngineLog) -> None:
        if action in READS and status < 400 and not log.lines:
            return  # reads are not logged unless something happened
        level = "info" if status < 400 else "warning"
        self.log.add(connection.id, [*log.lines, (level, f"Writeback: {action} {object_name} → {status}.")])


class EngineLog:
    """Engine log lines (retries, token renewals) collected during one request."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def __call__(self, level: str, message: str) -> None:
        self.lines.append((level, message))


def writeback_for(request: Request) -> Writeback:
    """The process's :class:`Writeback` (``Services.writeback``)."""
    from ..auth import services

    return services(request).writeback
