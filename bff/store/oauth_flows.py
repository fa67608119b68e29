"""The ``oauth_flows`` table: one-time sign-in tickets and states (hashed), the SQL behind
:mod:`bff.services.oauth_flows`."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from .base import build

if TYPE_CHECKING:
    from . import Store

__all__ = ["OAuthFlow", "OAuthFlowStore"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class OAuthFlow:
    connection_id: int
    sub_account_id: int
    purpose: str
    verifier: bytes | None
    created_at: float


class OAuthFlowStore:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def create(
        self, state_hash: str, *, connection_id: int, sub_account_id: int, purpose: str, verifier: bytes | None
    ) -> None:
        await self._store._one(
            "INSERT INTO oauth_flows (state_hash, connection_id, sub_account_id, purpose, verifier, created_at)"
            " VALUES (%s, %s, %s, %s, %s, %s) RETURNING state_hash",
            (state_hash, connection_id, sub_account_id, purpose, verifier, self._store.now()),
        )

    async def consume(self, state_hash: str, *, max_age: float) -> OAuthFlow | None:
        """Mark a flow used and return it; None when unknown, used already, or too old."""
        now = self._store.now()
        return build(
            OAuthFlow,
            await self._store._one(
                "UPDATE oauth_flows SET used_at = %(now)s WHERE state_hash = %(h)s AND used_at IS NULL"
                " AND created_at >= %(oldest)s RETURNING connection_id, sub_account_id, purpose, verifier, created_at",
                {"h": state_hash, "now": now, "oldest": now - max_age},
            ),
        )

    async def peek(self, state_hash: str, *, max_age: float) -> OAuthFlow | None:
        """A flow not used yet and young enough, left as it is (a page that only shows it)."""
        oldest = self._store.now() - max_age
        return build(
            OAuthFlow,
            await self._store._one(
                "SELECT connection_id, sub_account_id, purpose, verifier, created_at FROM oauth_flows"
                " WHERE state_hash = %s AND used_at IS NULL AND created_at >= %s",
                (state_hash, oldest),
            ),
        )

    async def retire_tickets(self, connection_id: int, prefixes: tuple[str, ...]) -> None:
        """Use up the connection's unused tickets (purposes starting with one of ``prefixes``):
        a sign-in starts once, whichever of its tickets started it."""
        async with self._store.pool.connection() as conn:
            await conn.execute(
                "UPDATE oauth_flows SET used_at = %s WHERE connection_id = %s AND used_at IS NULL"
                " AND purpose LIKE ANY(%s)",
                (self._store.now(), connection_id, [prefix + "%" for prefix in prefixes]),
            )
