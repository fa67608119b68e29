"""The application factory: wires settings, services, routes and middleware."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Mount, Route

from . import api, openapi
from .connections import NoCookieJar, SandboxTransport
from .connectors import load_connectors
from .crypto import Vault
from .db import database_url
from .errors import EXCEPTION_HANDLERS
from .events import AppEvents
from .files import secure_data_dir
from .jobs import JobQueue
from .middleware import AccessLogMiddleware, BodyLimitMiddleware, CORSMiddleware, SecurityHeadersMiddleware
from .query_tables import QueryTables
from .runtime import Runtime
from .sandbox import SandboxOptions, create_sandbox_app
from .scripts.sandbox import ScriptModeError
from .scripts.service import ScriptService
from .services import Services
from .services.schedules import Scheduler, ScheduleReactions
from .services.sync import SyncRunner
from .services.writeback import Writeback
from .settings import Settings
from .store import Store, migrate
from .tokens import TokenAuthority
from .warehouse import Warehouse
from .warehouse_servers import WarehouseServers
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
    svc: Services = request.app.state.services
    await svc.store.get_meta("encryption_key_check")
    return JSONResponse({"status": "ok"})


def create_app(
    settings: Settings, *, clock: Callable[[], float] = time.time, migrate_on_start: bool = True
) -> Starlette:
    """Build the BFF. Nothing happens at import time; each call is independent.

    Without ``settings.database_url`` this starts (or reuses) the embedded PostgreSQL
    in the data directory. Migrations run when the app starts, unless told not to.
    """
    # Every definition (BFF_CONNECTORS_DIR too) is read and validated here, once: a bad file stops the start.
    connectors = load_connectors()
    url = database_url(settings)
    # After the embedded server is up: its cluster may belong to another user, who keeps access.
    secure_data_dir(settings.data_dir)
    store = Store(url, clock=clock)
    sandbox_app = None
    transport: httpx.AsyncBaseTransport = httpx.AsyncHTTPTransport(retries=0)
    if settings.sandbox_enabled and not settings.sandbox_external_url:
        options = dataclasses.replace(
            SandboxOptions.from_env(settings.sandbox_env), redirect_uris=(settings.oauth_redirect_uri,)
        )
        sandbox_app = create_sandbox_app(options, clock=clock, state_dir=settings.data_dir)
        transport = SandboxTransport(sandbox_app, settings.sandbox_url, transport)
    queue = JobQueue(url, heartbeat_seconds=settings.heartbeat_seconds, stalled_seconds=settings.stalled_seconds)
    servers = WarehouseServers(store, [url.reveal() for url in settings.warehouse_urls])
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
    )

    writeback = Writeback(services)

    async def tick() -> None:
        await schedules.tick()
        await scripts.tick()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if migrate_on_start:
            await asyncio.to_thread(migrate, url)
        await store.open()
        try:
            await check_encryption_key(store, services.vault)
            await servers.close_control_database()
            await queue.open()
            try:
                if settings.run_worker:
                    queue.start_worker(
                        concurrency=settings.sync_concurrency,
                        on_sync=runner.execute,
                        on_stalled=runner.recover_stalled,
                        on_tick=tick if settings.schedules_enabled else None,
                        on_webhook=webhooks.deliver,
                        on_refresh=writeback.refresh.execute,
                        on_script=scripts.execute,
                        on_script_stalled=scripts.recover_stalled,
                        script_concurrency=settings.script_concurrency,
                        queues=settings.worker_queues,
                    )
                yield
            finally:
                await queue.close()
                await writeback.log.flush()  # write log lines still buffered (they are batched for 0.25 s)
        finally:
            await services.http.aclose()
            await scripts.close()
            await webhooks.close()
            await warehouse.close()
            await store.close()

    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        *api.routes(),
    ]
    if sandbox_app is not None:
        routes.append(Mount("/sandbox", app=sandbox_app, name="sandbox"))
    routes.append(Route("/openapi.json", openapi.endpoint(routes), methods=["GET"], include_in_schema=False))

    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(AccessLogMiddleware),
            Middleware(SecurityHeadersMiddleware, hsts=settings.hsts),
            Middleware(
                CORSMiddleware,
                is_allowed=services.origin_registered,
                partner_of=services.tokens.partner_of,
                partner_has_origin=store.partners.has_origin,
            ),
            Middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.services = services
    app.state.writeback = writeback
    scripts.serve_api(app)
    return app
