"""What happened, told to whoever reacts: one typed interface, passed into the constructors that
emit (:class:`bff.sync.SyncRunner`, :class:`bff.services.Services`) and called at the point
where it happened (:func:`bff.lifecycle.transition`, the end of a run, a connection added or
deleted). :class:`AppEvents` is the app's: webhooks hear every event first, then the schedule
reacts to health changes (a connection that became ready syncs at once).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from . import lifecycle

if TYPE_CHECKING:
    from .services.schedules import ScheduleReactions
    from .store import Connection, HealthChange, Run, SubAccount
    from .store.scripts import Script, ScriptRun
    from .webhooks import Webhooks

logger = logging.getLogger("bff.events")


class Events(Protocol):
    async def health_changed(self, change: HealthChange) -> None: ...

    async def run_finished(self, run: Run) -> None: ...

    async def connection_created(self, account: SubAccount, connection: Connection) -> None: ...

    async def connection_deleted(self, account: SubAccount, connection: Connection) -> None: ...

    async def script_finished(self, script: Script, run: ScriptRun) -> None: ...


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

    async def run_finished(self, run: Run) -> None:
        try:
            await self.webhooks.on_run_finished(run)
        except Exception:  # the run has ended either way
            logger.exception("reacting to the end of run %s failed", run.id)

    async def connection_created(self, account: SubAccount, connection: Connection) -> None:
        """Tell the partner; a connection that starts ready (credentials tested) syncs at once."""
        await self.webhooks.connection_created(account, connection)
        if lifecycle.syncs_on_entry(connection.health_status):
            await self.schedules.on_connection_ready(connection)

    async def connection_deleted(self, account: SubAccount, connection: Connection) -> None:
        await self.webhooks.connection_deleted(account, connection)

    async def script_finished(self, script: Script, run: ScriptRun) -> None:
        try:
            await self.webhooks.on_script_finished(script, run)
        except Exception:  # the run has ended either way
            logger.exception("reacting to the end of script run %s failed", run.id)
