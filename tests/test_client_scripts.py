"""The Python client's scripts and read-only queries, against a real server."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from conftest import serve_in_thread

from bff.cli import create_partner
from bff.client import AsyncPartnerClient, BFFError, PartnerClient
from bff.settings import Settings


async def test_add_run_and_read_a_script(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory(sandbox_enabled=True)
    with serve_in_thread(settings) as base_url:
        token = (await create_partner(settings, "acme", []))["token"]
        with PartnerClient(base_url, token) as partner:
            partner.create_sub_account("wood_123")
            customer = partner.sub_account_client(external_id="wood_123")
            script = customer.add_script("hello", "print(pq.get_state())\npq.set_state(41 + 1)", schedule=3600)
            assert script["schedule"] == 3600 and script["next_run_at"]
            assert [s["id"] for s in customer.scripts()] == [script["id"]]
            first = customer.run_script(script["id"], wait=60)
            assert first["status"] == "succeeded" and first["output"] == "None\n"
            second = customer.run_script(script["id"], wait=60)
            assert second["output"] == "42\n"
            assert [r["id"] for r in customer.script_runs(script["id"])] == [second["id"], first["id"]]
            changed = customer.update_script(script["id"], schedule=None, name="renamed")
            assert (
                changed["schedule"] is None
                and changed["name"] == "renamed"
                and changed["raw_code"] == script["raw_code"]
            )
            kept = customer.update_script(script["id"], code="print('v2')")
            assert kept["schedule"] is None and kept["raw_code"] == "print('v2')"
            assert customer.query("SELECT 1 + 1 AS two") == [{"two": 2}]
            with pytest.raises(BFFError) as refused:
                customer.query("SELECT 1; SELECT 2")
            assert refused.value.code == "query_invalid"
            with pytest.raises(BFFError) as invalid:
                customer.add_script("broken", "def (:")
            assert invalid.value.code == "validation_error" and "Line 1" in invalid.value.errors["raw_code"]
            customer.delete_script(script["id"])
            assert list(customer.scripts()) == []


async def test_async_client_scripts(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory(sandbox_enabled=True)
    with serve_in_thread(settings) as base_url:
        token = (await create_partner(settings, "acme", []))["token"]
        async with AsyncPartnerClient(base_url, token) as partner:
            await partner.create_sub_account("wood_9")
            customer = await partner.sub_account_client(external_id="wood_9")
            script = await customer.add_script("hello", "print('hi')")
            run = await customer.run_script(script["id"], wait=60)
            assert run["status"] == "succeeded" and run["output"] == "hi\n"
            assert [r["id"] async for r in customer.script_runs(script["id"])] == [run["id"]]
            assert await customer.query("SELECT 'x' AS y") == [{"y": "x"}]
            await customer.delete_script(script["id"])
