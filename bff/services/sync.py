"""Sync runs: connector pages into the warehouse, as jobs on the queue, one run per connection.

:meth:`SyncRunner.request_sync` records a queued run (the runs table's partial
unique index refuses a second active run of a connection, also across processes)
and defers a ``sync_run`` job with a queueing lock per connection. Any worker
process executes it (:meth:`SyncRunner.execute`): for each stream it reads pages
from the connector engine and writes each page together with its cursor in one
warehouse transaction, so a run resumed anywhere continues from the last
committed page. The run records per-stream counts and errors, logs a line per
stream and per retry, and moves the connection's health:

* every stream succeeded → ``HEALTHY``;
* some streams failed → ``COMPLETED_WITH_ERRORS`` (the failing streams named);
* every stream failed → ``ERROR``;
* the provider rejected the credentials (after a token refresh, for OAuth) →
  ``ERROR`` with a detail asking to re-authorise; the run stops there.

Long waits free the worker: when a provider asks to wait longer than
``settings.long_wait_seconds``, the run saves which streams are done, shows
``waiting`` with ``resume_at`` and re-defers itself for that time. A worker that
stops (Ctrl-C, deploy) puts its runs back in the queue; one that dies is found by
the other workers' watchdog (``bff.jobs``). Either way the run resumes from its
cursors on the next free worker, and it is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from .. import connections as rt
from .. import lifecycle
from ..connectors import (
    Connector,
    ConnectorError,
    ConnectorSession,
    CredentialsRejected,
    LongWait,
    Page,
    RetryPolicy,
    Stream,
)
from ..errors import Conflict, Invalid
from ..events import Events
from ..jobs import JobQueue
from ..lifecycle import Event, Health
from ..runtime import Runtime
from ..store import Connection, Run, RunAlreadyActive, Store, SubAccount
from ..warehouse import Warehouse

__all__ = ["CategoriesNotSupported", "ConnectionNotReady", "RunAlreadyActive", "SyncRunner", "UnknownTables"]

logger = logging.getLogger("bff.sync")

NOT_READY = {
    Health.AUTHORIZING: "Finish authorising the connection before syncing it.",
    Health.CONFIG_SELECT: "Choose the connection's configuration (e.g. divisions) before syncing it.",
    Health.DISABLED: "This connection is disabled; enable it before syncing.",
}
PROGRESS_EVERY = 1.0  # seconds between progress updates of a run's record counts
WAIT_POLL = 0.05  # seconds between checks in SyncRunner.wait
READ_AHEAD_PAGES = 4  # pages fetched and waiting while a batch is written (one more being fetched)
# Pages already fetched when the writer is ready are written in one transaction, up to about this
# many records (4 pages of 500): each transaction has a fixed cost in PostgreSQL (statements,
# commit, index summary).
WRITE_BATCH_RECORDS = 2000


class ConnectionNotReady(Conflict):
    """The connection cannot sync in its current state: ``connection_not_ready`` or ``connection_disabled``."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


class UnknownTables(Invalid):
    def __init__(self, unknown: Sequence[str], known: Sequence[str]) -> None:
        super().__init__(
            {"tables": f"Unknown table(s): {', '.join(unknown)}. This connection has: {', '.join(known)}."}
        )
        self.unknown = list(unknown)
        self.known = list(known)


class CategoriesNotSupported(Invalid):
    """``categories`` for a connector whose tables are not read per division (no ``partition_by``)."""

    code = "categories_not_supported"

    def __init__(self, display_name: str) -> None:
        super().__init__(
            {"categories": f"{display_name} has no divisions (categories) to choose from; sync without categories."},
            f"{display_name} cannot sync some categories only.",
        )


