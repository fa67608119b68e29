"""The ``sub_accounts`` table: a partner's customers, by id or the partner's own external id."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..errors import Conflict
from .base import build

if TYPE_CHECKING:
    from . import Store

__all__ = ["ExternalIdTaken", "SUB_ACCOUNT_COLUMNS", "SUB_ACCOUNT_FIELDS", "SubAccount", "SubAccountStore"]

SUB_ACCOUNT_FIELDS = ("first_name", "last_name", "email", "language", "company_name")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SubAccount:
    id: int
    partner_id: int
    external_id: str
    first_name: str
    last_name: str
    email: str
    language: str
    company_name: str
    token_generation: int
    created_at: float
    warehouse_schema: str | None = None


class ExternalIdTaken(Conflict):
    code = "external_id_taken"

    def __init__(self, existing_id: int, external_id: str) -> None:
        super().__init__(f"A sub-account with external_id {external_id!r} already exists.", extra={"id": existing_id})
        self.existing_id = existing_id


SUB_ACCOUNT_COLUMNS = (
    "id, partner_id, external_id, first_name, last_name, email, language, company_name, token_generation, created_at,"
    " warehouse_schema"
)


class SubAccountStore:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def create(self, partner_id: int, external_id: str, fields: Mapping[str, str]) -> SubAccount:
        """Create a sub-account; raises :class:`ExternalIdTaken` when it exists."""
        account, created = await self._insert(partner_id, external_id, fields)
        if not created:
            raise ExternalIdTaken(account.id, external_id)
        return account

    async def get_or_create(
        self, partner_id: int, external_id: str, fields: Mapping[str, str]
    ) -> tuple[SubAccount, bool]:
        """Provision on first use. Safe under concurrency: the unique index decides."""
        existing = await self.get(partner_id, external_id=external_id)
        if existing is not None:
            return existing, False
        return await self._insert(partner_id, external_id, fields)

    async def _insert(self, partner_id: int, external_id: str, fields: Mapping[str, str]) -> tuple[SubAccount, bool]:
        values = {name: fields.get(name) or "" for name in SUB_ACCOUNT_FIELDS}
        values["language"] = values["language"] or "en"
        async with self._store.transaction() as conn:
            cur = await conn.execute(
                "INSERT INTO sub_accounts (partner_id, external_id, first_name, last_name, email, language,"
                " company_name, created_at) VALUES (%(partner_id)s, %(external_id)s, %(first_name)s, %(last_name)s,"
                " %(email)s, %(language)s, %(company_name)s, %(now)s)"
                f" ON CONFLICT (partner_id, external_id) DO NOTHING RETURNING {SUB_ACCOUNT_COLUMNS}",
                {"partner_id": partner_id, "external_id": external_id, "now": self._store.now(), **values},
            )
            row = await cur.fetchone()
            if row is not None:
                return SubAccount(**row), True
            cur = await conn.execute(
                f"SELECT {SUB_ACCOUNT_COLUMNS} FROM sub_accounts WHERE partner_id = %s AND external_id = %s",
                (partner_id, external_id),
            )
            existing = await cur.fetchone()
        assert existing is not None
        return SubAccount(**existing), False

    async def get(
        self, partner_id: int, *, account_id: int | None = None, external_id: str | None = None
    ) -> SubAccount | None:
        if account_id is not None:
            where, value = "id = %s", account_id
        elif external_id is not None:
            where, value = "external_id = %s", external_id  # type: ignore[assignment]
        else:
            return None
        return build(
            SubAccount,
            await self._store._one(
                f"SELECT {SUB_ACCOUNT_COLUMNS} FROM sub_accounts WHERE partner_id = %s AND {where}",
                (partner_id, value),
            ),
        )

    async def get_by_id(self, account_id: int) -> SubAccount | None:
        return build(
            SubAccount,
            await self._store._one(f"SELECT {SUB_ACCOUNT_COLUMNS} FROM sub_accounts WHERE id = %s", (account_id,)),
        )

    async def list_page(self, partner_id: int, *, offset: int, limit: int) -> tuple[int, list[SubAccount]]:
        count = await self._store._one("SELECT COUNT(*) AS n FROM sub_accounts WHERE partner_id = %s", (partner_id,))
        rows = await self._store._all(
            f"SELECT {SUB_ACCOUNT_COLUMNS} FROM sub_accounts WHERE partner_id = %s ORDER BY id LIMIT %s OFFSET %s",
            (partner_id, limit, offset),
        )
        return int(count["n"] if count else 0), [SubAccount(**row) for row in rows]

    async def delete(self, partner_id: int, account_id: int) -> bool:
        """The sub-account and, by cascade, its connections, runs, logs, scripts and query tables."""
        row = await self._store._one(
            "DELETE FROM sub_accounts WHERE id = %s AND partner_id = %s RETURNING id", (account_id, partner_id)
        )
        return row is not None

    async def bump_generation(self, partner_id: int, account_id: int) -> SubAccount | None:
        return build(
            SubAccount,
            await self._store._one(
                "UPDATE sub_accounts SET token_generation = token_generation + 1 WHERE id = %s AND partner_id = %s"
                f" RETURNING {SUB_ACCOUNT_COLUMNS}",
                (account_id, partner_id),
            ),
        )
