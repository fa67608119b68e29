"""The ``idempotency_keys`` table (migration 0003): the SQL behind :mod:`bff.idempotency`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from psycopg.types.json import Jsonb

from ..idempotency import KEY_TTL, STALE_RESERVATION, Begin, StoredAnswer

if TYPE_CHECKING:
    from . import Store

__all__ = ["PgIdempotencyStore"]

SWEEP_EVERY = 60.0  # seconds between deletions of expired keys (by whichever request comes first)


class PgIdempotencyStore:
    """:class:`bff.idempotency.IdempotencyStore` on the control database.

    ``begin`` inserts the key with ``ON CONFLICT DO NOTHING``: of two concurrent
    first requests exactly one reserves the key; the other sees it in use.
    """

    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        self._swept_at = float("-inf")

    async def begin(self, connection_id: int, key: str, fingerprint: str) -> Begin:
        now = float(self._clock())
        ids = {"c": connection_id, "k": key}
        async with self._store.transaction() as conn:
            if now - self._swept_at > SWEEP_EVERY:
                await conn.execute(
                    "DELETE FROM idempotency_keys WHERE created_at < %(cutoff)s", {"cutoff": now - KEY_TTL}
                )
                self._swept_at = now
            await conn.execute(
                "DELETE FROM idempotency_keys"
                " WHERE connection_id = %(c)s AND idem_key = %(k)s AND created_at < %(cutoff)s",
                {**ids, "cutoff": now - KEY_TTL},
            )
            cur = await conn.execute(
                "INSERT INTO idempotency_keys (connection_id, idem_key, fingerprint, status, response, created_at)"
                " VALUES (%(c)s, %(k)s, %(f)s, NULL, NULL, %(now)s)"
                " ON CONFLICT (connection_id, idem_key) DO NOTHING RETURNING created_at",
                {**ids, "f": fingerprint, "now": now},
            )
            if await cur.fetchone() is not None:
                return Begin(reserved=True)
            cur = await conn.execute(
                "SELECT fingerprint, status, response, created_at FROM idempotency_keys"
                " WHERE connection_id = %(c)s AND idem_key = %(k)s FOR UPDATE",
                ids,
            )
            row = await cur.fetchone()
            if row is None:  # deleted between the two statements: the caller may simply retry
                return Begin(in_use=True)
            if row["fingerprint"] != fingerprint:
                return Begin(reused=True)
            if row["status"] is None:
                if row["created_at"] < now - STALE_RESERVATION:  # left by a request that died
                    await conn.execute(
                        "UPDATE idempotency_keys SET created_at = %(now)s"
                        " WHERE connection_id = %(c)s AND idem_key = %(k)s",
                        {**ids, "now": now},
                    )
                    return Begin(reserved=True)
                return Begin(in_use=True)
            return Begin(replay=StoredAnswer(int(row["status"]), row["response"]))

    async def finish(self, connection_id: int, key: str, answer: StoredAnswer) -> None:
        async with self._store.connection() as conn:
            await conn.execute(
                "UPDATE idempotency_keys SET status = %(s)s, response = %(r)s"
                " WHERE connection_id = %(c)s AND idem_key = %(k)s",
                {
                    "c": connection_id,
                    "k": key,
                    "s": answer.status,
                    "r": Jsonb(answer.body) if answer.body is not None else None,
                },
            )

    async def release(self, connection_id: int, key: str) -> None:
        async with self._store.connection() as conn:
            await conn.execute(
                "DELETE FROM idempotency_keys WHERE connection_id = %(c)s AND idem_key = %(k)s AND status IS NULL",
                {"c": connection_id, "k": key},
            )
