"""Schedules (DESIGN §10): a first sync as soon as a connection is ready, then one every
``sync_frequency`` seconds, with optional per-table frequencies.

Each connection keeps when each of its tables is due next (``table_due``) and the earliest of
those (``next_sync_at``). :meth:`Scheduler.tick` — the body of the ``bff:scheduler_tick`` job,
deferred by procrastinate's periodic registry every minute and right after a connection becomes
ready — queues one run per due connection covering only the due tables. Several workers never
run anything twice: procrastinate defers the periodic job once per period, each connection is
claimed with a compare-and-set on ``next_sync_at``, and the runs table's unique index refuses a
second active run. The clock is the app's (``create_app(clock=)``), so tests move time by hand.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from .. import lifecycle
from ..connectors import Connector
from ..errors import Invalid
from ..jobs import JobQueue
from ..lifecycle import Health
from ..runtime import Runtime
from ..store import Connection, HealthChange, Run, RunAlreadyActive
from .sync import ConnectionNotReady, SyncRunner, chosen_streams

logger = logging.getLogger("bff.schedules")

MIN_SYNC_FREQUENCY = 300
MAX_SYNC_FREQUENCY = 366 * 24 * 3600
BUSY_RETRY_SECONDS = 60.0  # a due connection with a run still going is tried again this much later


class ScheduleError(Invalid):
    """Field-level validation errors of a schedule, in the contract's ``errors`` shape."""

    errors: dict[str, str]


