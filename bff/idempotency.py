"""Idempotency keys of writeback requests: the first answer, kept per connection for 24 hours.

``Idempotency-Key: <client value>`` on a write makes a retry safe: the same key
(on the same connection) with the same request answers the stored first answer
again without calling the provider; the same key with a different request is
``409 idempotency_key_reused``; while the first request is still running a
second one is ``409 idempotency_key_in_use``. Only answers that settle the
outcome are kept (2xx, and ``422 provider_rejected``); errors a client should
retry (timeouts, rate limits, a broken connection) release the key.

Keys live in the control database (table ``idempotency_keys``, migration 0003),
so every web process sees the same ones. :class:`IdempotencyStore` is the
interface the API uses; :class:`bff.store.idempotency.PgIdempotencyStore`
implements it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Protocol

__all__ = [
    "KEY_TTL",
    "Begin",
    "IdempotencyStore",
    "StoredAnswer",
    "fingerprint",
]

KEY_TTL = 24 * 3600.0  # seconds a key is remembered
STALE_RESERVATION = 600.0  # a reservation this old was left by a dead request: take it over
MAX_KEY_LENGTH = 255


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
