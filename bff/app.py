"""Wiring: :func:`build_services` (every service of a web or worker process) and
:func:`create_app` (the HTTP API over them). Nothing else lives here."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import time
from collections.abc import AsyncIterator, Callable

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import Lifespan

from . import api, auth, openapi
from .connections import NoCookieJar, SandboxTransport
from .connectors import load_connectors
from .connectors.http11 import Http11Transport
from .crypto import Vault
from .db import database_url
from .errors import EXCEPTION_HANDLERS
from .events import AppEvents
from .files import secure_data_dir
from .jobs import SCRIPT_QUEUE, JobQueue
from .middleware import EdgeMiddleware
from .query_tables import QueryTables
from .runtime import Runtime
from .sandbox import SandboxOptions, create_sandbox_app
from .scripts.sandbox import ScriptModeError
from .scripts.service import ScriptService
from .services import Services
from .services.schedules import Scheduler, ScheduleReactions
from .services.sync import SyncRunner
from .settings import Settings
from .store import Store, migrate
from .tokens import TokenAuthority
from .warehouse import Warehouse
from .warehouse_limits import close_to_customers
from .warehouse_servers import WarehouseServers
from .warehouse_upgrade import move_customer as upgrade_customer
from .warehouse_upgrade import upgrade_warehouses
from .webhooks import Webhooks


class StartupError(RuntimeError):
    """The app cannot start with these settings; the message says why."""


async def check_encryption_key(store: Store, vault: Vault) -> None:
    """Refuse to start when the data was written with another encryption key."""
    stored = await store.set_meta_once("encryption_key_check", vault.key_check().hex())
    if not vault.matches(bytes.fromhex(stored)):
        raise StartupError(
            "BFF_ENCRYPTION_KEY does not match the key this database was written with. "
            "Restore the original key (secrets stored with it cannot be read with another)."
        )


async def healthz(request: Request) -> JSONResponse:
    """Liveness: the process answers and the store is reachable."""
    await auth.services(request).store.get_meta("encryption_key_check")
    return JSONResponse({"status": "ok"})


class ServiceContext:
    """Every service of one process, built (nothing opened yet): :attr:`services`. ``async with``
    opens them (migrations first, unless told not to; the store; the encryption-key check; the
    job queue) and, with ``settings.run_worker``, runs a worker in this process; on exit
    everything is stopped and closed in reverse order. ``create_app``'s lifespan and
    ``bff worker`` are both one ``async with`` of this."""

    def __init__(self, services: Services, *, migrate_on_start: bool) -> None:
        self.services = services
        self.migrate_on_start = migrate_on_start

    async def __aenter__(self) -> Services:
        self._stack = contextlib.AsyncExitStack()
        try:
            await self._stack.enter_async_context(self._running())
        except BaseException:
            await self._stack.aclose()
            raise
        return self.services

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()

    @contextlib.asynccontextmanager
    async def _running(self) -> AsyncIterator[None]:
        svc = self.services
        settings = svc.settings
        if self.migrate_on_start:
            await asyncio.to_thread(migrate, svc.store.url)
        await svc.store.open()
        try:
            await check_encryption_key(svc.store, svc.vault)
            await close_to_customers(svc.warehouse.servers)
            # Warehouses of an earlier release (schemas of the control database) move into databases.
            await upgrade_warehouses(svc.warehouse, svc.query_tables)
            await svc.queue.open()
            try:
                if settings.run_worker:
                    if SCRIPT_QUEUE in settings.worker_queues and not svc.scripts.serving_api:
                        http_app(svc)  # a worker's scripts call the API over their socket (bff worker)
                    svc.queue.start_worker(
                        concurrency=settings.sync_concurrency,
                        script_concurrency=settings.script_concurrency,
                        queues=settings.worker_queues,
                    )
                yield
            finally:
                await svc.queue.close()
                await svc.writeback.log.flush()  # write log lines still buffered (they are batched for 0.25 s)
        finally:
            await svc.http.aclose()
            await svc.scripts.close()
            await svc.webhooks.close()
            await svc.warehouse.close()
            await svc.store.close()


def build_services(
    settings: Settings, *, clock: Callable[[], float] = time.time, migrate_on_start: bool = True
) -> ServiceContext:
    """The services of a web or worker process, wired; nothing happens at import time and each
    call is independent. Without ``settings.database_url`` this starts (or reuses) the embedded
    PostgreSQL in the data directory."""
    # Every definition (BFF_CONNECTORS_DIR too) is read and validated here, once: a bad file stops the start.
    connectors = load_connectors()
    url = database_url(settings)
    # After the embedded server is up: its cluster may belong to another user, who keeps access.
    secure_data_dir(settings.data_dir)
    store = Store(url, clock=clock)
    sandbox_app = None
    # Provider calls go over the lean HTTP/1.1 transport (docs/architecture.md, "The provider client").
    transport: httpx.AsyncBaseTransport = Http11Transport()
    if settings.sandbox_enabled and not settings.sandbox_external_url:
        options = dataclasses.replace(
            SandboxOptions.from_env(settings.sandbox_env), redirect_uris=(settings.oauth_redirect_uri,)
        )
        sandbox_app = create_sandbox_app(options, clock=clock, state_dir=settings.data_dir)
        transport = SandboxTransport(sandbox_app, settings.sandbox_url, transport)
    queue = JobQueue(
        url,
        heartbeat_seconds=settings.heartbeat_seconds,
        stalled_seconds=settings.stalled_seconds,
        sql_watch_seconds=settings.sql_watch_seconds,
        sql_idle_seconds=settings.sql_idle_seconds,
    )
    servers = WarehouseServers(
        store, [url.reveal() for url in settings.warehouse_urls], vault=Vault(settings.encryption_key)
    )
    warehouse = Warehouse(store, servers, clock=clock)
    # One keep-alive client for every provider call of this process, which keeps no cookies.
    http = httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(120.0, connect=10.0),
        follow_redirects=False,
        cookies=NoCookieJar(),
    )
    runtime = Runtime(
        settings=settings,
        store=store,
        tokens=TokenAuthority(settings, clock=clock),
        vault=Vault(settings.encryption_key),
        clock=clock,
        http=http,
        connectors=connectors,
    )
    webhooks = Webhooks(store, runtime.vault, queue, allow_private=settings.webhook_allow_private)
    # Webhooks hear every event first (a health change says from→to); then the schedule plans
    # the first sync of a connection that became ready.
    events = AppEvents(webhooks, ScheduleReactions(runtime, queue, enabled=settings.schedules_enabled))
    runner = SyncRunner(runtime, warehouse, queue, events)
    # Runner roles' passwords are derived from the encryption key: nothing stores them.
    query_tables = QueryTables(store, warehouse, role_secret=settings.encryption_key.reveal().encode())
    warehouse.upgrade_customer = functools.partial(upgrade_customer, warehouse, query_tables)
    schedules = Scheduler(runtime, runner, queue, enabled=settings.schedules_enabled)
    try:
        scripts = ScriptService(runtime, queue, events)
    except ScriptModeError as exc:
        raise StartupError(str(exc)) from None
    services = Services.extend(
        runtime,
        warehouse=warehouse,
        queue=queue,
        sync=runner,
        query_tables=query_tables,
        schedules=schedules,
        webhooks=webhooks,
        scripts=scripts,
        events=events,
        sandbox=sandbox_app,
    )
    queue.bind(services)  # the jobs this process runs get these services in their context
    return ServiceContext(services, migrate_on_start=migrate_on_start)


class ApiApp(Starlette):
    """The HTTP API's Starlette and the process's services, read by every request through
    :func:`bff.auth.services`: a plain attribute (``app.state`` finds its attributes through
    ``__getattr__``, ten times slower)."""

    services: Services


def http_app(services: Services, *, lifespan: Lifespan[Starlette] | None = None) -> ApiApp:
    """The HTTP API over these services: routes, middleware, the one error handler. A worker
    without a web app (``bff worker``) builds it, with no lifespan and no port, only to answer its
    scripts over their socket."""
    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        *api.routes(),
    ]
    if services.sandbox is not None:
        routes.append(Mount("/sandbox", app=services.sandbox, name="sandbox"))
    routes.append(Route("/openapi.json", openapi.endpoint(routes), methods=["GET"], include_in_schema=False))
    app = ApiApp(
        routes=routes,
        middleware=[
            Middleware(
                EdgeMiddleware,
                max_bytes=services.settings.max_body_bytes,
                is_allowed=services.origin_registered,
                partner_of=services.tokens.partner_of,
                partner_has_origin=services.store.partners.has_origin,
                hsts=services.settings.hsts,
            ),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.services = services
    # Scripts reach the API over a socket of their own, served by this process.
    services.scripts.serve_api(app)
    return app


def create_app(settings: Settings, *, clock: Callable[[], float] = time.time, migrate_on_start: bool = True) -> ApiApp:
    """Build the BFF: :func:`build_services` and the HTTP API over them; the app's lifespan is the
    services' ``async with`` (migrations unless told not to, and a worker with ``run_worker``)."""
    context = build_services(settings, clock=clock, migrate_on_start=migrate_on_start)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with context:
            yield

    return http_app(context.services, lifespan=lifespan)
