"""What happened, told to whoever reacts: one typed interface, passed into the constructors that
emit (:class:`bff.sync.SyncRunner`, :class:`bff.services.Services`) and called at the point
where it happened (:func:`bff.lifecycle.transition`, the end of a run, a connection added or
deleted). :class:`AppEvents` is the app's: webhooks hear every event first, then the schedule
reacts to health changes (a connection that became ready syncs at once).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from . import lifecycle

if TYPE_CHECKING:
    from psycopg import AsyncConnection

    from .services.schedules import ScheduleReactions
    from .store import Connection, HealthChange, Run, SubAccount
    from .store.scripts import Script, ScriptRun
    from .webhooks import Webhooks

logger = logging.getLogger("bff.events")


class Events(Protocol):
    async def health_changed(self, change: HealthChange) -> None: ...

    async def run_ending(self, conn: AsyncConnection[Any], run: Run, change: HealthChange | None) -> Sequence[int]:
        """Inside the transaction that ends ``run`` (and changes the connection's health): write
        what must exist exactly when that end does; what :meth:`run_ended` acts on."""
        ...

    async def run_ended(self, run: Run, change: HealthChange | None, written: Sequence[int]) -> None:
        """Once the run's end is committed."""
        ...

    async def connection_created(self, account: SubAccount, connection: Connection) -> None: ...

    async def connection_deleted(self, account: SubAccount, connection: Connection) -> None: ...

    async def script_ending(self, conn: AsyncConnection[Any], script: Script, run: ScriptRun) -> Sequence[int]:
        """Inside the transaction that ends a script run: what must exist exactly when that end does."""
        ...

    async def script_ended(self, run: ScriptRun, written: Sequence[int]) -> None:
        """Once the script run's end is committed."""
        ...


class AppEvents:
    """Webhooks to the partner, then the schedule. A reaction that fails is logged: it must never
    undo (or fail) what already happened."""

    def __init__(self, webhooks: Webhooks, schedules: ScheduleReactions) -> None:
        self.webhooks = webhooks
        self.schedules = schedules

    async def health_changed(self, change: HealthChange) -> None:
        for react in (self.webhooks.on_health_change, self.schedules.on_health_change):
            try:
                await react(change)
            except Exception:
                logger.exception("reacting to the health change of connection %s failed", change.connection_id)

    async def run_ending(self, conn: AsyncConnection[Any], run: Run, change: HealthChange | None) -> Sequence[int]:
        """The webhook's events of the run's end, in its transaction (a failure here undoes the end:
        the run is finished again, by its retry or the stalled-run recovery)."""
        return await self.webhooks.record_run_end(conn, run, change)

    async def run_ended(self, run: Run, change: HealthChange | None, written: Sequence[int]) -> None:
        """Queue the deliveries written with the run's end; then the schedule hears of the health
        change (a connection that became ready syncs at once)."""
        try:
            await self.webhooks.queue_deliveries(written)
        except Exception:  # they are in the outbox: the scheduler tick queues them
            logger.exception("queueing the webhook deliveries of run %s failed", run.id)
        if change is not None and change.old != change.new:
            try:
                await self.schedules.on_health_change(change)
            except Exception:
                logger.exception("reacting to the health change of connection %s failed", change.connection_id)

    async def connection_created(self, account: SubAccount, connection: Connection) -> None:
        """Tell the partner; a connection that starts ready (credentials tested) syncs at once."""
        await self.webhooks.connection_created(account, connection)
        if lifecycle.syncs_on_entry(connection.health_status):
            await self.schedules.on_connection_ready(connection)

    async def connection_deleted(self, account: SubAccount, connection: Connection) -> None:
        await self.webhooks.connection_deleted(account, connection)

    async def script_ending(self, conn: AsyncConnection[Any], script: Script, run: ScriptRun) -> Sequence[int]:
        """The ``script.finished`` delivery, in the transaction that ends the run (an outbox)."""
        return await self.webhooks.record_script_end(conn, script, run)

    async def script_ended(self, run: ScriptRun, written: Sequence[int]) -> None:
        try:
            await self.webhooks.queue_deliveries(written)
        except Exception:  # they are in the outbox: the scheduler tick queues them
            logger.exception("queueing the webhook deliveries of script run %s failed", run.id)
