"""Everything a request handler or a job may use, typed: the runtime plus the warehouse, the queue,
the sync runner and the use-case services (built once per process by :func:`bff.app.build_services`)."""

from __future__ import annotations

import dataclasses
import functools
import time

from starlette.types import ASGIApp

from ..events import Events
from ..jobs import JobQueue
from ..query_tables import QueryTables
from ..runtime import Runtime
from ..scripts.service import ScriptService
from ..warehouse import Warehouse
from ..webhooks import Webhooks
from .connections import Connections
from .oauth_flows import OAuthFlows
from .partners import Partners
from .schedules import Scheduler
from .sync import SyncRunner
from .tables import Tables
from .writeback import Writeback

ORIGIN_CACHE_SECONDS = 2.0


@dataclasses.dataclass(kw_only=True)
class Services(Runtime):
    warehouse: Warehouse
    queue: JobQueue
    sync: SyncRunner
    query_tables: QueryTables
    schedules: Scheduler
    webhooks: Webhooks
    scripts: ScriptService
    events: Events
    sandbox: ASGIApp | None = None  # the fake providers, answered in-process (BFF_SANDBOX)
    _origins: frozenset[str] = frozenset()
    _origins_loaded_at: float = float("-inf")

    @functools.cached_property
    def connections(self) -> Connections:
        return Connections(self)

    @functools.cached_property
    def oauth(self) -> OAuthFlows:
        return OAuthFlows(self)

    @functools.cached_property
    def partners(self) -> Partners:
        return Partners(self)

    @functools.cached_property
    def tables(self) -> Tables:
        return Tables(self)

    @functools.cached_property
    def writeback(self) -> Writeback:
        return Writeback(self)

    @classmethod
    def extend(
        cls,
        runtime: Runtime,
        *,
        warehouse: Warehouse,
        queue: JobQueue,
        sync: SyncRunner,
        query_tables: QueryTables,
        schedules: Scheduler,
        webhooks: Webhooks,
        scripts: ScriptService,
        events: Events,
        sandbox: ASGIApp | None = None,
    ) -> Services:
        shared = {f.name: getattr(runtime, f.name) for f in dataclasses.fields(Runtime)}
        return cls(
            **shared,
            warehouse=warehouse,
            queue=queue,
            sync=sync,
            query_tables=query_tables,
            schedules=schedules,
            webhooks=webhooks,
            scripts=scripts,
            events=events,
            sandbox=sandbox,
        )

    async def origin_registered(self, origin: str) -> bool:
        # A short cache: `bff partner create` in another process shows up within seconds.
        now = time.monotonic()
        if now - self._origins_loaded_at > ORIGIN_CACHE_SECONDS:
            self._origins = await self.store.partners.all_origins()
            self._origins_loaded_at = now
        if origin in self._origins:
            return True
        self._origins = await self.store.partners.all_origins()
        self._origins_loaded_at = now
        return origin in self._origins

    def forget_origins(self) -> None:
        self._origins_loaded_at = float("-inf")
