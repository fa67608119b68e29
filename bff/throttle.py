"""Limits shared by every process, counted in the database (fixed windows per key).

A limit that is reached answers ``429`` with ``Retry-After`` (seconds until the window ends).
Counting happens in PostgreSQL, so N web processes enforce one limit, not N.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from collections.abc import Callable

from .errors import ApiError
from .store import Store
from .store.throttles import ThrottleStore

# One hit in this many also deletes expired windows (cheap housekeeping, no scheduler needed).
HOUSEKEEPING_ONE_IN = 200


@dataclasses.dataclass(frozen=True, kw_only=True)
class Limit:
    name: str
    hits: int
    seconds: int
    code: str
    detail: str


# Failed credential tests per sub-account and connector: the BFF is no password-guessing proxy.
FAILED_CREDENTIALS = Limit(
    name="credentials",
    hits=10,
    seconds=600,
    code="too_many_attempts",
    detail="Too many rejected credentials for this connector; wait before trying again.",
)
# New connections per sub-account (each may test credentials at the provider or start a sign-in).
CONNECTIONS_CREATED = Limit(
    name="connections",
    hits=30,
    seconds=600,
    code="too_many_attempts",
    detail="Too many new connections in a short time; wait before adding more.",
)
# Warehouse reads (applications, tables, rows) per token.
WAREHOUSE_READS = Limit(
    name="reads",
    hits=120,
    seconds=60,
    code="rate_limited",
    detail="Too many warehouse reads with this token; slow down.",
)


class Throttle:
    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self._store = ThrottleStore(store)
        self._clock = clock

    def _window(self, limit: Limit) -> tuple[int, float]:
        now = self._clock()
        start = int(now // limit.seconds) * limit.seconds
        return start, start + limit.seconds

    def _refusal(self, limit: Limit, ends: float) -> ApiError:
        wait = max(1, math.ceil(ends - self._clock()))
        return ApiError(429, limit.code, limit.detail, headers={"Retry-After": str(wait)})

    async def check(self, limit: Limit, key: str) -> None:
        """Refuse when the window's hits are used up, without counting this call."""
        start, ends = self._window(limit)
        if await self._store.hits(f"{limit.name}:{key}", start) >= limit.hits:
            raise self._refusal(limit, ends)

    async def hit(self, limit: Limit, key: str) -> int:
        """Count one hit (e.g. a failed attempt); the window's count so far."""
        start, ends = self._window(limit)
        if secrets.randbelow(HOUSEKEEPING_ONE_IN) == 0:
            await self._store.forget_expired()
        return await self._store.hit(f"{limit.name}:{key}", start, expires_at=ends)

    async def take(self, limit: Limit, key: str) -> None:
        """Count this call and refuse it if it is one too many."""
        _, ends = self._window(limit)
        if await self.hit(limit, key) > limit.hits:
            raise self._refusal(limit, ends)
