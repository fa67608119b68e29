"""Idempotency keys of writeback requests: the first answer, kept per connection for 24 hours.

``Idempotency-Key: <client value>`` on a write makes a retry safe: the same key
(on the same connection) with the same request answers the stored first answer
again without calling the provider; the same key with a different request is
``409 idempotency_key_reused``; while the first request is still running a
second one is ``409 idempotency_key_in_use``. Only answers that settle the
outcome are kept (2xx, and ``422 provider_rejected``); errors a client should
retry (timeouts, rate limits, a broken connection) release the key.

Keys live in the control database (table ``idempotency_keys``), so every web
process sees the same ones. :class:`IdempotencyStore` is the interface the API
uses; :class:`SqlIdempotencyStore` implements it with portable SQL.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from typing import Any, Protocol

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = [
    "KEY_TTL",
    "Begin",
    "IdempotencyStore",
    "SqlIdempotencyStore",
    "StoredAnswer",
    "fingerprint",
]

KEY_TTL = 24 * 3600.0  # seconds a key is remembered
STALE_RESERVATION = 600.0  # a reservation this old was left by a dead request: take it over
MAX_KEY_LENGTH = 255

TABLE_DDL = (
    """CREATE TABLE IF NOT EXISTS idempotency_keys (
        connection_id INTEGER NOT NULL REFERENCES connections(id) ON DELETE CASCADE,
        idem_key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        status INTEGER,
        response TEXT,
        created_at REAL NOT NULL,
        PRIMARY KEY (connection_id, idem_key)
    )""",
    "CREATE INDEX IF NOT EXISTS idempotency_keys_created ON idempotency_keys(created_at)",
)


@dataclasses.dataclass(frozen=True)
class StoredAnswer:
    status: int
    body: Any  # the JSON body (None for 204)


@dataclasses.dataclass(frozen=True)
class Begin:
    """The outcome of :meth:`IdempotencyStore.begin`: exactly one of the flags, or ``replay``."""

    reserved: bool = False
    in_use: bool = False
    reused: bool = False  # the key was first used for a different request
    replay: StoredAnswer | None = None


class IdempotencyStore(Protocol):
    async def begin(self, connection_id: int, key: str, fingerprint: str) -> Begin: ...

    async def finish(self, connection_id: int, key: str, answer: StoredAnswer) -> None: ...

    async def release(self, connection_id: int, key: str) -> None: ...


def fingerprint(method: str, target: str, query: dict[str, str], body: Any) -> str:
    """What makes two requests "the same": method, object/record, relevant query, and the body."""
    canonical = json.dumps([method, target, sorted(query.items()), body], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class SqlIdempotencyStore:
    """Keys in the ``idempotency_keys`` table of the control database (SQLite or PostgreSQL)."""

    def __init__(
        self, engine: AsyncEngine, *, clock: Callable[[], float] = time.time, create_table: bool = False
    ) -> None:
        self._engine = engine
        self._clock = clock
        self._create_table = create_table
        self._ready = not create_table
        self._swept_at = float("-inf")

    async def _prepare(self) -> None:
        if not self._ready:
            async with self._engine.begin() as conn:
                for statement in TABLE_DDL:
                    await conn.execute(text(statement))
            self._ready = True

    async def begin(self, connection_id: int, key: str, fingerprint: str) -> Begin:
        await self._prepare()
        now = float(self._clock())
        ids = {"c": connection_id, "k": key}
        async with self._engine.begin() as conn:
            if now - self._swept_at > 60:
                await conn.execute(
                    text("DELETE FROM idempotency_keys WHERE created_at < :cutoff"), {"cutoff": now - KEY_TTL}
                )
                self._swept_at = now
            row = (
                await conn.execute(
                    text(
                        "SELECT fingerprint, status, response, created_at FROM idempotency_keys "
                        "WHERE connection_id = :c AND idem_key = :k"
                    ),
                    ids,
                )
            ).first()
            if row is not None and row[3] < now - KEY_TTL:
                await conn.execute(text("DELETE FROM idempotency_keys WHERE connection_id = :c AND idem_key = :k"), ids)
                row = None
            if row is None:
                inserted = await conn.execute(
                    text(
                        "INSERT INTO idempotency_keys "
                        "(connection_id, idem_key, fingerprint, status, response, created_at) "
                        "VALUES (:c, :k, :f, NULL, NULL, :now) ON CONFLICT (connection_id, idem_key) DO NOTHING"
                    ),
                    {**ids, "f": fingerprint, "now": now},
                )
                if inserted.rowcount == 1:
                    return Begin(reserved=True)
                return Begin(in_use=True)  # a concurrent request inserted it first
            stored_fingerprint, status, response, created_at = row
            if stored_fingerprint != fingerprint:
                return Begin(reused=True)
            if status is None:
                if created_at < now - STALE_RESERVATION:
                    await conn.execute(
                        text(
                            "UPDATE idempotency_keys SET created_at = :now WHERE connection_id = :c AND idem_key = :k"
                        ),
                        {**ids, "now": now},
                    )
                    return Begin(reserved=True)
                return Begin(in_use=True)
            return Begin(replay=StoredAnswer(int(status), json.loads(response) if response else None))

    async def finish(self, connection_id: int, key: str, answer: StoredAnswer) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE idempotency_keys SET status = :s, response = :r WHERE connection_id = :c AND idem_key = :k"
                ),
                {
                    "c": connection_id,
                    "k": key,
                    "s": answer.status,
                    "r": json.dumps(answer.body) if answer.body is not None else None,
                },
            )

    async def release(self, connection_id: int, key: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                text("DELETE FROM idempotency_keys WHERE connection_id = :c AND idem_key = :k AND status IS NULL"),
                {"c": connection_id, "k": key},
            )
