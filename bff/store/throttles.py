"""The ``throttles`` table (migration 0004): fixed-window hit counters shared by every process,
the SQL behind :mod:`bff.throttle`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from . import Store

__all__ = ["ThrottleStore"]


class ThrottleStore:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def hits(self, key: str, window_start: int) -> int:
        row = await self._store._one(
            "SELECT hits FROM throttles WHERE key = %s AND window_start = %s", (key, window_start)
        )
        return int(row["hits"]) if row else 0

    async def hit(self, key: str, window_start: int, *, expires_at: float) -> int:
        """Count one more hit in this window, atomically across processes; the new count."""
        row = await self._store._one(
            "INSERT INTO throttles (key, window_start, hits, expires_at) VALUES (%s, %s, 1, %s)"
            " ON CONFLICT (key, window_start) DO UPDATE SET hits = throttles.hits + 1 RETURNING hits",
            (key, window_start, expires_at),
        )
        assert row is not None
        return int(row["hits"])

    async def forget_expired(self) -> None:
        await self._store._one(
            "DELETE FROM throttles WHERE expires_at < %s RETURNING NULL AS gone", (self._store.now(),)
        )
