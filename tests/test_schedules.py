"""Schedules and the connection lifecycle (DESIGN §10): the scheduler's tick with an injected
clock, PATCH of the schedule, disable/enable, full syncs and ?wait=."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from conftest import BFF, FakeClock, auth, running_bff
from sandbox_flows import connect_accounting, connect_bank, connect_crm
from sync_helpers import customer

from bff.settings import Settings
from bff.shapes import run_dict

T0 = 1_800_000_000.0


@contextlib.asynccontextmanager
async def scheduled(
    settings_factory: Callable[..., Settings], clock: FakeClock, **overrides: Any
) -> AsyncIterator[BFF]:
    """A BFF with schedules on and no worker: the test ticks and executes runs itself."""
    settings = settings_factory(sandbox_enabled=True, schedules_enabled=True, run_worker=False, **overrides)
    async with running_bff(settings, clock=clock) as bff:
        yield bff


async def execute_all(bff: BFF, runs: list[Any]) -> None:
    """Do what a worker does with the runs' jobs: execute them, and mark the jobs done (which
    frees their queueing lock)."""
    for run in runs:
        await bff.services.sync.execute(run.id)
        job_id = (await bff.services.store.runs.get(run.id)).job_id
        async with bff.services.store.connection() as conn:
            await conn.execute("UPDATE procrastinate_jobs SET status = 'succeeded' WHERE id = %s", (job_id,))


async def server(bff: BFF, token: str, connection_id: int) -> dict[str, Any]:
    answer = await bff.client.get(f"/api/server/{connection_id}", headers=auth(token))
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


async def runs_of(bff: BFF, token: str, connection_id: int) -> list[dict[str, Any]]:
    _, runs = await bff.services.store.runs.list_page(connection_id, offset=0, limit=100)
    return [run_dict(run) for run in runs]


class Customer:
    """A partner and one sub-account; ``token()`` mints a fresh integrate token (the injected
    clock moves hours ahead, and integrate tokens live 30 minutes)."""

    def __init__(self, bff: BFF) -> None:
        self.bff = bff
        self.partner_token = ""

    async def token(self) -> str:
        if not self.partner_token:
            _, self.partner_token = await self.bff.partner("sched")
        return str((await self.bff.integrate(self.partner_token, "cust-1"))["token"])


async def test_first_sync_when_ok_then_every_sync_frequency_and_never_twice(
    settings_factory: Callable[..., Settings],
) -> None:
    clock = FakeClock(T0)
    async with scheduled(settings_factory, clock) as bff:
        token, _ = await customer(bff)
        connection = await connect_bank(bff.client, token)
        shown = await server(bff, token, connection["id"])
        assert shown["sync_frequency"] == 21600 and shown["table_frequencies"] == {}
        assert shown["next_sync_at"] == "2027-01-15T08:00:00.000Z"  # due at once: the first sync

        first = await bff.services.schedules.tick()
        assert [(r.connection_id, r.tables, r.trigger) for r in first] == [(connection["id"], None, "schedule")]
        assert await bff.services.schedules.tick() == []  # claimed: not due any more
        await execute_all(bff, first)
        assert (await server(bff, token, connection["id"]))["next_sync_at"] == "2027-01-15T14:00:00.000Z"

        clock.advance(21599)
        assert await bff.services.schedules.tick() == []
        clock.advance(1)
        # Three ticks at once (as three workers would): exactly one run.
        ticks = await asyncio.gather(*(bff.services.schedules.tick() for _ in range(3)))
        assert sum(len(t) for t in ticks) == 1
        await execute_all(bff, [r for t in ticks for r in t])
        assert (await bff.services.store.connections.get_by_id(connection["id"])).next_sync_at == T0 + 2 * 21600
        runs = await runs_of(bff, token, connection["id"])
        assert [r["trigger"] for r in runs] == ["schedule", "schedule"]
        assert all(r["status"] == "succeeded" for r in runs)


async def test_two_processes_ticking_the_same_database_queue_one_run(settings_factory: Callable[..., Settings]) -> None:
    clock = FakeClock(T0)
    async with scheduled(settings_factory, clock) as one, scheduled(settings_factory, clock) as two:
        token, _ = await customer(one)
        connection = await connect_bank(one.client, token)
        ticks = await asyncio.gather(one.services.schedules.tick(), two.services.schedules.tick())
        assert sum(len(t) for t in ticks) == 1
        assert len(await runs_of(one, token, connection["id"])) == 1


async def test_null_frequency_is_on_demand_only(settings_factory: Callable[..., Settings]) -> None:
    clock = FakeClock(T0)
    async with scheduled(settings_factory, clock) as bff:
        who = Customer(bff)
        token = await who.token()
        connection = await connect_bank(bff.client, token)
        await execute_all(bff, await bff.services.schedules.tick())
        patched = await bff.client.patch(
            f"/api/server/{connection['id']}", json={"sync_frequency": None}, headers=auth(token)
        )
        assert patched.status_code == 200, patched.text
        assert patched.json()["sync_frequency"] is None and patched.json()["next_sync_at"] is None
        clock.advance(365 * 24 * 3600)
        assert await bff.services.schedules.tick() == []
        token = await who.token()
        # On demand still works.
        answer = await bff.client.post(f"/api/server/{connection['id']}/sync", headers=auth(token))
        assert answer.status_code == 202, answer.text
        await execute_all(bff, [await bff.services.store.runs.get(answer.json()["run_data"][0]["pipeline_run_id"])])
        newest = (await runs_of(bff, token, connection["id"]))[0]
        assert (newest["trigger"], newest["status"]) == ("api", "succeeded")


async def test_table_frequencies_pick_only_the_due_tables(settings_factory: Callable[..., Settings]) -> None:
    clock = FakeClock(T0)
    async with scheduled(settings_factory, clock) as bff:
        token, _ = await customer(bff)
        connection = await connect_crm(bff.client, token)
        patched = await bff.client.patch(
            f"/api/server/{connection['id']}",
            json={"sync_frequency": 7200, "table_frequencies": {"deals": 600}, "name": "CRM (sales)"},
            headers=auth(token),
        )
        assert patched.status_code == 200, patched.text
        assert patched.json()["name"] == "CRM (sales)"
        assert patched.json()["table_frequencies"] == {"deals": 600}
        first = await bff.services.schedules.tick()
        assert [r.tables for r in first] == [None]  # the first sync covers every table
        await execute_all(bff, first)

        clock.advance(600)
        deals_only = await bff.services.schedules.tick()
        assert [r.tables for r in deals_only] == [["deals"]]
        await execute_all(bff, deals_only)
        assert (await runs_of(bff, token, connection["id"]))[0]["records"] == {
            "deals": 0
        }  # incremental: only deals read

        clock.advance(7200 - 600)  # both due now: contacts (7200) and deals (600 after the last)
        both = await bff.services.schedules.tick()
        assert [r.tables for r in both] == [None]


async def test_disabled_connection_is_skipped_and_refuses_sync_then_enable_syncs_again(
    settings_factory: Callable[..., Settings],
) -> None:
    clock = FakeClock(T0)
    async with scheduled(settings_factory, clock) as bff:
        who = Customer(bff)
        token = await who.token()
        connection = await connect_bank(bff.client, token)
        await execute_all(bff, await bff.services.schedules.tick())
        disabled = await bff.client.post(f"/api/server/{connection['id']}/disable", headers=auth(token))
        assert disabled.status_code == 200, disabled.text
        assert disabled.json()["health_status"] == "DISABLED" and disabled.json()["next_sync_at"] is None
        clock.advance(30 * 24 * 3600)
        token = await who.token()
        assert await bff.services.schedules.tick() == []
        refused = await bff.client.post(f"/api/server/{connection['id']}/sync", headers=auth(token))
        assert refused.status_code == 409 and refused.json()["code"] == "connection_disabled"

        enabled = await bff.client.post(f"/api/server/{connection['id']}/enable", headers=auth(token))
        assert enabled.status_code == 200, enabled.text
        assert enabled.json()["health_status"] == "RE_ENABLED"
        again = await bff.services.schedules.tick()
        assert len(again) == 1
        await execute_all(bff, again)
        assert (await server(bff, token, connection["id"]))["health_status"] == "HEALTHY"
        twice = await bff.client.post(f"/api/server/{connection['id']}/enable", headers=auth(token))
        assert twice.status_code == 409 and twice.json()["code"] == "connection_not_disabled"


async def test_a_run_going_when_disabled_leaves_the_connection_disabled(
    settings_factory: Callable[..., Settings],
) -> None:
    clock = FakeClock(T0)
    async with scheduled(settings_factory, clock) as bff:
        token, _ = await customer(bff)
        connection = await connect_bank(bff.client, token)
        runs = await bff.services.schedules.tick()
        await bff.client.post(f"/api/server/{connection['id']}/disable", headers=auth(token))
        await execute_all(bff, runs)
        assert (await server(bff, token, connection["id"]))["health_status"] == "DISABLED"


async def test_config_select_connection_syncs_only_after_the_choice(settings_factory: Callable[..., Settings]) -> None:
    clock = FakeClock(T0)
    async with scheduled(settings_factory, clock) as bff:
        token, _ = await customer(bff)
        created = await bff.client.post(
            "/api/servers",
            json={"servertype_id": "sandbox_accounting", "api_key": "sandbox-valid-key"},
            headers=auth(token),
        )
        assert created.json()["health_status"] == "CONFIG_SELECT"
        assert (await server(bff, token, created.json()["id"]))["next_sync_at"] is None
        assert await bff.services.schedules.tick() == []
        configured = await bff.client.post(
            f"/api/server/{created.json()['id']}/config", json={"divisions": ["101"]}, headers=auth(token)
        )
        assert configured.status_code == 200
        assert len(await bff.services.schedules.tick()) == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"sync_frequency": 299}, "sync_frequency"),
        ({"sync_frequency": "often"}, "sync_frequency"),
        ({"sync_frequency": 300.5}, "sync_frequency"),
        ({"table_frequencies": {"nope": 3600}}, "table_frequencies.nope"),
        ({"table_frequencies": {"transactions": 60}}, "table_frequencies.transactions"),
        ({"table_frequencies": [1]}, "table_frequencies"),
        ({"name": ""}, "name"),
        ({"health_status": "OK"}, "health_status"),
    ],
)
async def test_patch_validation_errors(
    settings_factory: Callable[..., Settings], body: dict[str, Any], field: str
) -> None:
    async with scheduled(settings_factory, FakeClock(T0)) as bff:
        token, _ = await customer(bff)
        connection = await connect_bank(bff.client, token)
        answer = await bff.client.patch(f"/api/server/{connection['id']}", json=body, headers=auth(token))
        assert answer.status_code == 400, answer.text
        assert answer.json()["code"] == "validation_error" and field in answer.json()["errors"]


async def test_the_worker_runs_the_first_sync_by_itself(settings_factory: Callable[..., Settings]) -> None:
    """Real clock, real worker: connecting is enough; the run is marked as scheduled."""
    settings = settings_factory(sandbox_enabled=True, schedules_enabled=True)
    async with running_bff(settings) as bff:
        token, _ = await customer(bff)
        connection = await connect_accounting(bff.client, token, divisions=("101",))
        for _ in range(200):
            runs = await runs_of(bff, token, connection["id"])
            if runs and runs[0]["status"] not in ("queued", "running"):
                break
            await asyncio.sleep(0.05)
        assert [(r["trigger"], r["status"], r["records"]) for r in runs] == [
            ("schedule", "succeeded", {"invoices": 500, "deleted": 0, "entitytype": 1})
        ]


async def test_wait_answers_200_with_the_run_or_202_when_still_going(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory(sandbox_enabled=True, sandbox_env={"BFF_SANDBOX_LATENCY_MS": "1000"})
    async with running_bff(settings) as bff:
        token, _ = await customer(bff)
        connection = await connect_bank(bff.client, token)
        short = await bff.client.post(f"/api/server/{connection['id']}/sync?wait=0.2", headers=auth(token))
        assert short.status_code == 202, short.text
        assert short.json()["syncing"] is True
        await bff.services.sync.wait(connection["id"])
        long = await bff.client.post(f"/api/server/{connection['id']}/sync?wait=60", headers=auth(token))
        assert long.status_code == 200, long.text
        assert long.json()["run"]["status"] == "succeeded" and long.json()["syncing"] is False
        assert long.json()["health_status"] == "HEALTHY"
        for bad in ("121", "-1", "soon"):
            answer = await bff.client.post(f"/api/server/{connection['id']}/sync?wait={bad}", headers=auth(token))
            assert answer.status_code == 400 and answer.json()["errors"].keys() == {"wait"}


async def test_reauthorised_connection_syncs_at_once(settings_factory: Callable[..., Settings]) -> None:
    clock = FakeClock(T0)
    async with scheduled(settings_factory, clock) as bff:
        token, _ = await customer(bff)
        connection = await connect_bank(bff.client, token)
        await execute_all(bff, await bff.services.schedules.tick())
        clock.advance(60)
        assert await bff.services.schedules.tick() == []  # next one is 6 h away
        answer = await bff.client.post(
            f"/api/server/{connection['id']}/reauthorise",
            json={"login": "sandbox", "password": "sandbox"},
            headers=auth(token),
        )
        assert answer.status_code == 200 and answer.json()["health_status"] == "RE_AUTHORISED"
        assert answer.json()["next_sync_at"] == "2027-01-15T08:01:00.000Z"
        assert len(await bff.services.schedules.tick()) == 1


async def test_with_schedules_off_nothing_is_planned(settings_factory: Callable[..., Settings]) -> None:
    async with running_bff(settings_factory(sandbox_enabled=True, run_worker=False), clock=FakeClock(T0)) as bff:
        token, _ = await customer(bff)
        connection = await connect_bank(bff.client, token)
        patched = await bff.client.patch(
            f"/api/server/{connection['id']}", json={"sync_frequency": 600}, headers=auth(token)
        )
        assert patched.status_code == 200 and patched.json()["sync_frequency"] == 600
        assert patched.json()["next_sync_at"] is None
        assert await bff.services.schedules.tick() == []


async def test_scheduled_runs_read_only_the_selected_tables(settings_factory: Callable[..., Settings]) -> None:
    clock = FakeClock(T0)
    async with scheduled(settings_factory, clock) as bff:
        token, _ = await customer(bff)
        connection = await connect_crm(bff.client, token)
        patched = await bff.client.patch(
            f"/api/server/{connection['id']}", json={"tables": ["deals"]}, headers=auth(token)
        )
        assert patched.status_code == 200, patched.text
        first = await bff.services.schedules.tick()
        assert [r.tables for r in first] == [["deals"]]
        await execute_all(bff, first)
        assert (await runs_of(bff, token, connection["id"]))[0]["records"] == {"deals": 300}
        clock.advance(21600)
        assert [r.tables for r in await bff.services.schedules.tick()] == [["deals"]]
