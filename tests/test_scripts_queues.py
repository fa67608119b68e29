"""Scripts never in the way of syncs (issue 20): their own queue and slots, a cap per customer."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable

import pytest
from conftest import auth, running_bff
from records_helpers import crm, customer
from scripts_helpers import add_script

from bff.settings import Settings, SettingsError, parse_queues

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")


async def test_one_customers_long_scripts_do_not_hold_up_another_customers_sync(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory(sandbox_enabled=True, sync_concurrency=2, script_timeout_seconds=90)
    async with running_bff(settings) as bff:
        busy = [await customer(bff, "cust-busy-1"), await customer(bff, "cust-busy-2")]
        other = await customer(bff, "cust-other")
        connection = await crm(bff, other)
        await bff.services.sync.wait(connection)  # its first sync, as soon as it connected
        scripts = []  # (who, script id): 3 long scripts of each busy customer, 6 in all
        for who in busy:
            for n in range(3):
                script = await add_script(bff, who, "import time\ntime.sleep(60)\n", name=f"sleep {n}")
                assert (await bff.client.post(f"/api/interface/{script}/run", headers=who.headers)).status_code == 202
                scripts.append((who, script))

        async def statuses() -> list[str]:
            found = []
            for who, script in scripts:
                runs = (await bff.client.get(f"/api/interface/{script}/runs", headers=who.headers)).json()
                found.append(runs["results"][0]["status"])
            return found

        deadline = time.monotonic() + 30
        while (await statuses()).count("running") < 2:  # as many as there are sync slots
            assert time.monotonic() < deadline, await statuses()
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)  # the queued ones have been tried (and put back) at least once

        started = time.monotonic()
        answer = await bff.client.post(f"/api/server/{connection}/sync?wait=30", json={}, headers=auth(other.identity))
        took = time.monotonic() - started
        assert answer.status_code == 200, answer.text
        assert answer.json()["run"]["status"] == "succeeded", answer.json()
        assert took < 15, f"the other customer's sync waited {took:.1f} s behind scripts"

        # One script of each busy customer runs at a time; the others wait, visibly queued.
        now = await statuses()
        assert now[:3].count("running") == 1 and now[3:].count("running") == 1 and now.count("queued") == 4, now
        for who, script in scripts:  # deleting a script stops its run
            assert (await bff.client.delete(f"/api/interface/{script}", headers=who.headers)).status_code == 204


async def test_a_customers_cap_leaves_the_other_slot_to_another_customer(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory(sandbox_enabled=True, script_timeout_seconds=90)
    async with running_bff(settings) as bff:
        busy, other = await customer(bff, "cust-cap-a"), await customer(bff, "cust-cap-b")
        sleepers = [await add_script(bff, busy, "import time\ntime.sleep(60)\n", name=f"s{n}") for n in range(2)]
        for script in sleepers:
            assert (await bff.client.post(f"/api/interface/{script}/run", headers=busy.headers)).status_code == 202
        quick = await add_script(bff, other, "print('mine')")
        started = time.monotonic()
        answer = await bff.client.post(f"/api/interface/{quick}/run?wait=30", headers=other.headers)
        assert answer.status_code == 200 and answer.json()["status"] == "succeeded", answer.text
        assert time.monotonic() - started < 15
        for script in sleepers:
            assert (await bff.client.delete(f"/api/interface/{script}", headers=busy.headers)).status_code == 204


def test_queues_are_named_and_checked(settings_factory: Callable[..., Settings]) -> None:
    assert parse_queues(" sync, scripts ,sync") == ("sync", "scripts")
    assert settings_factory(worker_queues=("scripts",)).worker_queues == ("scripts",)
    with pytest.raises(SettingsError, match="BFF_WORKER_QUEUES must name some of sync, webhooks, scheduler, scripts"):
        settings_factory(worker_queues=("syncs",))
    with pytest.raises(SettingsError, match="BFF_SCRIPT_CONCURRENCY must be at least 1"):
        settings_factory(script_concurrency=0)
