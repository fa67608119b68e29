"""The Python client's writeback functions, mirroring the source documents, against a real server."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from conftest import free_port, serve_in_thread
from sandbox_flows import connect_accounting, connect_crm

from bff.cli import create_partner
from bff.client import AsyncPartnerClient, BFFError, PartnerClient
from bff.settings import Settings
from bff.store import Store


async def connect_everything(base_url: str, integrate_token: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as browser:
        await connect_crm(browser, integrate_token)
        await connect_accounting(browser, integrate_token, ("101",))
        chat = await browser.post(
            "/api/servers",
            json={"servertype_id": "sandbox_chat", "api_key": "sandbox-chat-key"},
            headers={"Authorization": f"Bearer {integrate_token}"},
        )
        assert chat.status_code == 201, chat.text


async def test_the_documents_examples_with_the_sync_client(settings_factory: Callable[..., Settings]) -> None:
    port = free_port()
    settings = settings_factory(sandbox_enabled=True, public_url=f"http://127.0.0.1:{port}")
    with serve_in_thread(settings, port=port) as base_url:
        token = (await create_partner(settings, "acme", []))["token"]
        with PartnerClient(base_url, token) as partner:
            minted = partner.integrate_token("wood_123", first_name="John")
            await connect_everything(base_url, minted["token"])
            customer = partner.sub_account_client(external_id="wood_123")

            crm = customer.connect("Sandbox CRM")
            assert crm.name == "Sandbox CRM" and customer.connect(crm.id).id == crm.id
            assert {o["name"] for o in crm.objects()} == {"contact", "deal"}
            added = crm.add("contact", {"email": "john@acme.com", "first_name": "John", "last_name": "Doe"})
            assert added["id"] == "c_1251" and added["record"]["email"] == "john@acme.com"
            assert crm.update("contact", id=added["id"], company="Acme")["record"]["company"] == "Acme"
            assert crm.get("contact", added["id"])["record"]["company"] == "Acme"
            assert [c["id"] for c in crm.search("contact", email="john@acme.com")] == [added["id"]]
            assert (
                crm.upsert("contact", {"email": "john@acme.com", "last_name": "Smith"}, match="email")["id"]
                == added["id"]
            )
            crm.delete("contact", added["id"])
            assert crm.search("contact", email="john@acme.com") == []

            chat = customer.connect("Sandbox Chat")
            sent = chat.add("message", channel="QA", text="Data quality alert", idempotency_key="alert-1")
            assert chat.add("message", channel="QA", text="Data quality alert", idempotency_key="alert-1") == sent

            books = customer.connect("sandbox_accounting")
            invoice = books.add("invoice", division=101, customer="Wood Solutions", amount=120.0, timeout=True)
            assert invoice["id"] == "inv_101_0501"

            raw = crm.proxy("GET", "/contacts", params={"limit": 1})
            assert raw.status_code == 200 and raw.json()["results"][0]["id"] == "c_0001"

            with pytest.raises(BFFError) as invalid:
                crm.add("contact", {"first_name": "No mail"})
            assert invalid.value.code == "validation_error" and invalid.value.errors == {
                "email": "This field is required."
            }
            with pytest.raises(BFFError) as unsupported:
                chat.delete("message", sent["id"])
            assert unsupported.value.code == "object_not_supported" and unsupported.value.status == 404
            with pytest.raises(BFFError) as unknown:
                customer.connect("Odoo")
            assert unknown.value.code == "connection_not_found"

            run = customer.refresh_connection(connection_name="Sandbox CRM", is_async=False)
            assert run["status"] == "succeeded" and run["records"]["contacts"] == 1250
            queued = customer.refresh_connection(connection_id=chat.id)
            assert queued["syncing"] is True
            with pytest.raises(ValueError):
                customer.refresh_connection()


async def test_the_async_client(settings_factory: Callable[..., Settings]) -> None:
    port = free_port()
    settings = settings_factory(sandbox_enabled=True, public_url=f"http://127.0.0.1:{port}")
    with serve_in_thread(settings, port=port) as base_url:
        token = (await create_partner(settings, "acme", []))["token"]
        async with AsyncPartnerClient(base_url, token) as partner:
            minted = await partner.integrate_token("wood_9")
            await connect_everything(base_url, minted["token"])
            customer = await partner.sub_account_client(external_id="wood_9")
            crm = await customer.connect("Sandbox CRM")
            created = await crm.upsert("contact", {"email": "ann@acme.com"}, match="email", refresh=True)
            assert created["id"] == "c_1251" and created["refresh_queued"] is True
            assert [c["email"] for c in await crm.search("contact", email="ann@acme.com")] == ["ann@acme.com"]
            assert (await crm.get("contact", "c_1251"))["record"]["email"] == "ann@acme.com"
            assert (await crm.proxy("GET", "me")).json()["portal"] == "Sandbox CRM"
            await crm.delete("contact", "c_1251")
            run = await customer.refresh_connection(connection_id=crm.id, is_async=False)
            assert run["status"] == "succeeded"
        # The browser's integrate token cannot write.
        async with AsyncPartnerClient(base_url, token) as partner:
            from bff.client import AsyncSubAccountClient

            browser = AsyncSubAccountClient(base_url, minted["token"])
            with pytest.raises(BFFError) as refused:
                await (await browser.connect("Sandbox CRM")).add("contact", email="x@y.z")
            assert refused.value.code == "token_not_allowed" and refused.value.status == 403
            await browser.aclose()


async def test_waiting_returns_the_run_it_started_not_a_newer_one(
    settings_factory: Callable[..., Settings], database_url: str
) -> None:
    """refresh_connection(is_async=False) answers the run it started, even when another run (the
    refresh a write asked for) was queued after it, as happens on a busy machine."""
    port = free_port()
    settings = settings_factory(sandbox_enabled=True, public_url=f"http://127.0.0.1:{port}")
    with serve_in_thread(settings, port=port) as base_url:
        token = (await create_partner(settings, "acme", []))["token"]
        with PartnerClient(base_url, token) as partner:
            minted = partner.integrate_token("wood_9")
            async with httpx.AsyncClient(base_url=base_url) as browser:
                crm_id = int((await connect_crm(browser, minted["token"]))["id"])
            customer = partner.sub_account_client(external_id="wood_9")
            finished = customer.refresh_connection(connection_id=crm_id, is_async=False)
            run_id = int(finished["id"])
            assert finished["status"] == "succeeded" and next(customer.runs(crm_id))["id"] == run_id
            # A newer run now waits in the queue (created as the write-refresh job would).
            store = Store(database_url)
            await store.open()
            try:
                newer = await store.runs.create(crm_id, int(minted["account_id"]), task_id="later", tables=None)
            finally:
                await store.close()
            assert newer.id > run_id and next(customer.runs(crm_id))["status"] == "queued"
            assert customer._wait(crm_id, run_id)["id"] == run_id
