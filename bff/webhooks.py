"""Webhooks to the partner's back-end (DESIGN §11).

Events are recorded as deliveries (one row each, with a ``webhook-id`` that every attempt
repeats) and sent by the ``webhook_deliver`` job. Each attempt is signed the Standard Webhooks
way with the partner's *current* secret, has 10 s in total, and is logged. A failed attempt
is tried again after about 5 s, 5 min, 30 min, 2 h, 5 h and 10 h, then the delivery is
``failed``; ``redeliver`` starts a new series.

SSRF guard: only http(s) URLs; the host is resolved at send time and every address it has
must be globally reachable (``is_global``, plus the special-purpose ranges this Python may not
know; an IPv4 address carried inside an IPv6 one, mapped, 6to4, Teredo or NAT64, must be global
itself), unless ``BFF_WEBHOOK_ALLOW_PRIVATE=true``. The request then goes to the address that was checked
(pinned: ``Host`` header and TLS SNI carry the name), so a DNS answer that changes between the
check and the connection cannot redirect it.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import time
import unicodedata
import uuid
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx
from psycopg import AsyncConnection

from .crypto import Vault
from .jobs import JobQueue
from .shapes import health_event_data, run_event_data, script_event_data
from .store import Connection, HealthChange, Run, Store, SubAccount, iso
from .store.scripts import Script, ScriptRun
from .store.webhooks import Delivery, WebhookConfig, WebhookStore

__all__ = [
    "BACKOFF_SECONDS",
    "EVENT_TYPES",
    "RetryDecision",
    "UnsafeTarget",
    "Webhooks",
    "new_secret",
    "sign",
    "validate_url",
]

logger = logging.getLogger("bff.webhooks")

EVENT_TYPES = (
    "connection.created",
    "connection.health_changed",
    "connection.deleted",
    "sync.finished",
    "script.finished",
)
BACKOFF_SECONDS = (5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600)
DELIVERY_TIMEOUT = 10.0
# An outbox delivery still pending and unattempted this long after it was written may have no job.
UNQUEUED_AFTER = 60.0
SECRET_PREFIX = "whsec_"
MAX_URL_LENGTH = 2048


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value: ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def _secret_aad(partner_id: int) -> bytes:
    return f"webhook-secret:{int(partner_id)}".encode()


@dataclasses.dataclass(frozen=True)
class RetryDecision:
    """After a failed attempt: when to try again (None = give up)."""

    retry_at: float | None

    @classmethod
    def after(cls, attempts: int, now: float) -> RetryDecision:
        """``attempts`` made so far in this series (the first attempt is 1)."""
        if attempts > len(BACKOFF_SECONDS):
            return cls(None)
        return cls(now + BACKOFF_SECONDS[attempts - 1])


class UnsafeTarget(Exception):
    """The webhook URL may not be called (scheme, or an address that is not public)."""


def validate_url(value: Any) -> str:
    """Checks that need no DNS: an absolute http(s) URL with a host and no credentials, exactly as
    sent (no surrounding whitespace, no control characters: they would end up in a request line)."""
    if not isinstance(value, str) or not value.strip():
        raise UnsafeTarget("Must be an http:// or https:// URL.")
    url: str = value
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeTarget(f"Must be at most {MAX_URL_LENGTH} characters.")
    if url != url.strip():
        raise UnsafeTarget("Must not start or end with spaces.")
    if any(unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp") or char.isspace() for char in url):
        raise UnsafeTarget("Must not contain spaces or control characters (percent-encode them).")
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on a port that is not a number in range
    except ValueError:  # e.g. an unclosed IPv6 bracket, or a bad port
        raise UnsafeTarget("Is not a valid URL (check the host and the port).") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeTarget("Must be an http:// or https:// URL.")
    if parts.username or parts.password:
        raise UnsafeTarget("Must not contain a user name or password.")
    return url


# Not globally reachable, but ``is_global`` of older Pythons says they are (IANA special-purpose registries).
_NOT_GLOBAL = tuple(
    ipaddress.ip_network(network)
    for network in (
        "192.0.0.0/24",  # IETF protocol assignments (its two anycast addresses are no webhook either)
        "192.88.99.0/24",  # 6to4 relay anycast (deprecated)
        "fec0::/10",  # site-local (deprecated)
        "64:ff9b:1::/48",  # local-use NAT64
        "5f00::/16",  # SRv6 SIDs
        "3fff::/20",  # documentation
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # SIIT
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated; :: and ::1 are caught as themselves


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (a connection to it may end up at them)."""
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address.sixtofour is not None:
        return [address.sixtofour]
    if address.teredo is not None:
        return list(address.teredo)
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _NAT64 or address in _IPV4_TRANSLATED:
        return [low32]
    if address in _IPV4_COMPATIBLE and int(address) > 1:
        return [low32]
    return []


