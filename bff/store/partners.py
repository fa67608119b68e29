"""The ``partners`` and ``partner_origins`` tables, and the joined reads that check a token's
caller (partner, sub-account, connection) in one round trip."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from psycopg import AsyncConnection

from .base import Row, build
from .batching import BatchedReads
from .connections import CONNECTION_COLUMNS, Connection
from .sub_accounts import SUB_ACCOUNT_COLUMNS, SubAccount

if TYPE_CHECKING:
    from . import Store

__all__ = ["Partner", "PartnerStore"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Partner:
    id: int
    name: str
    token_generation: int
    created_at: float
    # Integrate and identity tokens minted under a partner generation below this are revoked.
    customer_token_floor: int
    origins: tuple[str, ...] = ()


_PARTNER_FIELDS = ("id", "name", "token_generation", "created_at", "customer_token_floor")
_PARTNER_COLUMNS = ", ".join(_PARTNER_FIELDS)
# Partners and their sub-accounts by (partner id, external id), many keys in one query.
_PARTNERS_AND_SUB_ACCOUNTS = (
    "SELECT k.partner_id AS key_partner_id, k.external_id AS key_external_id,"
    f" {', '.join(f'p.{name} AS p_{name}' for name in _PARTNER_FIELDS)},"
    f" {', '.join('s.' + name.strip() for name in SUB_ACCOUNT_COLUMNS.split(','))}"
    # The keys travel as one JSON text: psycopg adapts it far cheaper than two arrays.
    " FROM json_to_recordset(%s::json) AS k(partner_id bigint, external_id text)"
    " JOIN partners p ON p.id = k.partner_id"
    " LEFT JOIN sub_accounts s ON s.partner_id = k.partner_id AND s.external_id = k.external_id"
)


def _aliased(table: str, columns: str) -> str:
    return ", ".join(f"{table}.{c.strip()} AS {table}_{c.strip()}" for c in columns.split(","))


# PartnerStore.caller: columns come back as p_*, s_*, c_* (partner, sub-account, connection).
_CALLER_QUERY = (
    f"SELECT {_aliased('p', _PARTNER_COLUMNS)}, {_aliased('s', SUB_ACCOUNT_COLUMNS)},"
    f" {_aliased('c', CONNECTION_COLUMNS)} FROM partners p"
    " LEFT JOIN sub_accounts s ON s.partner_id = p.id AND s.id = %(s)s"
    " LEFT JOIN connections c ON c.sub_account_id = s.id AND c.id = %(c)s"
    " WHERE p.id = %(p)s"
)


class PartnerStore:
    def __init__(self, store: Store) -> None:
        self._store = store
        # Token minting reads these under load: concurrent reads share one query.
        self._reads: BatchedReads[tuple[int, str], tuple[Partner | None, SubAccount | None]] = BatchedReads(
            self._fetch_with_sub_accounts, missing=(None, None)
        )

    async def create(self, name: str, origins: Sequence[str]) -> Partner:
        async with self._store.transaction() as conn:
            cur = await conn.execute(
                "INSERT INTO partners (name, created_at) VALUES (%(n)s, %(now)s) RETURNING id",
                {"n": name, "now": self._store.now()},
            )
            row = await cur.fetchone()
            assert row is not None
            partner_id = int(row["id"])
            await self._add_origins(conn, partner_id, origins)
            partner = await self._partner(conn, partner_id)
        assert partner is not None
        return partner

    async def get(self, partner_id: int) -> Partner | None:
        """The partner row without its origins (hot path); see :meth:`has_origin`."""
        return build(
            Partner, await self._store._one(f"SELECT {_PARTNER_COLUMNS} FROM partners WHERE id = %s", (partner_id,))
        )

    async def with_sub_account(self, partner_id: int, external_id: str) -> tuple[Partner | None, SubAccount | None]:
        """The partner and its sub-account ``external_id`` in one round trip (the token-minting hot path)."""
        return await self._reads.get((partner_id, external_id))

    async def _fetch_with_sub_accounts(
        self, keys: Sequence[tuple[int, str]]
    ) -> dict[tuple[int, str], tuple[Partner | None, SubAccount | None]]:
        keys_json = json.dumps([{"partner_id": p, "external_id": e} for p, e in keys], ensure_ascii=False)
        rows = await self._store._all(_PARTNERS_AND_SUB_ACCOUNTS, (keys_json,))
        found: dict[tuple[int, str], tuple[Partner | None, SubAccount | None]] = {}
        for row in rows:
            key = (row.pop("key_partner_id"), row.pop("key_external_id"))
            partner = Partner(**{name: row.pop(f"p_{name}") for name in _PARTNER_FIELDS})
            found[key] = (partner, SubAccount(**row) if row["id"] is not None else None)
        return found

    async def caller(
        self, partner_id: int, sub_account_id: int | None = None, connection_id: int | None = None
    ) -> tuple[Partner | None, SubAccount | None, Connection | None]:
        """A token's partner, its sub-account and a connection of that sub-account, in one round trip
        (the hot path of every API call; each part is None when it does not exist or is not asked for)."""
        row = await self._store._one(_CALLER_QUERY, {"p": partner_id, "s": sub_account_id, "c": connection_id})
        if row is None:
            return None, None, None
        parts: dict[str, Row] = {"p": {}, "s": {}, "c": {}}
        for key, value in row.items():
            parts[key[0]][key[2:]] = value
        account = SubAccount(**parts["s"]) if parts["s"]["id"] is not None else None
        connection = Connection(**parts["c"]) if parts["c"]["id"] is not None else None
        return Partner(**parts["p"]), account, connection

    async def get_with_origins(self, partner_id: int) -> Partner | None:
        async with self._store.connection() as conn:
            return await self._partner(conn, partner_id)

    async def find_by_name(self, name: str) -> Partner | None:
        async with self._store.connection() as conn:
            cur = await conn.execute("SELECT id FROM partners WHERE name = %s ORDER BY id LIMIT 1", (name,))
            row = await cur.fetchone()
            return await self._partner(conn, int(row["id"])) if row else None

    async def list_all(self) -> list[Partner]:
        async with self._store.connection() as conn:
            cur = await conn.execute("SELECT id FROM partners ORDER BY id")
            partners = [await self._partner(conn, int(row["id"])) for row in await cur.fetchall()]
        return [p for p in partners if p is not None]

    async def add_origins(self, partner_id: int, origins: Sequence[str]) -> None:
        async with self._store.transaction() as conn:
            await self._add_origins(conn, partner_id, origins)

    async def set_origins(self, partner_id: int, origins: Sequence[str]) -> Partner | None:
        async with self._store.transaction() as conn:
            await conn.execute("DELETE FROM partner_origins WHERE partner_id = %s", (partner_id,))
            await self._add_origins(conn, partner_id, origins)
            return await self._partner(conn, partner_id)

    async def _add_origins(self, conn: AsyncConnection[Any], partner_id: int, origins: Sequence[str]) -> None:
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO partner_origins (partner_id, origin) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                [(partner_id, origin) for origin in dict.fromkeys(origins)],
            )

    async def bump_generation(self, partner_id: int, *, keep_customer_tokens: bool = False) -> Partner | None:
        """A new partner token generation; unless ``keep_customer_tokens``, the integrate and
        identity tokens minted under the older ones end with it."""
        async with self._store.transaction() as conn:
            await conn.execute(
                "UPDATE partners SET token_generation = token_generation + 1,"
                " customer_token_floor = CASE WHEN %(keep)s THEN customer_token_floor ELSE token_generation + 1 END"
                " WHERE id = %(id)s",
                {"id": partner_id, "keep": keep_customer_tokens},
            )
            return await self._partner(conn, partner_id)

    async def has_origin(self, partner_id: int, origin: str) -> bool:
        row = await self._store._one(
            "SELECT 1 AS found FROM partner_origins WHERE partner_id = %s AND origin = %s", (partner_id, origin)
        )
        return row is not None

    async def all_origins(self) -> frozenset[str]:
        rows = await self._store._all("SELECT DISTINCT origin FROM partner_origins")
        return frozenset(str(row["origin"]) for row in rows)

    async def _partner(self, conn: AsyncConnection[Any], partner_id: int) -> Partner | None:
        cur = await conn.execute(f"SELECT {_PARTNER_COLUMNS} FROM partners WHERE id = %s", (partner_id,))
        row = await cur.fetchone()
        if row is None:
            return None
        cur = await conn.execute(
            "SELECT origin FROM partner_origins WHERE partner_id = %s ORDER BY origin", (partner_id,)
        )
        return Partner(**row, origins=tuple(r["origin"] for r in await cur.fetchall()))
