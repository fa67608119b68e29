"""The ``refresh_requests`` table (migration p1314_refresh_requests): the SQL behind
:class:`bff.services.writeback.RefreshRequests`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from . import Store

__all__ = ["ALL_STREAMS", "RefreshRequestStore"]

ALL_STREAMS = "*"


class RefreshRequestStore:
    """Which tables of a connection wait for their refresh sync, shared by every process."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def add(self, connection_id: int, streams: Iterable[str]) -> None:
        async with self._store.connection() as conn:
            await conn.execute(
                "INSERT INTO refresh_requests (connection_id, stream, requested_at)"
                " SELECT %s, s, %s FROM unnest(%s::text[]) AS s ON CONFLICT DO NOTHING",
                (connection_id, self._store.now(), list(streams)),
            )

    async def take(self, connection_id: int) -> set[str]:
        """Remove and return what the connection's writes asked for (empty when nothing waits)."""
        async with self._store.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM refresh_requests WHERE connection_id = %s RETURNING stream", (connection_id,)
            )
            return {str(row["stream"]) for row in await cur.fetchall()}