@dataclass
class _Outcome:
    records: dict[str, int] = field(default_factory=dict)
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    rejected: CredentialsRejected | None = None
    paused: bool = False  # waiting for the provider, or the connection is gone: no conclusion now
    full_started: list[str] = field(default_factory=list)  # streams a full sync has already reset

    @classmethod
    def resumed(cls, run: Run) -> _Outcome:
        return cls(
            records={k: int(v) for k, v in run.records.items()},
            done=list(run.progress.get("done", [])),
            failed=dict(run.progress.get("failed", {})),
            full_started=list(run.progress.get("full_started", [])),
        )

    def progress(self) -> dict[str, Any]:
        return {"done": self.done, "failed": self.failed, "full_started": self.full_started}


class _RunLog:
    """Log lines of one run, buffered and written in batches.

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
        await self._store.runs.add_logs(self._run.connection_id, self.take(), run_id=self._run.id)


class SyncRunner:
    """Queues sync runs and executes them when this process's worker picks their jobs."""

    def __init__(self, runtime: Runtime, warehouse: Warehouse, queue: JobQueue, events: Events) -> None:
        self.runtime = runtime
        self.store = runtime.store
        self.warehouse = warehouse
        self.queue = queue
        # Told about health changes and every run that ended (webhooks, the schedule).
        self.events = events
        # Tests swap this for a policy with short back-offs.
        self.retry_policy: Callable[[], RetryPolicy] = RetryPolicy.default
        # Set when a run of that connection ends in this process (waiters need not poll for it).
        self._ended: dict[int, asyncio.Event] = {}

    # -- requests --------------------------------------------------------------------------------

    async def request_sync(
        self,
        account: SubAccount,
        connection: Connection,
        tables: Sequence[str] | None = None,
        *,
        full: bool = False,
        trigger: str = "api",
        categories: Sequence[str] | None = None,
    ) -> Run:
        """Queue a run of ``tables`` (default: every stream); a worker executes it.

        ``full`` forgets the cursors of those tables, reads everything and marks the rows the
        provider no longer has as deleted (``_deleted_at``). ``categories`` reads only those
        partitions (divisions) of the tables read per partition, chosen on the connection or not
        (the provider decides what the connection's credentials reach); the other tables as usual.

        Raises :class:`ConnectionNotReady`, :class:`UnknownTables`, :class:`CategoriesNotSupported`,
        or the store's :class:`RunAlreadyActive` when this connection already has an active run.
        """
        refused = lifecycle.refusal(connection.health_status, lifecycle.can_sync(connection.health_status))
        if refused is not None:
            raise ConnectionNotReady(refused, NOT_READY[Health(connection.health_status)])
        connector = self.runtime.connectors[connection.connector]
        chosen = chosen_streams(connector, connection)
        # Without tables: the connection's own selection (what a scheduled run reads too).
        tables = select_streams(chosen, tables) if tables or connection.selected_tables is not None else None
        if categories and not connector.partition_by:
            raise CategoriesNotSupported(connector.display_name)
        if categories and full:
            # A full sync marks every row it did not write as deleted: the other divisions' rows too.
            raise Invalid({"categories": "A full sync reads every division; leave categories out or full off."})
        run = await self.store.runs.create(
            connection.id,
            account.id,
            task_id=uuid.uuid4().hex,
            tables=list(tables) if tables else None,
            full_sync=full,
            trigger=trigger,
            categories=list(categories) if categories else None,
        )
        job_id = await self.queue.defer_sync(run.id, connection.id)
        if job_id is None:  # a job of this connection is still waiting: the queueing lock says no
            await self.store.runs.delete(run.id)  # it never started: no failed run in the history
            raise RunAlreadyActive(None)
        await self.store.runs.update(run.id, job_id=job_id)
        return run

    async def wait(self, connection_id: int, *, timeout: float | None = None) -> Run | None:
        """Wait until the connection has no active run; the last run (None if it never ran)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            ended = self._ended.setdefault(connection_id, asyncio.Event())
            if await self.store.runs.active(connection_id) is None:
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            await self._until_ended(ended, WAIT_POLL)
        return await self.store.runs.last(connection_id)

    async def wait_run(self, run_id: int, *, timeout: float) -> Run | None:
        """Wait up to ``timeout`` seconds for one run to end; the run as it is then."""
        deadline = time.monotonic() + timeout
        run = await self.store.runs.get(run_id)
        while run is not None and run.active and time.monotonic() < deadline:
            ended = self._ended.setdefault(run.connection_id, asyncio.Event())
            await self._until_ended(ended, min(WAIT_POLL * 4, max(0.0, deadline - time.monotonic())))
            run = await self.store.runs.get(run_id)
        return run

    async def wait_finished(
        self, run_id: int, connection: Connection, *, timeout: float
    ) -> tuple[Run, Connection] | None:
        """Wait up to ``timeout`` seconds for a run to end: the ended run and its connection as the
        run left it; None while it is still going."""
        run = await self.wait_run(run_id, timeout=timeout)
        if run is None or run.active:
            return None
        return run, await self.store.connections.get_by_id(connection.id) or connection

    async def status(self, connection_id: int) -> tuple[Run | None, bool]:
        """The run queued or going (and True), else the last one (and False; None if none ran)."""
        active = await self.store.runs.active(connection_id)
        if active is not None:
            return active, True
        return await self.store.runs.last(connection_id), False

    async def runs(self, connection_id: int, *, offset: int, limit: int) -> tuple[int, list[Run]]:
        """A page of the connection's runs, newest first, and how many there are."""
        return await self.store.runs.list_page(connection_id, offset=offset, limit=limit)

    @staticmethod
    async def _until_ended(ended: asyncio.Event, poll: float) -> None:
        """A run that ends in this process says so at once; one on another worker is seen by polling."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ended.wait(), poll)

    async def delete_connection(self, sub_account_id: int, connection_id: int) -> bool:
        """Delete a connection with its runs, logs, cursors and warehouse tables. A run in
        progress on any worker fails its next write (the rows it needs are gone) and stops."""
        deleted = await self.store.connections.delete(sub_account_id, connection_id)
        if deleted:
            await self.warehouse.drop_connection_tables(sub_account_id, connection_id)
        return deleted

    # -- execution (inside a worker) -------------------------------------------------------------------

    async def execute(self, run_id: int) -> None:
        """The body of a ``sync_run`` job."""
        run = await self.store.runs.get(run_id)
        if run is None or not run.active:
            return  # deleted with its connection, or already ended
        try:
            await self._run(run)
        except asyncio.CancelledError:
            await asyncio.shield(
                self._requeue(run, "Sync paused: the worker running it stopped. It continues on the next free worker.")
            )
            raise
        except Exception as exc:  # a bug, or the database failing: never leave the run active
            if await self.store.connections.get_by_id(run.connection_id) is None:
                return  # deleted mid-run: nothing left to report on
            logger.exception("sync run %s failed unexpectedly", run.id)
            detail = f"The sync failed because of an internal error ({type(exc).__name__}); it has been logged."
            try:
                await self._finish(run, "failed", Event.SYNC_FAILED, detail, None, [("error", detail)])
            except Exception:
                logger.exception("could not record the failure of run %s", run.id)

    async def recover_stalled(self, run_id: int) -> None:
        """The watchdog re-queued this run's job: its worker died. Say so where the customer looks."""
        run = await self.store.runs.get(run_id)
        if run is None or not run.active:
            return
        await self._back_to_queued(
            run,
            f"Run {run.id} was interrupted: the worker running it stopped responding. "
            "It continues from the last saved page on another worker.",
        )

    async def _back_to_queued(self, run: Run, message: str) -> None:
        await self.store.runs.update(run.id, status="queued")
        await self.store.runs.add_log(run.connection_id, "warning", message, run_id=run.id)

    async def _requeue(self, run: Run, message: str) -> None:
        try:
            if await self.store.connections.get_by_id(run.connection_id) is None:
                return
            await self._back_to_queued(run, message)
            await self.queue.defer_sync(run.id, run.connection_id)
        except Exception:  # the store may be closing: the watchdog of another worker picks it up
            logger.exception("could not re-queue run %s", run.id)

    async def _run(self, run: Run) -> None:
        started = time.monotonic()
        await self.store.runs.update(
            run.id, status="running", started=True, pid=os.getpid(), attempt=True, resume_at=None
        )
        connection = await self.store.connections.get_by_id(run.connection_id)
        if connection is None:  # deleted while queued
            return
        connector = self.runtime.connectors[connection.connector]
        streams = select_streams([s.name for s in connector.streams], run.tables)
        log = _RunLog(self.store, run)
        policy = dataclasses.replace(self.retry_policy(), long_wait=self.runtime.settings.long_wait_seconds)
        session = rt.session_for_connection(self.runtime, connection, log=log, policy=policy)
        outcome = _Outcome.resumed(run)
        which = f" (divisions {', '.join(run.categories)})" if run.categories else ""
        log("info", f"Sync {'resumed' if run.attempts else 'started'}: {', '.join(streams)}{which}.")
        try:
            await self._run_streams(run, connection, connector, streams, session, outcome, log)
        except asyncio.CancelledError:  # the worker is stopping: keep what this attempt counted
            await asyncio.shield(self._save_progress(run, outcome, log))
            raise
        if outcome.paused:
            return
        await self._conclude(run, connector.display_name, streams, outcome, log, time.monotonic() - started)

    async def _run_streams(
        self,
        run: Run,
        connection: Connection,
        connector: Connector,
        streams: list[str],
        session: ConnectorSession,
        outcome: _Outcome,
        log: _RunLog,
    ) -> None:
        for name in streams:
            if name in outcome.done or name in outcome.failed:
                continue
            stream_started = time.monotonic()
            pages = 0
            try:
                pages = await self._sync_stream(run, connection, session, connector.stream(name), outcome, log)
            except LongWait as exc:
                await self._wait(run, outcome, log, exc)
                outcome.paused = True
                return
            except CredentialsRejected as exc:
                outcome.rejected = exc
                outcome.failed[name] = str(exc)
            except ConnectorError as exc:
                outcome.failed[name] = str(exc)
            except psycopg.Error as exc:
                if await self.store.connections.get_by_id(run.connection_id) is None:
                    outcome.paused = True  # deleted mid-run: its tables, cursors and runs went with it
                    return
                logger.exception("warehouse write failed for run %s, stream %s", run.id, name)
                outcome.failed[name] = f"could not store the records ({type(exc).__name__})"
            count = outcome.records.get(name, 0)
            if name in outcome.failed:
                log("error", f"{name}: failed after {count} records: {outcome.failed[name]}")
            else:
                outcome.done.append(name)
                took = time.monotonic() - stream_started
                log("info", f"{name}: {count} records in {pages} page{'s' if pages != 1 else ''} ({took:.1f} s).")
            if outcome.rejected is not None:
                break  # every other stream would be refused too
            await self._progress(run, outcome, log, force=True)

    async def _sync_stream(
        self,
        run: Run,
        connection: Connection,
        session: ConnectorSession,
        stream: Stream,
        outcome: _Outcome,
        log: _RunLog,
    ) -> int:
        """Read ``stream`` from its saved cursor; each batch of pages and the cursor of its last
        page land in one transaction.

        The next pages are fetched while the current batch is written (READ_AHEAD_PAGES ahead,
        never more); the pages fetched meanwhile make the next batch (see :func:`_batches`), which
        is copied into the database while the one before is upserted; batches are committed
        strictly in order.
        """
        table = await self.warehouse.open_table(connection.sub_account_id, connection.id, stream)
        if run.full_sync and stream.name not in outcome.full_started:
            # A full sync starts the stream from nothing once; a resumed attempt continues from
            # the cursor this run saved.
            await self.warehouse.reset_state(connection.sub_account_id, connection.id, [stream.name])
            outcome.full_started.append(stream.name)
            await self._save_progress(run, outcome, log)
        state = await table.load_state()
        outcome.records.setdefault(stream.name, 0)
        pages = 0
        # Writes not counted yet (with their pages), oldest first: at most the batch being upserted
        # and the next one.
        writing: list[tuple[asyncio.Task[int], int]] = []
        try:
            pages_read = session.read(stream.name, state, partitions=run.categories, rows=True)
            async for batch, count in _batches(pages_read, size=WRITE_BATCH_RECORDS):
                after = writing[-1][0] if writing else None
                write = table.write(batch.records, batch.state, run.id, after=after, tuples=True, plain=batch.plain)
                task = asyncio.create_task(write)
                writing.append((task, count))
                if len(writing) > 1:
                    outcome.records[stream.name] += await writing[0][0]
                    pages += writing.pop(0)[1]
                    await self._progress(run, outcome, log)
            while writing:
                outcome.records[stream.name] += await writing[0][0]
                pages += writing.pop(0)[1]
        except BaseException as exc:
            # Stopping (cancelled): the writes still going are abandoned (rolled back). Reading
            # failed: the pages already read are still written, as when pages were written one at
            # a time. Either way what did commit is counted; a batch after a failed one saved nothing.
            if isinstance(exc, asyncio.CancelledError):
                for task, _ in writing:
                    task.cancel()
            for result in await asyncio.gather(*(task for task, _ in writing), return_exceptions=True):
                if isinstance(result, int):
                    outcome.records[stream.name] += result
            raise
        gone = 0
        deletions = stream.deletions
        if deletions is not None and deletions.kind == "archived_flag" and deletions.field:
            gone += await table.mark_flagged_deleted(deletions.field)
        elif deletions is not None and deletions.kind == "deleted_ids":
            ids, cursor = await session.deleted_ids(stream.name, await table.deletions_cursor())
            gone += await table.mark_deleted(ids, cursor)
        if run.full_sync:
            # Every row the provider still has was written by this run; the others went away.
            gone += await table.mark_missing_deleted(run.id)
        if gone:
            log(
                "info",
                f"{stream.name}: {gone} record{'s' if gone != 1 else ''} deleted at the provider, marked deleted.",
            )
        return pages

    async def _wait(self, run: Run, outcome: _Outcome, log: _RunLog, exc: LongWait) -> None:
        """Save the run's place and come back when the provider said to; the worker is free meanwhile."""
        resume_at = self.runtime.clock() + exc.delay
        log("info", f"Waiting: {exc.reason}. The sync continues after that, from where it stopped.")
        await self.store.runs.update(
            run.id, status="waiting", resume_at=resume_at, records=outcome.records, progress=outcome.progress()
        )
        await log.flush()
        await self.queue.defer_sync(run.id, run.connection_id, at=time.time() + exc.delay)

    async def _progress(self, run: Run, outcome: _Outcome, log: _RunLog, *, force: bool = False) -> None:
        """Publish record counts, finished streams and log lines of a long run, at most once per
        PROGRESS_EVERY (and after every stream)."""
        now = time.monotonic()
        if not force and now - log.flushed_at < PROGRESS_EVERY:
            return
        log.flushed_at = now
        await self._save_progress(run, outcome, log)

    async def _save_progress(self, run: Run, outcome: _Outcome, log: _RunLog) -> None:
        await self.store.runs.update(run.id, records=outcome.records, progress=outcome.progress())
        await log.flush()

    async def _conclude(
        self, run: Run, display: str, streams: list[str], outcome: _Outcome, log: _RunLog, took: float
    ) -> None:
        total = sum(outcome.records.values())
        if outcome.rejected is not None:
            status, event = "failed", Event.CREDENTIALS_REJECTED
            detail: str | None = f"{outcome.rejected.detail} Re-authorise this connection to resume syncing."
        elif not outcome.failed:
            status, event, detail = "succeeded", Event.SYNC_SUCCEEDED, None
        elif len(outcome.failed) < len(streams):
            failed = "; ".join(f"{name}: {why}" for name, why in outcome.failed.items())
            status, event = "completed_with_errors", Event.SYNC_PARTLY_FAILED
            detail = (
                f"{len(outcome.failed)} of {len(streams)} tables failed ({failed}). The other tables are up to date."
            )
        else:
            failed = "; ".join(f"{name}: {why}" for name, why in outcome.failed.items())
            status, event, detail = "failed", Event.SYNC_FAILED, f"The sync from {display} failed ({failed})."
        log(
            "info" if status == "succeeded" else "warning",
            f"Sync {status.replace('_', ' ')}: {total} records in {took:.1f} s.",
        )
        await self._finish(run, status, event, detail, outcome.records, log.take())

    async def _finish(
        self,
        run: Run,
        status: str,
        event: Event,
        detail: str | None,
        records: dict[str, int] | None,
        logs: list[tuple[str, str]],
    ) -> None:
        await lifecycle.conclude_run(
            self.store,
            self.events,
            run.id,
            run.connection_id,
            event,
            status=status,
            records=records,
            detail=detail,
            logs=logs,
        )
        waiting = self._ended.pop(run.connection_id, None)
        if waiting is not None:
            waiting.set()


