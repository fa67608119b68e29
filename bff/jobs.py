"""The job queue: procrastinate on the same PostgreSQL as everything else.

One :class:`JobQueue` per process. Web processes defer jobs; worker processes (``bff worker``,
or the worker inside ``bff serve``/``bff demo``) run them. The tasks are plain functions below,
put on a procrastinate :func:`blueprint` (namespace ``bff``); each reaches the process's
services through its job context (``context.additional_context["services"]``), so a worker
needs the services only, never the web app. Jobs: ``bff:sync_run`` (one sync run),
``bff:writeback_refresh`` (the one sync that many ``refresh=true`` writes of a connection ask
for; a queueing lock per connection coalesces them), ``bff:scheduler_tick`` (queues due
scheduled runs and scripts; procrastinate's periodic registry defers it every minute, once
across all workers, and it is also deferred right after a connection becomes ready),
``bff:webhook_deliver`` (one attempt at one delivery) and ``bff:script_run`` (on its own queue
and slots). A sync job carries a queueing lock per connection, so a connection never has two
sync jobs waiting; the runs table's unique index is the second guard. Jobs queued under the
names of the previous release (``bff.sync_run``, …) still run: those names are aliases.

Crashes: every worker sends heartbeats; a job whose worker stopped sending them
(``stalled_seconds``) is found by any live worker's watchdog and re-queued, and
its run resumes from the saved cursor. Nobody touches a live worker's jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import procrastinate
import psycopg
from procrastinate import exceptions as procrastinate_errors

if TYPE_CHECKING:
    from .services import Services

logger = logging.getLogger("bff.jobs")

NAMESPACE = "bff"
SYNC_QUEUE = "sync"
SYNC_TASK = "bff:sync_run"

SCHEDULER_QUEUE = "scheduler"
TICK_TASK = "bff:scheduler_tick"
TICK_LOCK = "scheduler-tick"
TICK_CRON = "* * * * *"  # every minute: frequencies are at least 300 s
WEBHOOK_QUEUE = "webhooks"
WEBHOOK_TASK = "bff:webhook_deliver"
REFRESH_TASK = "bff:writeback_refresh"
SCRIPT_QUEUE = "scripts"
SCRIPT_TASK = "bff:script_run"
ALL_QUEUES = (SYNC_QUEUE, WEBHOOK_QUEUE, SCHEDULER_QUEUE, SCRIPT_QUEUE)
JOB_POOL_SIZE = 8
SQL_WATCH_LOCK = "bff.sql_watch"  # the session lock of the one worker that watches customer SQL
STOP_ATTEMPTS = 20
STOP_WAIT_SECONDS = 0.5


# -- the tasks: plain functions over the services ------------------------------------------------


def services_of(context: procrastinate.JobContext) -> Services:
    """The services of the worker running this job (see :meth:`JobQueue.start_worker`)."""
    found: Services = context.additional_context["services"]
    return found


async def sync_run(context: procrastinate.JobContext, run_id: int) -> None:
    await services_of(context).sync.execute(int(run_id))


async def writeback_refresh(context: procrastinate.JobContext, connection_id: int) -> None:
    await services_of(context).writeback.refresh.execute(int(connection_id))


async def webhook_deliver(context: procrastinate.JobContext, delivery_id: int) -> None:
    await services_of(context).webhooks.deliver(int(delivery_id))


async def script_run(context: procrastinate.JobContext, run_id: int) -> None:
    await services_of(context).scripts.execute(int(run_id))


async def scheduler_tick(context: procrastinate.JobContext, timestamp: int | None = None) -> None:
    """Webhook deliveries left without a job, due scheduled syncs, then due scripts (no syncs or
    scripts when this deployment has schedules off)."""
    services = services_of(context)
    await services.webhooks.queue_unqueued()  # the outbox's deliveries whose job was never queued
    if services.settings.schedules_enabled:
        await services.schedules.tick()
        await services.scripts.tick()


def blueprint() -> procrastinate.Blueprint:
    """The tasks on a new blueprint. A new one per :class:`JobQueue`: adding a blueprint to an app
    renames its tasks in place, so one blueprint serves one app (tests build many in a process)."""
    tasks = procrastinate.Blueprint()
    tasks.task(name="sync_run", queue=SYNC_QUEUE, pass_context=True)(sync_run)
    tasks.task(name="writeback_refresh", queue=SYNC_QUEUE, pass_context=True)(writeback_refresh)
    tasks.task(name="webhook_deliver", queue=WEBHOOK_QUEUE, pass_context=True)(webhook_deliver)
    tasks.task(name="script_run", queue=SCRIPT_QUEUE, pass_context=True)(script_run)
    # The queueing lock keeps at most one tick waiting; the periodic registry defers one per
    # minute for all workers together (the database refuses a second defer of the same minute).
    tick = tasks.task(name="scheduler_tick", queue=SCHEDULER_QUEUE, queueing_lock=TICK_LOCK, pass_context=True)
    tasks.periodic(cron=TICK_CRON, periodic_id="scheduler")(tick(scheduler_tick))
    return tasks


def sync_lock(connection_id: int) -> str:
    return f"sync-connection-{int(connection_id)}"


def refresh_lock(connection_id: int) -> str:
    return f"refresh-connection-{int(connection_id)}"


def script_lock(script_id: int) -> str:
    return f"script-{int(script_id)}"


class JobQueue:
    """Defers jobs and, when asked, runs a worker in this process."""

    def __init__(
        self,
        url: str,
        *,
        heartbeat_seconds: float = 10.0,
        stalled_seconds: float = 30.0,
        sql_watch_seconds: float = 5.0,
        sql_idle_seconds: float = 60.0,
    ) -> None:
        self.url = url
        self.heartbeat_seconds = heartbeat_seconds
        self.stalled_seconds = stalled_seconds
        # Customer SQL: how often the watchdog looks, and how long a customer session may sit idle
        # in a transaction (the statement limit is the query tables' timeout).
        self.sql_watch_seconds = sql_watch_seconds
        self.sql_idle_seconds = sql_idle_seconds
        # Each worker holds a LISTEN connection and takes more for fetching, heartbeats and its
        # jobs' bookkeeping; two workers (main and scripts) and this process's defers share the pool.
        self.app = procrastinate.App(
            connector=procrastinate.PsycopgConnector(conninfo=url, min_size=1, max_size=JOB_POOL_SIZE)
        )
        self.app.add_tasks_from(blueprint(), namespace=NAMESPACE)
        for name in (SYNC_TASK, TICK_TASK, WEBHOOK_TASK, REFRESH_TASK, SCRIPT_TASK):
            # The previous release's names (jobs it queued still run after an upgrade).
            self.app.add_task_alias(self.app.tasks[name], name.replace(":", "."))
        self._sync_task = self.app.tasks[SYNC_TASK]
        self._webhook_task = self.app.tasks[WEBHOOK_TASK]
        self._refresh_task = self.app.tasks[REFRESH_TASK]
        self._script_task = self.app.tasks[SCRIPT_TASK]
        self._tick_task = self.app.tasks[TICK_TASK]
        self._services: Services | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._watchdog: asyncio.Task[None] | None = None
        self._sql_watchdog: asyncio.Task[None] | None = None

    def bind(self, services: Services) -> None:
        """The services this process's jobs (and the watchdog's recoveries) run with."""
        self._services = services

    async def open(self) -> None:
        await self.app.open_async()

    async def close(self) -> None:
        await self.stop_worker()
        await self.app.close_async()

    # -- deferring ------------------------------------------------------------------------

    async def defer_sync(self, run_id: int, connection_id: int, *, at: float | None = None) -> int | None:
        """Queue a sync job for ``run_id``; None when the connection already has one waiting."""
        options: dict[str, Any] = {"queueing_lock": sync_lock(connection_id)}
        if at is not None:
            options["schedule_at"] = datetime.datetime.fromtimestamp(at, datetime.UTC)
        try:
            job_id: int = await self._sync_task.configure(**options).defer_async(run_id=run_id)
        except procrastinate_errors.AlreadyEnqueued:
            return None
        return job_id

    async def defer_tick(self) -> None:
        """Ask for a scheduler tick now (a connection became ready); a waiting tick is enough."""
        try:
            await self._tick_task.configure(queueing_lock=TICK_LOCK).defer_async()
        except procrastinate_errors.AlreadyEnqueued:
            pass

    async def defer_webhook(self, delivery_id: int, *, at: float | None = None) -> int:
        options: dict[str, Any] = {}
        if at is not None:
            options["schedule_at"] = datetime.datetime.fromtimestamp(at, datetime.UTC)
        job_id: int = await self._webhook_task.configure(**options).defer_async(delivery_id=delivery_id)
        return job_id

    async def webhook_jobs(self, delivery_ids: Sequence[int]) -> set[int]:
        """Those of these deliveries that have a job in the queue (in any state)."""
        rows = await self.app.connector.execute_query_all_async(
            "SELECT DISTINCT (args->>'delivery_id')::bigint AS delivery_id FROM procrastinate_jobs"
            " WHERE task_name = %(task)s AND (args->>'delivery_id')::bigint = ANY(%(ids)s)",
            task=WEBHOOK_TASK,
            ids=list(delivery_ids),
        )
        return {int(row["delivery_id"]) for row in rows}

    async def defer_refresh(self, connection_id: int, *, at: float) -> bool:
        """Queue the refresh job of a connection for ``at``; False when one is already waiting
        (that one will see this request too: it reads what to sync only when it starts)."""
        task = self._refresh_task.configure(
            queueing_lock=refresh_lock(connection_id), schedule_at=datetime.datetime.fromtimestamp(at, datetime.UTC)
        )
        try:
            await task.defer_async(connection_id=connection_id)
        except procrastinate_errors.AlreadyEnqueued:
            return False
        return True

    async def refresh_jobs_pending(self, connection_id: int | None = None) -> int:
        """Refresh jobs waiting or running (of one connection, or all), in every process."""
        lock = refresh_lock(connection_id) if connection_id is not None else None
        pending = 0
        for status in ("todo", "doing"):
            found = await self.app.job_manager.list_jobs_async(task=REFRESH_TASK, status=status, queueing_lock=lock)
            pending += len(list(found))
        return pending

    async def defer_script(self, run_id: int, script_id: int, *, at: float | None = None) -> int | None:
        """Queue a script run; None when a run of this script is already waiting."""
        options: dict[str, Any] = {"queueing_lock": script_lock(script_id)}
        if at is not None:
            options["schedule_at"] = datetime.datetime.fromtimestamp(at, datetime.UTC)
        try:
            job_id: int = await self._script_task.configure(**options).defer_async(run_id=run_id)
        except procrastinate_errors.AlreadyEnqueued:
            return None
        return job_id

    # -- working ----------------------------------------------------------------------------

    def start_worker(
        self,
        *,
        concurrency: int,
        script_concurrency: int = 2,
        queues: tuple[str, ...] = ALL_QUEUES,
        name: str = "bff",
    ) -> None:
        """Run jobs in this process (as background tasks) until :meth:`stop_worker`, with the
        services given to :meth:`bind` in every job's context.

        Scripts have a worker of their own (``script_concurrency`` slots on the ``scripts``
        queue), so syncs, deliveries and ticks never wait behind a customer's long scripts;
        ``queues`` picks what this process takes at all."""
        assert self._services is not None, "JobQueue.bind() was not called"
        main_queues = [queue for queue in queues if queue != SCRIPT_QUEUE]
        pools = []
        if main_queues:
            pools.append((name, main_queues, concurrency))
        if SCRIPT_QUEUE in queues:
            pools.append((f"{name}-scripts", [SCRIPT_QUEUE], script_concurrency))
        self._workers = [
            asyncio.create_task(
                self.app.run_worker_async(
                    name=worker_name,
                    queues=worker_queues,
                    concurrency=slots,
                    wait=True,
                    install_signal_handlers=False,
                    listen_notify=True,
                    fetch_job_polling_interval=1.0,
                    delete_jobs="successful",
                    update_heartbeat_interval=self.heartbeat_seconds,
                    stalled_worker_timeout=self.stalled_seconds,
                    shutdown_graceful_timeout=0.0,
                    additional_context={"services": self._services},
                ),
                name=f"bff-worker-{worker_name}",
            )
            for worker_name, worker_queues, slots in pools
        ]
        self._watchdog = asyncio.create_task(self._watch_stalled(), name="bff-stalled-watchdog")
        self._sql_watchdog = asyncio.create_task(self._watch_customer_sql(), name="bff-sql-watchdog")

    async def stop_worker(self) -> None:
        """Cancel the workers (procrastinate stops a cancelled worker gracefully) and wait for them.

        A cancellation that lands while a worker is still starting can be lost (seen with two
        workers starting at once on a loaded machine: the worker's loop never heard its stop), so
        a worker still running a moment later is cancelled again."""
        tasks = [task for task in (self._watchdog, self._sql_watchdog, *self._workers) if task is not None]
        for _ in range(STOP_ATTEMPTS):
            pending = [task for task in tasks if not task.done()]
            if not pending:
                break
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=STOP_WAIT_SECONDS)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                if task.done():
                    task.result()
        self._watchdog = self._sql_watchdog = None
        self._workers = []

    async def _watch_stalled(self) -> None:
        interval = max(0.2, self.stalled_seconds / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.requeue_stalled()
            except Exception:  # the database restarting, say: try again next round
                logger.exception("could not check for stalled jobs")

    async def _watch_customer_sql(self) -> None:
        """Hold customer logins to their statement limit: a session may lift its own
        ``statement_timeout``, so one worker of the deployment cancels what runs past it (see
        `bff.warehouse_limits`). That worker is elected by a PostgreSQL session lock on the control
        database, held on a connection of its own: when it stops or dies, the lock goes with its
        session and another worker's next round takes over."""
        from .warehouse_limits import stop_overrunning  # loaded with the services, not with this module

        # This worker's connection for the lock, kept between rounds (no new session per round).
        lock: psycopg.AsyncConnection[Any] | None = None
        elected = False
        try:
            while True:
                await asyncio.sleep(self.sql_watch_seconds)
                if self._services is None:
                    continue
                try:
                    if lock is None or lock.closed:
                        elected = False
                        lock = await psycopg.AsyncConnection.connect(self._services.store.url, autocommit=True)
                    # The holder checks its session is still there (the lock lives as long as it).
                    cur = await lock.execute(
                        "SELECT 1" if elected else "SELECT pg_try_advisory_lock(hashtext(%s))",
                        () if elected else (SQL_WATCH_LOCK,),
                    )
                    found = await cur.fetchone()
                    elected = bool(found and found[0])
                    if not elected:
                        continue  # another worker watches
                    await stop_overrunning(
                        self._services.warehouse.servers,
                        statement_seconds=self._services.query_tables.timeout_ms / 1000,
                        idle_seconds=self.sql_idle_seconds,
                    )
                except Exception:  # the control database restarting, say: try again next round
                    logger.exception("could not check customer SQL sessions")
                    if lock is not None and lock.broken:
                        await lock.close()
        finally:
            if lock is not None:
                await lock.close()

    async def requeue_stalled(self) -> list[int]:
        """Re-queue the sync jobs of workers that stopped sending heartbeats; their run ids."""
        manager = self.app.job_manager
        stalled = await manager.get_stalled_jobs(task_name=SYNC_TASK, seconds_since_heartbeat=self.stalled_seconds)
        run_ids = []
        for job in stalled:
            try:
                await manager.retry_job(job)
            except Exception:  # another worker's watchdog was first
                continue
            run_id = int(job.task_kwargs["run_id"])  # type: ignore[arg-type]
            run_ids.append(run_id)
            if self._services is not None:
                await self._services.sync.recover_stalled(run_id)
        # A script is not run twice by itself (it may have written to apps): its run fails instead.
        scripts = await manager.get_stalled_jobs(task_name=SCRIPT_TASK, seconds_since_heartbeat=self.stalled_seconds)
        for job in scripts:
            try:
                await manager.finish_job_by_id_async(job.id, status=procrastinate.jobs.Status.FAILED, delete_job=False)  # type: ignore[arg-type]
            except Exception:  # another worker's watchdog was first
                continue
            if self._services is not None:
                await self._services.scripts.recover_stalled(int(job.task_kwargs["run_id"]))  # type: ignore[arg-type]
        if stalled or scripts:
            await manager.prune_stalled_workers(self.stalled_seconds)
        return run_ids
