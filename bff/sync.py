"""Sync runs: connector pages into the warehouse, in the background, one run per connection.

A run is queued by :meth:`SyncRunner.request_sync` (the database's partial unique
index refuses a second active run for the same connection, also across
concurrent requests) and executes as an asyncio task, at most
``settings.sync_concurrency`` at a time across the process. For each stream it
reads pages from the connector engine and writes each page together with its
cursor in one warehouse transaction; a killed process therefore resumes from the
last committed page. The run records per-stream counts and errors, logs a line
per stream and per retry, and moves the connection's health:

* every stream succeeded → ``HEALTHY``;
* some streams failed → ``COMPLETED_WITH_ERRORS`` (the failing streams named);
* every stream failed → ``ERROR``;
* the provider rejected the credentials (after a token refresh, for OAuth) →
  ``ERROR`` with a detail asking to re-authorise; the run stops there;
* the process stopped mid-run → the run is ``interrupted`` (at the next start-up
  for a crash) and the connection's detail says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy.exc import IntegrityError

from . import connections as rt
from .connectors import ConnectorError, CredentialsRejected, Page, RetryPolicy, Stream, load_connectors
from .store import Connection, Run, RunAlreadyActive, Store, SubAccount
from .warehouse import Warehouse

if TYPE_CHECKING:
    from .app import Services

__all__ = ["ConnectionNotReady", "RunAlreadyActive", "SyncRunner", "UnknownTables"]

logger = logging.getLogger("bff.sync")

NOT_READY = {
    rt.AUTHORIZING: "Finish authorising the connection before syncing it.",
    rt.CONFIG_SELECT: "Choose the connection's configuration (e.g. divisions) before syncing it.",
}
INTERRUPTED_DETAIL = (
    "The last sync was interrupted because the server stopped before it finished. "
    "Start a new sync: it resumes from the last saved page."
)
PROGRESS_EVERY = 1.0  # seconds between progress updates of a run's record counts


class ConnectionNotReady(Exception):
    """The connection cannot sync in its current state; ``code``/``detail`` for the API."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class UnknownTables(Exception):
    def __init__(self, unknown: Sequence[str], known: Sequence[str]) -> None:
        super().__init__(", ".join(unknown))
        self.unknown = list(unknown)
        self.known = list(known)


@dataclass
class _Outcome:
    records: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    rejected: CredentialsRejected | None = None


class _RunLog:
    """Log lines of one run, buffered and written in batches (each store write costs ~1 ms).

    The engine calls it synchronously (``log(level, message)``) for retries and
    token renewals; the runner adds a line per stream. :meth:`flush` writes what
    is pending in one transaction, in order.
    """

    def __init__(self, store: Store, run: Run) -> None:
        self._store = store
        self._run = run
        self.pending: list[tuple[str, str]] = []
        self.flushed_at = time.monotonic()

    def __call__(self, level: str, message: str) -> None:
        self.pending.append((level, message))

    def take(self) -> list[tuple[str, str]]:
        lines, self.pending = self.pending, []
        return lines

    async def flush(self) -> None:
        lines = self.take()
        if lines:
            try:
                await self._store.add_logs(self._run.connection_id, lines, run_id=self._run.id)
            except IntegrityError:
                pass  # the connection was deleted mid-run; its logs went with it


