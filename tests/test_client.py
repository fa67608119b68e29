from __future__ import annotations

from collections.abc import Callable

import pytest
from conftest import serve_in_thread

from bff.cli import create_partner
from bff.client import AsyncPartnerClient, BFFError, PartnerClient
from bff.settings import Settings


async def test_sync_client_against_a_real_server(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory(sandbox_enabled=True)
    with serve_in_thread(settings) as base_url:
        token = (await create_partner(settings, "acme", []))["token"]
        with PartnerClient(base_url, token) as partner:
            created = partner.create_sub_account("wood_123", first_name="John", company_name="Wood")
            assert created["external_id"] == "wood_123"
            with pytest.raises(BFFError) as taken:
                partner.create_sub_account("wood_123")
            assert taken.value.code == "external_id_taken" and taken.value.status == 409
            for i in range(105):
                partner.create_sub_account(f"c{i:03d}")
            assert len(list(partner.sub_accounts(page_size=50))) == 106  # iterates every page
            minted = partner.integrate_token("new_one", first_name="Ann")
            assert minted["expires_in"] == 1800
            forever = partner.identity_token(external_id="new_one", expire=False)
            assert forever["expires_at"] is None
            customer = partner.sub_account_client(external_id="new_one")
            assert list(customer.connections()) == []
            with pytest.raises(BFFError) as missing:
                customer.connection(999)
            assert missing.value.code == "not_found" and missing.value.status == 404
            partner.revoke_tokens(minted["account_id"])
            with pytest.raises(BFFError) as revoked:
                list(customer.connections())
            assert revoked.value.code == "token_revoked"
            with pytest.raises(ValueError):
                partner.identity_token()


async def test_async_client_and_errors(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory()
    with serve_in_thread(settings) as base_url:
        token = (await create_partner(settings, "acme", []))["token"]
        async with AsyncPartnerClient(base_url, token) as partner:
            minted = await partner.integrate_token("a1")
            assert [a["external_id"] async for a in partner.sub_accounts()] == ["a1"]
            customer = await partner.sub_account_client(account_id=minted["account_id"])
            assert [c async for c in customer.connections()] == []
            with pytest.raises(BFFError) as bad:
                await partner.create_sub_account("")
            assert bad.value.code == "validation_error" and "external_id" in bad.value.errors
        async with AsyncPartnerClient(base_url, token + "x") as forged:
            with pytest.raises(BFFError) as invalid:
                await forged.integrate_token("a1")
            assert invalid.value.code == "token_invalid" and invalid.value.status == 401
    async with AsyncPartnerClient("http://127.0.0.1:9", token) as nowhere:
        with pytest.raises(BFFError) as down:
            await nowhere.integrate_token("a1")
        assert down.value.code == "connection_error"


async def test_a_sub_account_client_used_as_a_context_manager_leaves_the_partners_open(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory()
    with serve_in_thread(settings) as base_url:
        token = (await create_partner(settings, "acme", []))["token"]
        with PartnerClient(base_url, token) as partner:
            partner.create_sub_account("ctx_1")
            with partner.sub_account_client(external_id="ctx_1") as customer:
                assert list(customer.connections()) == []
            assert partner.identity_token(external_id="ctx_1")["token"]  # still open
        with pytest.raises(BFFError) as closed:  # its own client, closed by the with-block
            partner.identity_token(external_id="ctx_1")
        assert closed.value.code == "client_closed" and closed.value.status == 0
        async with AsyncPartnerClient(base_url, token) as apartner:
            async with await apartner.sub_account_client(external_id="ctx_1") as acustomer:
                assert [c async for c in acustomer.connections()] == []
            assert (await apartner.identity_token(external_id="ctx_1"))["token"]
        with pytest.raises(BFFError) as aclosed:
            await apartner.identity_token(external_id="ctx_1")
        assert aclosed.value.code == "client_closed"