def _public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Globally reachable, and so is every IPv4 address it carries (SSRF guard)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded and not all(_public(inner) for inner in embedded):
            return False
        if embedded and (address.ipv4_mapped is not None or address in _IPV4_TRANSLATED or address in _IPV4_COMPATIBLE):
            return True  # the IPv4 address itself, written the IPv6 way; 6to4, Teredo, NAT64 must be global too
    return (
        address.is_global
        and not address.is_multicast
        and not any(address.version == net.version and address in net for net in _NOT_GLOBAL)
    )


async def resolve_target(url: str, *, allow_private: bool) -> tuple[str, int]:
    """The address to connect to for ``url``: every resolved address must be public (unless
    allowed); the first one is used."""
    parts = urlsplit(validate_url(url))
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UnsafeTarget(f"Could not resolve {host}: {exc.strerror or exc}") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not addresses:
        raise UnsafeTarget(f"{host} has no address.")
    if not allow_private:
        blocked = [str(a) for a in addresses if not _public(a)]
        if blocked:
            raise UnsafeTarget(
                f"{host} resolves to an address that is not public (private, loopback, link-local or reserved:"
                f" {blocked[0]}); refused. "
                "Set BFF_WEBHOOK_ALLOW_PRIVATE=true to allow it (development only)."
            )
    return str(addresses[0]), port