class SyncRunner:
    """Queues and executes sync runs; owns the warehouse. One per app (see ``app.py``)."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.store = services.store
        self.warehouse = Warehouse(services.settings.data_dir / "warehouse", services.store, clock=services.clock)
        self._semaphore = asyncio.Semaphore(services.settings.sync_concurrency)
        self._tasks: dict[int, tuple[int, asyncio.Task[None]]] = {}  # connection id → (run id, task)
        # Tests swap this for a policy with short back-offs.
        self.retry_policy: Callable[[], RetryPolicy] = RetryPolicy.default
        services.extras["sync"] = self
        services.extras["warehouse"] = self.warehouse
        services.extras["drop_connection_tables"] = self.drop_connection_tables

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """At start-up: runs a dead process left active become ``interrupted``; their
        connections are free to sync again and their health says what happened."""
        for run in await self.store.interrupt_stale_runs():
            await self.store.update_connection(run.connection_id, health_status=rt.ERROR, detail=INTERRUPTED_DETAIL)
            await self._log(run.connection_id, "warning", f"Run {run.id} was interrupted: the server stopped during the sync.", run_id=run.id)

    async def stop(self) -> None:
        """Cancel running syncs (they are marked ``interrupted``) and close the warehouse."""
        tasks = [task for _, task in self._tasks.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.warehouse.close()

    # -- requests --------------------------------------------------------------------------------

    async def request_sync(self, account: SubAccount, connection: Connection, tables: Sequence[str] | None = None) -> Run:
        """Queue a run of ``tables`` (default: every stream) and start it in the background.

        Raises :class:`ConnectionNotReady`, :class:`UnknownTables`, or the store's
        :class:`RunAlreadyActive` when this connection already has a queued/running run.
        """
        if connection.health_status in NOT_READY:
            raise ConnectionNotReady("connection_not_ready", NOT_READY[connection.health_status])
        if connection.health_status == rt.DISABLED:
            raise ConnectionNotReady("connection_disabled", "This connection is disabled; enable it before syncing.")
        connector = load_connectors()[connection.connector]
        streams = select_streams([s.name for s in connector.streams], tables)
        run = await self.store.create_run(connection.id, account.id, task_id=uuid.uuid4().hex, tables=list(tables) if tables else None)
        task = asyncio.create_task(self._execute(run, streams), name=f"sync-run-{run.id}")
        self._tasks[connection.id] = (run.id, task)
        task.add_done_callback(lambda _: self._forget(connection.id, run.id))
        return run

    def _forget(self, connection_id: int, run_id: int) -> None:
        entry = self._tasks.get(connection_id)
        if entry is not None and entry[0] == run_id:
            del self._tasks[connection_id]

    async def wait(self, connection_id: int) -> None:
        """Wait until the connection's current run (if any) has finished."""
        entry = self._tasks.get(connection_id)
        if entry is not None:
            await asyncio.wait([entry[1]])

    async def drop_connection_tables(self, sub_account_id: int, connection_id: int) -> None:
        """For DELETE: stop the connection's run, then drop its warehouse tables and cursors."""
        entry = self._tasks.get(connection_id)
        if entry is not None:
            entry[1].cancel()
            await asyncio.wait([entry[1]])
        await self.warehouse.drop_connection_tables(sub_account_id, connection_id)

    # -- execution ---------------------------------------------------------------------------------

    async def _execute(self, run: Run, streams: list[str]) -> None:
        try:
            async with self._semaphore:
                await self._run(run, streams)
        except asyncio.CancelledError:
            await self._finish_interrupted(run)
            raise
        except Exception as exc:  # a bug, or the control database failing: never leave the run active
            if await self.store.get_connection_by_id(run.connection_id) is None:
                return  # deleted mid-run (its index rows vanished under us): nothing left to report on
            logger.exception("sync run %s failed unexpectedly", run.id)
            detail = f"The sync failed because of an internal error ({type(exc).__name__}); it has been logged."
            try:
                await self._finish(run, "failed", rt.ERROR, detail, None, [("error", detail)])
            except Exception:  # the next start-up marks the run interrupted
                logger.exception("could not record the failure of run %s", run.id)

    async def _run(self, run: Run, streams: list[str]) -> None:
        # Mark the run running without waiting for it: the store queues its writes in
        # order, so the first fetch overlaps this write and the run's end still follows it.
        marking = asyncio.create_task(self.store.update_run(run.id, status="running", started=True, pid=os.getpid()))
        started = time.monotonic()
        try:
            done = await self._run_streams(run, streams)
        finally:
            await marking  # before any other write about this run
        if done is not None:
            display, outcome, log = done
            await self._conclude(run, display, streams, outcome, log, time.monotonic() - started)

    async def _run_streams(self, run: Run, streams: list[str]) -> tuple[str, _Outcome, _RunLog] | None:
        """Sync each stream in turn; ``None`` if the connection is gone."""
        connection = await self.store.get_connection_by_id(run.connection_id)
        if connection is None:  # deleted while queued
            return None
        connector = load_connectors()[connection.connector]
        log = _RunLog(self.store, run)
        session = rt.session_for_connection(self.services, connection, log=log, policy=self.retry_policy())
        log("info", f"Sync started: {', '.join(streams)}.")
        outcome = _Outcome()
        for name in streams:
            stream_started = time.monotonic()
            pages = 0
            try:
                pages = await self._sync_stream(run, connection, session, connector.stream(name), outcome, log)
            except CredentialsRejected as exc:
                outcome.rejected = exc
                outcome.failed[name] = str(exc)
            except ConnectorError as exc:
                outcome.failed[name] = str(exc)
            except sqlite3.Error as exc:
                logger.exception("warehouse write failed for run %s, stream %s", run.id, name)
                outcome.failed[name] = f"could not store the records ({type(exc).__name__})"
            count = outcome.records.get(name, 0)
            if name in outcome.failed:
                log("error", f"{name}: failed after {count} records: {outcome.failed[name]}")
            else:
                took = time.monotonic() - stream_started
                log("info", f"{name}: {count} records in {pages} page{'s' if pages != 1 else ''} ({took:.1f} s).")
            if outcome.rejected is not None:
                break  # every other stream would be refused too
            await self._progress(run, outcome, log)
        return connector.display_name, outcome, log

    async def _sync_stream(
        self, run: Run, connection: Connection, session: rt.ConnectorSession, stream: Stream, outcome: _Outcome, log: _RunLog
    ) -> int:
        """Read ``stream`` from its saved cursor; each page and its cursor land in one transaction.

        The next page is fetched while the current one is written (one page
        ahead, never more, and pages are written strictly in order), so the
        warehouse thread's waits overlap the event loop's fetching.
        """
        table = await self.warehouse.open_table(connection.sub_account_id, connection.id, stream)
        state = await table.load_state()
        outcome.records[stream.name] = 0
        pages = 0
        async for page in _read_ahead(session.read(stream.name, state)):
            outcome.records[stream.name] += await table.write(page.records, page.state, run.id)
            pages += 1
            await self._progress(run, outcome, log)
        return pages

    async def _progress(self, run: Run, outcome: _Outcome, log: _RunLog, *, force: bool = False) -> None:
        """Publish record counts and log lines of a long run, at most once per PROGRESS_EVERY
        (a short run writes them once, with its end)."""
        now = time.monotonic()
        if not force and now - log.flushed_at < PROGRESS_EVERY:
            return
        log.flushed_at = now
        await self.store.update_run(run.id, records=outcome.records)
        await log.flush()

    async def _conclude(self, run: Run, display: str, streams: list[str], outcome: _Outcome, log: _RunLog, took: float) -> None:
        total = sum(outcome.records.values())
        if outcome.rejected is not None:
            status, health = "failed", rt.ERROR
            detail: str | None = f"{outcome.rejected.detail} Re-authorise this connection to resume syncing."
        elif not outcome.failed:
            status, health, detail = "succeeded", rt.HEALTHY, None
        elif len(outcome.failed) < len(streams):
            failed = "; ".join(f"{name}: {why}" for name, why in outcome.failed.items())
            status, health = "completed_with_errors", rt.COMPLETED_WITH_ERRORS
            detail = f"{len(outcome.failed)} of {len(streams)} tables failed ({failed}). The other tables are up to date."
        else:
            failed = "; ".join(f"{name}: {why}" for name, why in outcome.failed.items())
            status, health, detail = "failed", rt.ERROR, f"The sync from {display} failed ({failed})."
        log("info" if status == "succeeded" else "warning", f"Sync {status.replace('_', ' ')}: {total} records in {took:.1f} s.")
        await self._finish(run, status, health, detail, outcome.records, log.take())

    async def _finish(
        self, run: Run, status: str, health: str, detail: str | None, records: dict[str, int] | None, logs: list[tuple[str, str]]
    ) -> None:
        await self.store.finish_run(
            run.id, status=status, records=records, error=detail, connection_id=run.connection_id,
            health_status=health, detail=detail, logs=logs,
        )

    async def _finish_interrupted(self, run: Run) -> None:
        # Shielded: this bookkeeping must complete even though the task is being cancelled.
        async def mark() -> None:
            try:
                await self._finish(
                    run, "interrupted", rt.ERROR, INTERRUPTED_DETAIL, None,
                    [("warning", "Sync interrupted: it was stopped before it finished.")],
                )
            except Exception:  # the store may be closing; start-up repairs the run then
                logger.exception("could not mark run %s interrupted", run.id)

        await asyncio.shield(mark())

    async def _log(self, connection_id: int, level: str, message: str, *, run_id: int | None = None) -> None:
        try:
            await self.store.add_log(connection_id, level, message, run_id=run_id)
        except IntegrityError:
            pass  # the connection was deleted mid-run; its logs went with it


async def _read_ahead(pages: AsyncIterator[Page]) -> AsyncIterator[Page]:
    """Yield ``pages`` while the next one is already being fetched (a one-page buffer)."""
    iterator = aiter(pages)

    async def fetch() -> Page:
        return await anext(iterator)

    pending = asyncio.create_task(fetch())
    try:
        while True:
            try:
                page = await pending
            except StopAsyncIteration:
                return
            pending = asyncio.create_task(fetch())
            yield page
    finally:
        if not pending.done():
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending


def select_streams(available: Sequence[str], tables: Sequence[str] | None) -> list[str]:
    """The streams a run covers, in definition order; raises :class:`UnknownTables`."""
    if not tables:
        return list(available)
    unknown = [t for t in tables if t not in available]
    if unknown:
        raise UnknownTables(unknown, available)
    wanted = set(tables)
    return [name for name in available if name in wanted]
