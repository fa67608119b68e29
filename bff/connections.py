"""Connection runtime: the catalogue, secrets at rest, and ConnectorSessions built from a connection.

Routes and the sync runner both come here; nothing else decrypts secrets.
"""

from __future__ import annotations

import dataclasses
import http.cookiejar
import urllib.request
from collections.abc import Mapping
from typing import Any

import httpx
from starlette.types import ASGIApp

from .connectors import Connector, ConnectorSession, OAuthClient, OAuthTokens, RetryPolicy
from .crypto import connection_aad
from .runtime import Runtime
from .sandbox.transport import answer_within_timeout
from .store import Connection

SANDBOX_CLIENT = ("bff-sandbox", "bff-sandbox-secret")


@dataclasses.dataclass(frozen=True)
class Secrets:
    credentials: dict[str, str]
    tokens: OAuthTokens | None = None

    def __repr__(self) -> str:
        return "Secrets(**********)"


class SandboxTransport(httpx.AsyncBaseTransport):
    """Send requests for ``<public url>/sandbox/…`` straight to the in-process sandbox app.

    The sandbox is mounted on this very server; going through the ASGI app saves
    a loopback round trip and lets tests run without a listening socket. Every
    other URL goes over the network as usual. Timeouts hold as over the network.
    """

    def __init__(self, sandbox_app: ASGIApp, sandbox_url: str, fallback: httpx.AsyncBaseTransport) -> None:
        self._prefix = sandbox_url.rstrip("/") + "/"
        self._root_path = httpx.URL(sandbox_url).path.rstrip("/")
        self._asgi = httpx.ASGITransport(app=sandbox_app, root_path=self._root_path)
        self._fallback = fallback

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if str(request.url).startswith(self._prefix):
            return await answer_within_timeout(self._asgi, request)
        return await self._fallback.handle_async_request(request)

    async def aclose(self) -> None:
        await self._fallback.aclose()


class NoCookieJar(http.cookiejar.CookieJar):
    """A cookie jar that keeps nothing.

    One HTTP client (one pool of keep-alive connections) serves every connection of
    every customer: a cookie one provider sets for customer A's call must never ride
    along on customer B's. Provider auth is always explicit (headers, parameters).
    """

    def extract_cookies(self, response: Any, request: urllib.request.Request) -> None:
        return None

    def set_cookie(self, cookie: http.cookiejar.Cookie) -> None:
        return None


def catalogue(services: Runtime) -> dict[str, Connector]:
    """Connectors this deployment offers: sandbox ones only with the sandbox on,
    OAuth2 ones only when their client credentials are configured."""
    offered: dict[str, Connector] = {}
    for name, connector in services.connectors.items():
        if name.startswith("sandbox_"):
            if services.settings.sandbox_enabled:
                offered[name] = connector
        elif connector.auth_type != "oauth2" or name in services.settings.oauth_apps:
            offered[name] = connector
    return offered


def connector_by_id(services: Runtime, servertype_id: Any) -> Connector | None:
    for connector in catalogue(services).values():
        if connector.id == servertype_id or connector.name == servertype_id:
            return connector
    return None


def oauth_client(services: Runtime, connector: Connector) -> OAuthClient | None:
    if connector.auth_type != "oauth2":
        return None
    redirect_uri = services.settings.oauth_redirect_uri
    if connector.name.startswith("sandbox_"):
        return OAuthClient(client_id=SANDBOX_CLIENT[0], client_secret=SANDBOX_CLIENT[1], redirect_uri=redirect_uri)
    app = services.settings.oauth_apps.get(connector.name)
    if app is None:
        return None
    secret = app.client_secret.reveal() if app.client_secret else None
    return OAuthClient(client_id=app.client_id, client_secret=secret, redirect_uri=redirect_uri)


def context(services: Runtime) -> dict[str, str]:
    return {"sandbox": services.settings.sandbox_url}


def seal_secrets(services: Runtime, connection_id: int, secrets: Secrets) -> bytes:
    payload = {"credentials": secrets.credentials, "tokens": secrets.tokens.to_dict() if secrets.tokens else None}
    return services.vault.encrypt_json(payload, connection_aad(connection_id, "secrets"))


def open_secrets(services: Runtime, connection: Connection) -> Secrets:
    if not connection.secrets:
        return Secrets(credentials={})
    data = services.vault.decrypt_json(connection.secrets, connection_aad(connection.id, "secrets"))
    tokens = OAuthTokens.from_dict(data["tokens"]) if data.get("tokens") else None
    return Secrets(credentials=dict(data.get("credentials") or {}), tokens=tokens)


async def save_secrets(services: Runtime, connection_id: int, secrets: Secrets) -> None:
    await services.store.connections.update(connection_id, secrets=seal_secrets(services, connection_id, secrets))


def session_for(
    services: Runtime,
    connector: Connector,
    *,
    credentials: Mapping[str, str] | None = None,
    config: Mapping[str, Any] | None = None,
    tokens: OAuthTokens | None = None,
    connection_id: int | None = None,
    log: Any = None,
    policy: RetryPolicy | None = None,
) -> ConnectorSession:
    """A session for ``connector``; when ``connection_id`` is given, refreshed
    OAuth tokens are re-encrypted and saved as soon as the provider issues them."""
    secrets_credentials = dict(credentials or {})

    async def persist_tokens(new_tokens: OAuthTokens) -> None:
        if connection_id is not None:
            await save_secrets(services, connection_id, Secrets(secrets_credentials, new_tokens))

    return ConnectorSession(
        connector,
        http=services.http,
        credentials=secrets_credentials,
        config=dict(config or {}),
        context=context(services),
        policy=policy or RetryPolicy.default(),
        oauth_client=oauth_client(services, connector),
        tokens=tokens,
        on_tokens=persist_tokens,
        log=log,
        clock=services.clock,
    )


def session_for_connection(
    services: Runtime, connection: Connection, *, log: Any = None, policy: RetryPolicy | None = None
) -> ConnectorSession:
    """The session the sync runner uses for a stored connection."""
    connector = services.connectors[connection.connector]
    secrets = open_secrets(services, connection)
    return session_for(
        services,
        connector,
        credentials=secrets.credentials,
        config=connection.config,
        tokens=secrets.tokens,
        connection_id=connection.id,
        log=log,
        policy=policy,
    )