async def _batches(
    pages: AsyncIterator[Page], *, size: int, depth: int = READ_AHEAD_PAGES
) -> AsyncIterator[tuple[Page, int]]:
    """``pages`` fetched ahead (up to ``depth`` pages waiting) while the caller writes, and handed over
    in batches: each time, every page already fetched (at least one, until they hold ``size``
    records) as one ``(page with their records in order and the last one's state, how many
    pages)``. A provider slower than the writes gives one page at a time, each committed as soon
    as it can be; a faster one gives several, written in one transaction. A fetch that fails
    raises here, after the pages fetched before it."""
    ready: asyncio.Queue[Page | BaseException | None] = asyncio.Queue(maxsize=max(1, depth))

    async def fetch() -> None:
        try:
            async for page in pages:
                await ready.put(page)
        except Exception as exc:
            await ready.put(exc)
        else:
            await ready.put(None)

    def batch(held: list[Page]) -> tuple[Page, int]:
        last = held[-1]
        records = last.records if len(held) == 1 else [r for page in held for r in page.records]
        return Page(last.stream, last.partition, records, last.state, all(p.plain for p in held)), len(held)

    fetching = asyncio.create_task(fetch())
    try:
        item = await ready.get()
        while isinstance(item, Page):
            held, count = [item], len(item.records)
            following: list[Page | BaseException | None] = []  # the end or a failure, after this batch
            while count < size and not ready.empty():
                more = ready.get_nowait()
                if not isinstance(more, Page):
                    following.append(more)
                    break
                held.append(more)
                count += len(more.records)
            yield batch(held)
            item = following[0] if following else await ready.get()
        if isinstance(item, BaseException):
            raise item
    finally:
        if not fetching.done():
            fetching.cancel()
            with contextlib.suppress(BaseException):
                await fetching


def chosen_streams(connector: Connector, connection: Connection) -> list[str]:
    """The connection's tables: its connector's streams, only the selected ones when it has a selection."""
    names = [s.name for s in connector.streams]
    chosen = connection.selected_tables
    return names if chosen is None else [name for name in names if name in chosen]


def select_streams(available: Sequence[str], tables: Sequence[str] | None) -> list[str]:
    """The streams a run covers, in definition order; raises :class:`UnknownTables`."""
    if not tables:
        return list(available)
    unknown = [t for t in tables if t not in available]
    if unknown:
        raise UnknownTables(unknown, available)
    wanted = set(tables)
    return [name for name in available if name in wanted]