def parse_frequency(value: Any, field: str) -> int | None:
    """A frequency in whole seconds between 300 and a year, or None (on demand only)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ScheduleError({field: "Must be a whole number of seconds, or null for on demand only."})
    seconds = int(value)
    if seconds < MIN_SYNC_FREQUENCY:
        raise ScheduleError({field: f"Must be at least {MIN_SYNC_FREQUENCY} seconds."})
    if seconds > MAX_SYNC_FREQUENCY:
        raise ScheduleError({field: f"Must be at most {MAX_SYNC_FREQUENCY} seconds (a year)."})
    return seconds


def parse_table_frequencies(value: Any, tables: list[str]) -> dict[str, int]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ScheduleError({"table_frequencies": 'Must be an object of table name to seconds, e.g. {"deals": 3600}.'})
    errors: dict[str, str] = {}
    parsed: dict[str, int] = {}
    for name, seconds in value.items():
        key = f"table_frequencies.{name}"
        if name not in tables:
            errors[key] = f"Unknown table. This connection has: {', '.join(tables)}."
            continue
        try:
            frequency = parse_frequency(seconds, key)
        except ScheduleError as exc:
            errors.update(exc.errors)
            continue
        if frequency is None:
            errors[key] = "Must be a number of seconds (remove the table to use sync_frequency)."
            continue
        parsed[name] = frequency
    if errors:
        raise ScheduleError(errors)
    return parsed


def table_frequency(connection: Connection, table: str) -> int | None:
    return connection.table_frequencies.get(table, connection.sync_frequency)


def streams_of(connectors: Mapping[str, Connector], connection: Connection) -> list[str]:
    connector = connectors.get(connection.connector)
    return chosen_streams(connector, connection) if connector else []


def replanned(connectors: Mapping[str, Connector], connection: Connection, now: float) -> dict[str, float]:
    """The due times after the schedule changed: a table keeps an earlier due time, gets one
    ``frequency`` from now if it had none, and loses it when it is on demand only."""
    due: dict[str, float] = {}
    for table in streams_of(connectors, connection):
        frequency = table_frequency(connection, table)
        if frequency is None:
            continue
        later = now + frequency
        current = connection.table_due.get(table)
        due[table] = later if current is None else min(float(current), later)
    return due


class ScheduleReactions:
    """What a health change does to a connection's schedule (no sync runner needed: the events
    are built before it)."""

    def __init__(self, runtime: Runtime, queue: JobQueue, *, enabled: bool = True) -> None:
        self.runtime = runtime
        self.store = runtime.store
        self.queue = queue
        self.enabled = enabled

    def now(self) -> float:
        return float(self.runtime.clock())

    async def on_health_change(self, change: HealthChange) -> None:
        """Ready (again): every table is due now. Disabled: nothing is scheduled."""
        if change.new == Health.DISABLED:
            await self.store.connections.set_schedule(change.connection_id, {})
        elif lifecycle.syncs_on_entry(change.new) and self.enabled:
            connection = await self.store.connections.get_by_id(change.connection_id)
            if connection is not None:
                await self.on_connection_ready(connection)

    async def on_connection_ready(self, connection: Connection) -> None:
        """Every table is due now; the tick is deferred at once."""
        if self.enabled:
            now = self.now()
            tables = streams_of(self.runtime.connectors, connection)
            await self.store.connections.set_schedule(connection.id, {table: now for table in tables})
            await self.queue.defer_tick()


class Scheduler:
    """Decides which connections are due and queues their runs."""

    def __init__(self, runtime: Runtime, runner: SyncRunner, queue: JobQueue, *, enabled: bool = True) -> None:
        self.runtime = runtime
        self.store = runtime.store
        self.runner = runner
        self.queue = queue
        self.enabled = enabled

    def now(self) -> float:
        return float(self.runtime.clock())

    async def schedule_changed(self, connection: Connection) -> Connection:
        """After ``PATCH``: recompute the due times of a connection that is already scheduled."""
        if not self.enabled:
            return connection  # nothing is scheduled in this deployment (BFF_SCHEDULES=false)
        if not lifecycle.can_schedule(connection.health_status) or (
            not connection.table_due and lifecycle.syncs_on_entry(connection.health_status)
        ):
            return connection  # its first sync, when it comes, plans from the new frequencies
        await self.store.connections.set_schedule(
            connection.id, replanned(self.runtime.connectors, connection, self.now())
        )
        updated = await self.store.connections.get_by_id(connection.id)
        assert updated is not None
        return updated

    # -- the tick -----------------------------------------------------------------------------

    async def tick(self) -> list[Run]:
        """Queue a run for every due connection (only its due tables); the runs queued."""
        now = self.now()
        queued: list[Run] = []
        for connection in await self.store.connections.list_due(now):
            run = await self._tick_connection(connection, now)
            if run is not None:
                queued.append(run)
        return queued

    async def _tick_connection(self, connection: Connection, now: float) -> Run | None:
        if not lifecycle.can_schedule(connection.health_status):
            # Disabled or waiting for the customer: nothing runs until it is ready again,
            # and becoming ready schedules it afresh.
            await self.store.connections.claim_schedule(connection, {})
            return None
        streams = streams_of(self.runtime.connectors, connection)
        due_tables = [t for t in streams if t in connection.table_due and connection.table_due[t] <= now]
        after = self._after_run(connection, streams, due_tables, now)
        if not due_tables or not await self.store.connections.claim_schedule(connection, after):
            return None  # nothing of ours is due, or another scheduler claimed it first
        account = await self.store.sub_accounts.get_by_id(connection.sub_account_id)
        if account is None:
            return None
        tables = None if set(due_tables) == set(streams) else due_tables
        try:
            return await self.runner.request_sync(account, connection, tables, trigger="schedule")
        except RunAlreadyActive:
            # A run is going (someone pressed Sync): try these tables again a little later.
            retry = {**after, **{t: now + BUSY_RETRY_SECONDS for t in due_tables}}
            await self.store.connections.set_schedule(connection.id, retry)
        except ConnectionNotReady:
            await self.store.connections.set_schedule(connection.id, {})
        return None

    @staticmethod
    def _after_run(
        connection: Connection, streams: list[str], due_tables: list[str], now: float
    ) -> Mapping[str, float]:
        after: dict[str, float] = {}
        for table in streams:
            frequency = table_frequency(connection, table)
            if table in due_tables:
                if frequency is not None:
                    after[table] = now + frequency
            elif table in connection.table_due:
                after[table] = connection.table_due[table]
        return after
