"""Partners and their sub-accounts: provisioning, lookups, token generations and the origins
allowed to embed the widget. Input is checked by the routes; this is what they then do."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ..store import Partner, SubAccount

if TYPE_CHECKING:
    from . import Services

logger = logging.getLogger("bff.warehouse")


class Partners:
    def __init__(self, services: Services) -> None:
        self.services = services

    # -- sub-accounts ------------------------------------------------------------------------

    async def find_sub_account(
        self, partner: Partner, *, account_id: int | None = None, external_id: str | None = None
    ) -> SubAccount | None:
        """One of this partner's sub-accounts by id or external id; another partner's is None."""
        return await self.services.store.sub_accounts.get(partner.id, account_id=account_id, external_id=external_id)

    async def create_sub_account(self, partner: Partner, external_id: str, fields: Mapping[str, str]) -> SubAccount:
        """A new sub-account; ``ExternalIdTaken`` (409) when the external id is in use."""
        return await self.services.store.sub_accounts.create(partner.id, external_id, fields)

    async def provision(self, partner: Partner, external_id: str, fields: Mapping[str, str]) -> SubAccount:
        """The sub-account with this external id, created on first use."""
        account, _created = await self.services.store.sub_accounts.get_or_create(partner.id, external_id, fields)
        return account

    async def sub_accounts(self, partner: Partner, *, offset: int, limit: int) -> tuple[int, list[SubAccount]]:
        return await self.services.store.sub_accounts.list_page(partner.id, offset=offset, limit=limit)

    async def delete_sub_account(self, account: SubAccount) -> None:
        """A sub-account with its connections, runs, scripts and query tables, then its database and
        every role of it."""
        svc = self.services
        # The rows first: a sync still running fails its next write instead of making the database again.
        await svc.store.sub_accounts.delete(account.partner_id, account.id)
        await svc.warehouse.drop_customer(account.id)
        logger.info("sub-account %s (external id %r) deleted with its warehouse", account.id, account.external_id)

    async def revoke_sub_account_tokens(self, partner: Partner, account_id: int) -> SubAccount | None:
        """End every integrate and identity token of one sub-account (None: not this partner's)."""
        return await self.services.store.sub_accounts.bump_generation(partner.id, account_id)

    # -- the partner itself --------------------------------------------------------------------

    async def with_origins(self, partner: Partner) -> Partner:
        found = await self.services.store.partners.get_with_origins(partner.id)
        assert found is not None
        return found

    async def has_origin(self, partner: Partner, origin: str) -> bool:
        return await self.services.store.partners.has_origin(partner.id, origin)

    async def rotate_token(self, partner: Partner, *, keep_customer_tokens: bool) -> tuple[Partner, str]:
        """A new partner token generation and its token; the older tokens stop (and the customer
        tokens minted with them, unless kept)."""
        svc = self.services
        rotated = await svc.store.partners.bump_generation(partner.id, keep_customer_tokens=keep_customer_tokens)
        assert rotated is not None
        return rotated, svc.tokens.mint_partner_token(partner_id=rotated.id, generation=rotated.token_generation).token

    async def revoke_tokens(self, partner: Partner) -> Partner:
        """Stop every token of the partner and every token minted with them."""
        revoked = await self.services.store.partners.bump_generation(partner.id)
        assert revoked is not None
        return revoked

    async def set_origins(self, partner: Partner, origins: Sequence[str]) -> Partner:
        """Replace the browser origins; this process's CORS cache forgets the old ones at once."""
        updated = await self.services.store.partners.set_origins(partner.id, origins)
        assert updated is not None
        self.services.forget_origins()
        return updated