def pinned_request(url: str, address: str, port: int) -> tuple[str, dict[str, str], dict[str, Any]]:
    """The URL with the checked address in place of the name, the Host header, and the TLS SNI."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc_host = f"[{address}]" if ":" in address else address
    pinned = parts._replace(netloc=f"{netloc_host}:{port}").geturl()
    default_port = 443 if parts.scheme == "https" else 80
    host_header = host if port == default_port else f"{host}:{port}"
    extensions: dict[str, Any] = {"sni_hostname": host} if parts.scheme == "https" else {}
    return pinned, {"Host": host_header}, extensions


async def configure_webhook(
    table: WebhookStore, vault: Vault, partner_id: int, url: str, events: Sequence[str]
) -> tuple[WebhookConfig, str | None]:
    existing = await table.get(partner_id)
    if existing is not None:
        return await table.put(partner_id, url, events, None), None
    secret = new_secret()
    return await table.put(partner_id, url, events, vault.encrypt(secret.encode(), _secret_aad(partner_id))), secret


async def rotate_webhook_secret(table: WebhookStore, vault: Vault, partner_id: int) -> str | None:
    secret = new_secret()
    if not await table.set_secret(partner_id, vault.encrypt(secret.encode(), _secret_aad(partner_id))):
        return None
    return secret


def webhook_secret(vault: Vault, config: WebhookConfig) -> str:
    return vault.decrypt(config.secret, _secret_aad(config.partner_id)).decode()


class Webhooks:
    """The partner's webhook: configuration, events, and delivery attempts."""

    def __init__(
        self,
        store: Store,
        vault: Vault,
        queue: JobQueue,
        *,
        allow_private: bool = False,
        timeout: float = DELIVERY_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.store = store
        self.table = WebhookStore(store)
        self.vault = vault
        self.queue = queue
        self.allow_private = allow_private
        self.timeout = timeout
        self._transport = transport
        self._http: httpx.AsyncClient | None = None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(
                transport=self._transport or httpx.AsyncHTTPTransport(retries=0),
                timeout=httpx.Timeout(self.timeout),
                follow_redirects=False,
                trust_env=False,  # never through an environment proxy: it would bypass the address check
            )
        return self._http

    # -- configuration ---------------------------------------------------------------------

    async def configure(self, partner_id: int, url: str, events: Sequence[str]) -> tuple[WebhookConfig, str | None]:
        """Set the URL and events; a secret is made (and returned, once) only on first creation."""
        return await configure_webhook(self.table, self.vault, partner_id, url, events)

    async def rotate_secret(self, partner_id: int) -> tuple[WebhookConfig, str] | None:
        """The webhook with its new secret (None: no webhook)."""
        secret = await rotate_webhook_secret(self.table, self.vault, partner_id)
        config = None if secret is None else await self.table.get(partner_id)
        return None if config is None or secret is None else (config, secret)

    async def config(self, partner_id: int) -> WebhookConfig | None:
        return await self.table.get(partner_id)

    async def remove(self, partner_id: int) -> bool:
        return await self.table.delete(partner_id)

    async def deliveries(self, partner_id: int, *, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
        """Deliveries, newest first, each with every attempt."""
        return await self.table.list_deliveries(partner_id, offset=offset, limit=limit)

    def secret_of(self, config: WebhookConfig) -> str:
        return webhook_secret(self.vault, config)

    # -- events -----------------------------------------------------------------------------

    async def emit(self, partner_id: int, event_type: str, data: Mapping[str, Any]) -> Delivery | None:
        """Record the event for the partner's webhook (if it wants this type) and queue its delivery."""
        config = await self.table.get(partner_id)
        if config is None or event_type not in config.events:
            return None
        payload = {"type": event_type, "timestamp": iso(self.store.now()), "data": dict(data)}
        delivery = await self.table.create_delivery(partner_id, f"msg_{uuid.uuid4().hex}", event_type, payload)
        await self.queue.defer_webhook(delivery.id)
        return delivery

    async def _emit_for_account(self, sub_account_id: int, event_type: str, data: Mapping[str, Any]) -> None:
        account = await self.store.sub_accounts.get_by_id(sub_account_id)
        if account is None:
            return
        await self.emit(
            account.partner_id, event_type, {**data, "account_id": account.id, "external_id": account.external_id}
        )

    async def _emit_for_connection(
        self, sub_account_id: int, connection_id: int, event_type: str, data: dict[str, Any]
    ) -> None:
        """An event about a connection: its name and connector ride along while it still exists."""
        connection = await self.store.connections.get_by_id(connection_id)
        if connection is not None:
            data = {**data, "name": connection.name, "connector": connection.connector}
        await self._emit_for_account(sub_account_id, event_type, data)

    async def connection_created(self, account: SubAccount, connection: Connection) -> None:
        await self._emit_for_account(account.id, "connection.created", _connection_data(connection))

    async def connection_deleted(self, account: SubAccount, connection: Connection) -> None:
        await self._emit_for_account(account.id, "connection.deleted", _connection_data(connection))

    async def on_health_change(self, change: HealthChange) -> None:
        await self._emit_for_connection(
            change.sub_account_id, change.connection_id, "connection.health_changed", health_event_data(change)
        )

    async def record_run_end(self, conn: AsyncConnection[Any], run: Run, change: HealthChange | None) -> list[int]:
        """Inside the transaction that ends ``run``: its ``connection.health_changed`` (when the
        health changed) and ``sync.finished`` deliveries, committed with the run's end or not at
        all (an outbox). The deliveries' ids: :meth:`queue_deliveries` them once that is committed."""
        events = (
            [("connection.health_changed", health_event_data(change))] if change and change.old != change.new else []
        )
        events.append(("sync.finished", run_event_data(run)))
        return await self._record(conn, run.sub_account_id, run.connection_id, events)

    async def record_script_end(self, conn: AsyncConnection[Any], script: Script, run: ScriptRun) -> list[int]:
        """Inside the transaction that ends a script run: its ``script.finished`` delivery (an outbox)."""
        return await self._record(conn, run.sub_account_id, None, [("script.finished", script_event_data(script, run))])

    async def _record(
        self,
        conn: AsyncConnection[Any],
        sub_account_id: int,
        connection_id: int | None,
        events: Sequence[tuple[str, dict[str, Any]]],
    ) -> list[int]:
        """Write the deliveries of ``events`` the partner listens to, inside ``conn``'s transaction."""
        audience = await self.table.audience(conn, sub_account_id, connection_id)
        if audience is None:
            return []
        about: dict[str, Any] = {}
        if audience["name"] is not None:  # the connection's name and connector, while it exists
            about = {"name": audience["name"], "connector": audience["connector"]}
        about |= {"account_id": sub_account_id, "external_id": audience["external_id"]}
        ids = []
        for event_type, data in events:
            if event_type in audience["events"]:
                payload = {"type": event_type, "timestamp": iso(self.store.now()), "data": {**data, **about}}
                message_id = f"msg_{uuid.uuid4().hex}"
                delivery = await self.table.create_delivery(
                    audience["partner_id"], message_id, event_type, payload, conn=conn
                )
                ids.append(delivery.id)
        return ids

    async def queue_deliveries(self, delivery_ids: Sequence[int]) -> None:
        for delivery_id in delivery_ids:
            await self.queue.defer_webhook(delivery_id)

    async def queue_unqueued(self, *, after: float = UNQUEUED_AFTER) -> list[int]:
        """Queue the outbox's deliveries left without a job (the process stopped between the
        commit and :meth:`queue_deliveries`): pending, never attempted, older than ``after`` seconds, and
        no job of theirs in the queue. The scheduler tick calls it every minute."""
        candidates = await self.table.unqueued(older_than=self.store.now() - after)
        queued = await self.queue.webhook_jobs(candidates) if candidates else set()
        missing = [delivery_id for delivery_id in candidates if delivery_id not in queued]
        if missing:
            logger.warning("webhook deliveries %s had no job (queued now)", missing)
            await self.queue_deliveries(missing)
        return missing

    # -- delivery (inside a worker) ------------------------------------------------------------

    async def redeliver(self, partner_id: int, delivery_id: int) -> Delivery | None:
        delivery = await self.table.restart(delivery_id, partner_id)
        if delivery is not None:
            await self.queue.defer_webhook(delivery.id)
        return delivery

    async def deliver(self, delivery_id: int) -> None:
        """The body of a ``webhook_deliver`` job: one attempt, logged; a retry deferred if it failed."""
        delivery = await self.table.get_delivery(delivery_id)
        if delivery is None or delivery.status in ("delivered", "failed"):
            return
        config = await self.table.get(delivery.partner_id)
        if config is None:
            await self.table.record_attempt(
                delivery,
                url="",
                started_at=self.store.now(),
                duration_ms=0,
                status_code=None,
                error="The webhook was removed before this delivery.",
                status="failed",
                next_attempt_at=None,
            )
            return
        body = json.dumps(delivery.payload, separators=(",", ":"), ensure_ascii=False).encode()
        started = self.store.now()
        began = time.monotonic()
        status_code, error = await self._attempt(config, delivery.message_id, body)
        duration_ms = int((time.monotonic() - began) * 1000)
        if error is None and status_code is not None and 200 <= status_code < 300:
            await self.table.record_attempt(
                delivery,
                url=config.url,
                started_at=started,
                duration_ms=duration_ms,
                status_code=status_code,
                error=None,
                status="delivered",
                next_attempt_at=None,
            )
            return
        if error is None:
            error = f"The receiver answered {status_code}."
        # Back-off runs on the wall clock: the receiver checks timestamps against its own.
        decision = RetryDecision.after(delivery.attempts + 1, time.time())
        next_at = None if decision.retry_at is None else self.store.now() + (decision.retry_at - time.time())
        await self.table.record_attempt(
            delivery,
            url=config.url,
            started_at=started,
            duration_ms=duration_ms,
            status_code=status_code,
            error=error,
            status="failed" if decision.retry_at is None else "retrying",
            next_attempt_at=next_at,
        )
        if decision.retry_at is not None:
            await self.queue.defer_webhook(delivery.id, at=decision.retry_at)

    async def _attempt(self, config: WebhookConfig, message_id: str, body: bytes) -> tuple[int | None, str | None]:
        try:
            address, port = await resolve_target(config.url, allow_private=self.allow_private)
        except UnsafeTarget as exc:
            return None, str(exc)
        url, headers, extensions = pinned_request(config.url, address, port)
        timestamp = int(time.time())
        headers.update(
            {
                "Content-Type": "application/json",
                "User-Agent": "bff-webhooks/1",
                "webhook-id": message_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign(self.secret_of(config), message_id, timestamp, body),
            }
        )
        try:
            async with asyncio.timeout(self.timeout):  # the whole attempt, not each read
                response = await self._client().post(url, content=body, headers=headers, extensions=extensions)
        except TimeoutError:
            return None, f"No answer within {self.timeout:g} s."
        except httpx.TimeoutException:
            return None, f"No answer within {self.timeout:g} s."
        except httpx.HTTPError as exc:
            return None, f"Could not connect: {type(exc).__name__}: {exc}"[:500]
        return response.status_code, None


def _connection_data(connection: Connection) -> dict[str, Any]:
    return {
        "server_id": connection.id,
        "name": connection.name,
        "connector": connection.connector,
        "health_status": connection.health_status,
    }
