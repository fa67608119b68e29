"""The application factory: wires settings, services, routes and middleware."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Mount, Route

from . import connections_api, data_api, embed, openapi, partner_api, sync_api
from .connections import SandboxTransport
from .crypto import Vault
from .errors import EXCEPTION_HANDLERS
from .files import secure_data_dir
from .sandbox import SandboxOptions, create_sandbox_app
from .middleware import AccessLogMiddleware, BodyLimitMiddleware, CORSMiddleware, SecurityHeadersMiddleware
from .settings import Settings
from .store import Store
from .sync import SyncRunner
from .tokens import TokenAuthority

ORIGIN_CACHE_SECONDS = 2.0


class StartupError(RuntimeError):
    """The app cannot start with these settings; the message says why."""


@dataclasses.dataclass
class Services:
    settings: Settings
    store: Store
    tokens: TokenAuthority
    vault: Vault
    clock: Callable[[], float]
    http: httpx.AsyncClient
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)
    _origins: frozenset[str] = frozenset()
    _origins_loaded_at: float = float("-inf")

    async def origin_registered(self, origin: str) -> bool:
        # A short cache: `bff partner create` in another process shows up within seconds.
        now = time.monotonic()
        if now - self._origins_loaded_at > ORIGIN_CACHE_SECONDS:
            self._origins = await self.store.all_origins()
            self._origins_loaded_at = now
        if origin in self._origins:
            return True
        self._origins = await self.store.all_origins()
        self._origins_loaded_at = now
        return origin in self._origins

    def forget_origins(self) -> None:
        self._origins_loaded_at = float("-inf")


async def check_encryption_key(store: Store, vault: Vault) -> None:
    """Refuse to start when the data was written with another encryption key."""
    stored = await store.get_meta("encryption_key_check")
    if stored is None:
        await store.set_meta("encryption_key_check", vault.key_check().hex())
    elif not vault.matches(bytes.fromhex(stored)):
        raise StartupError(
            "BFF_ENCRYPTION_KEY does not match the key this data directory was written with. "
            "Restore the original key (secrets stored with it cannot be read with another)."
        )


async def healthz(request: Request) -> JSONResponse:
    """Liveness: the process answers and the store is reachable."""
    svc: Services = request.app.state.services
    await svc.store.get_meta("encryption_key_check")
    return JSONResponse({"status": "ok"})


def create_app(settings: Settings, *, clock: Callable[[], float] = time.time) -> Starlette:
    """Build the BFF. Nothing happens at import time; each call is independent."""
    secure_data_dir(settings.data_dir)
    store = Store(settings.data_dir, clock=clock)
    sandbox_app = None
    transport: httpx.AsyncBaseTransport = httpx.AsyncHTTPTransport(retries=0)
    if settings.sandbox_enabled:
        options = dataclasses.replace(
            SandboxOptions.from_env(settings.sandbox_env), redirect_uris=(settings.oauth_redirect_uri,)
        )
        sandbox_app = create_sandbox_app(options, clock=clock)
        transport = SandboxTransport(sandbox_app, settings.sandbox_url, transport)
    services = Services(
        settings=settings,
        store=store,
        tokens=TokenAuthority(settings, clock=clock),
        vault=Vault(settings.encryption_key),
        clock=clock,
        http=httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(120.0, connect=10.0), follow_redirects=False),
    )
    sync_runner = SyncRunner(services)  # registers itself (and the warehouse) in services.extras

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await store.open()
        try:
            await check_encryption_key(store, services.vault)
            await sync_runner.start()
            try:
                yield
            finally:
                await sync_runner.stop()
        finally:
            await services.http.aclose()
            await store.close()

    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        *partner_api.routes(),
        *connections_api.routes(),
        *sync_api.routes(),
        *data_api.routes(),
        *embed.routes(),
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
                partner_has_origin=store.partner_has_origin,
            ),
            Middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes),
        ],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        lifespan=lifespan,
    )
    app.state.services = services
    return app
