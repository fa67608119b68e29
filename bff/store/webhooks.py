"""The ``webhooks``, ``webhook_deliveries`` and ``webhook_attempts`` tables (migration
i12_schedules_webhooks): the SQL behind :mod:`bff.webhooks`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from .base import iso

if TYPE_CHECKING:
    from . import Store

__all__ = ["Delivery", "WebhookConfig", "WebhookStore"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class WebhookConfig:
    partner_id: int
    url: str
    events: list[str]
    secret: bytes  # AES-GCM ciphertext of the whsec_ secret
    created_at: float
    updated_at: float

    def __repr__(self) -> str:
        return (
            f"WebhookConfig(partner_id={self.partner_id}, url={self.url!r}, events={self.events!r}, secret=**********)"
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Delivery:
    id: int
    partner_id: int
    message_id: str
    event_type: str
    payload: dict[str, Any]
    status: str
    attempts: int
    next_attempt_at: float | None
    created_at: float
    delivered_at: float | None


_DELIVERY_COLUMNS = (
    "id, partner_id, message_id, event_type, payload, status, attempts, next_attempt_at, created_at, delivered_at"
)


class WebhookStore:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def get(self, partner_id: int) -> WebhookConfig | None:
        row = await self._store._one(
            "SELECT partner_id, url, events, secret, created_at, updated_at FROM webhooks WHERE partner_id = %s",
            (partner_id,),
        )
        return WebhookConfig(**row) if row else None

    async def put(self, partner_id: int, url: str, events: Sequence[str], secret: bytes | None) -> WebhookConfig:
        """Create or replace the partner's webhook; ``secret`` None keeps the current one."""
        now = self._store.now()
        if secret is None:
            row = await self._store._one(
                "UPDATE webhooks SET url = %s, events = %s, updated_at = %s WHERE partner_id = %s"
                " RETURNING partner_id, url, events, secret, created_at, updated_at",
                (url, Jsonb(list(events)), now, partner_id),
            )
        else:
            row = await self._store._one(
                "INSERT INTO webhooks (partner_id, url, events, secret, created_at, updated_at)"
                " VALUES (%(p)s, %(u)s, %(e)s, %(s)s, %(now)s, %(now)s)"
                " ON CONFLICT (partner_id) DO UPDATE SET url = EXCLUDED.url, events = EXCLUDED.events,"
                " secret = EXCLUDED.secret, updated_at = EXCLUDED.updated_at"
                " RETURNING partner_id, url, events, secret, created_at, updated_at",
                {"p": partner_id, "u": url, "e": Jsonb(list(events)), "s": secret, "now": now},
            )
        assert row is not None
        return WebhookConfig(**row)

    async def set_secret(self, partner_id: int, secret: bytes) -> bool:
        row = await self._store._one(
            "UPDATE webhooks SET secret = %s, updated_at = %s WHERE partner_id = %s RETURNING partner_id",
            (secret, self._store.now(), partner_id),
        )
        return row is not None

    async def delete(self, partner_id: int) -> bool:
        return (
            await self._store._one("DELETE FROM webhooks WHERE partner_id = %s RETURNING partner_id", (partner_id,))
            is not None
        )

    # -- deliveries --------------------------------------------------------------------------

    async def create_delivery(
        self,
        partner_id: int,
        message_id: str,
        event_type: str,
        payload: Mapping[str, Any],
        *,
        conn: AsyncConnection[Any] | None = None,
    ) -> Delivery:
        """A pending delivery; with ``conn``, inside that connection's transaction (the outbox of
        what that transaction changed: committed with it or not at all)."""
        now = self._store.now()
        query = (
            "INSERT INTO webhook_deliveries (partner_id, message_id, event_type, payload, status, next_attempt_at, created_at)"
            f" VALUES (%s, %s, %s, %s, 'pending', %s, %s) RETURNING {_DELIVERY_COLUMNS}"
        )
        params = (partner_id, message_id, event_type, Jsonb(dict(payload)), now, now)
        if conn is None:
            row = await self._store._one(query, params)
        else:
            row = await (await conn.execute(query, params)).fetchone()
        assert row is not None
        return Delivery(**row)

    async def audience(
        self, conn: AsyncConnection[Any], sub_account_id: int, connection_id: int | None
    ) -> dict[str, Any] | None:
        """Inside ``conn``'s transaction: who hears of a connection's events (the partner's id and
        webhook events, the sub-account's external id) and the connection's name and connector
        (None while it is gone); None when the partner has no webhook."""
        cur = await conn.execute(
            "SELECT s.partner_id, s.external_id, w.events, c.name, c.connector FROM sub_accounts s"
            " JOIN webhooks w ON w.partner_id = s.partner_id LEFT JOIN connections c ON c.id = %s WHERE s.id = %s",
            (connection_id, sub_account_id),
        )
        row: dict[str, Any] | None = await cur.fetchone()
        return row

    async def unqueued(self, *, older_than: float, limit: int = 500) -> list[int]:
        """Pending deliveries never attempted and older than ``older_than`` (a timestamp): the
        outbox rows whose job may not have been queued (the process stopped after the commit)."""
        rows = await self._store._all(
            "SELECT id FROM webhook_deliveries WHERE status = 'pending' AND attempts = 0 AND created_at < %s"
            " ORDER BY id LIMIT %s",
            (older_than, limit),
        )
        return [int(row["id"]) for row in rows]

    async def get_delivery(self, delivery_id: int, *, partner_id: int | None = None) -> Delivery | None:
        if partner_id is None:
            row = await self._store._one(
                f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = %s", (delivery_id,)
            )
        else:
            row = await self._store._one(
                f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = %s AND partner_id = %s",
                (delivery_id, partner_id),
            )
        return Delivery(**row) if row else None

    async def record_attempt(
        self,
        delivery: Delivery,
        *,
        url: str,
        started_at: float,
        duration_ms: int,
        status_code: int | None,
        error: str | None,
        status: str,
        next_attempt_at: float | None,
    ) -> None:
        """Log one attempt and move the delivery on, in one transaction."""
        async with self._store.transaction() as conn:
            cur = await conn.execute(
                "SELECT COUNT(*) AS n FROM webhook_attempts WHERE delivery_id = %s", (delivery.id,)
            )
            counted = await cur.fetchone()
            number = int(counted["n"] if counted else 0) + 1
            await conn.execute(
                "INSERT INTO webhook_attempts (delivery_id, attempt, url, started_at, duration_ms, status_code, error)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (delivery.id, number, url, started_at, duration_ms, status_code, error),
            )
            await conn.execute(
                "UPDATE webhook_deliveries SET attempts = attempts + 1, status = %s, next_attempt_at = %s,"
                " delivered_at = CASE WHEN %s = 'delivered' THEN %s ELSE delivered_at END WHERE id = %s",
                (status, next_attempt_at, status, self._store.now(), delivery.id),
            )

    async def restart(self, delivery_id: int, partner_id: int) -> Delivery | None:
        """Redelivery: a fresh series of attempts (same message id)."""
        row = await self._store._one(
            "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = %s"
            f" WHERE id = %s AND partner_id = %s RETURNING {_DELIVERY_COLUMNS}",
            (self._store.now(), delivery_id, partner_id),
        )
        return Delivery(**row) if row else None

    async def list_deliveries(self, partner_id: int, *, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
        count = await self._store._one(
            "SELECT COUNT(*) AS n FROM webhook_deliveries WHERE partner_id = %s", (partner_id,)
        )
        rows = await self._store._all(
            f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE partner_id = %s ORDER BY id DESC LIMIT %s OFFSET %s",
            (partner_id, limit, offset),
        )
        deliveries = [Delivery(**row) for row in rows]
        attempts: dict[int, list[dict[str, Any]]] = {d.id: [] for d in deliveries}
        if deliveries:
            for row in await self._store._all(
                "SELECT delivery_id, attempt, url, started_at, duration_ms, status_code, error FROM webhook_attempts"
                " WHERE delivery_id = ANY(%s) ORDER BY id",
                ([d.id for d in deliveries],),
            ):
                attempts[int(row["delivery_id"])].append(
                    {
                        "attempt": row["attempt"],
                        "url": row["url"],
                        "at": iso(row["started_at"]),
                        "duration_ms": row["duration_ms"],
                        "status_code": row["status_code"],
                        "error": row["error"],
                    }
                )
        return int(count["n"] if count else 0), [
            {
                "id": d.id,
                "webhook_id": d.message_id,
                "type": d.event_type,
                "status": d.status,
                "attempts": attempts[d.id],
                "next_attempt_at": iso(d.next_attempt_at) if d.status in ("pending", "retrying") else None,
                "created_at": iso(d.created_at),
                "delivered_at": iso(d.delivered_at),
                "payload": d.payload,
            }
            for d in deliveries
        ]
