"""Sync runs, the health state machine and crash recovery, against the in-process sandbox."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
import pytest
from conftest import BFF, auth, running_bff
from psycopg import sql
from sandbox_flows import connect_accounting, connect_bank, connect_crm, press_refresh
from sync_helpers import customer, health, last_run, logs, reset_sandbox_stats, sandbox_stats, sync, tables

from bff.connectors import ConnectorError, Page, RetryPolicy
from bff.connectors.retry import Budget
from bff.services import sync as sync_service
from bff.settings import Settings

FIXTURES = {
    "crm": {"contacts": 1250, "deals": 300},
    "accounting": {"invoices": 1500, "deleted": 0, "entitytype": 1},
    "bank": {"transactions": 200},
}
# Tables read whole on every run (no cursor): the accounting app's entity types.
REREAD = {"accounting": {"entitytype": 1}}
CONNECT = {"crm": connect_crm, "accounting": connect_accounting, "bank": connect_bank}


def fast_retries() -> RetryPolicy:
    """The default budgets, with back-offs in milliseconds instead of seconds."""
    policy = RetryPolicy.default()
    return dataclasses.replace(
        policy,
        server_error=Budget(max_retries=2, max_total_wait=1.0, base_delay=0.01, max_delay=0.02),
        connection=Budget(max_retries=2, max_total_wait=1.0, base_delay=0.01, max_delay=0.02),
    )


@pytest.fixture
def sandbox(settings_factory: Callable[..., Settings]) -> Callable[..., Any]:
    """``async with sandbox(**BFF_SANDBOX_* knobs) as bff``: a BFF with the sandbox on."""

    def start(**knobs: str) -> Any:
        return running_bff(settings_factory(sandbox_enabled=True, sandbox_env=knobs))

    return start


@pytest.fixture
async def sbff(sandbox: Callable[..., Any]) -> AsyncIterator[BFF]:
    async with sandbox() as instance:
        instance.services.sync.retry_policy = fast_retries
        yield instance


@pytest.mark.parametrize("provider", ["crm", "accounting", "bank"])
async def test_full_sync_lands_the_fixture_counts_and_a_second_sync_adds_nothing(sbff: BFF, provider: str) -> None:
    token, _ = await customer(sbff)
    connection = await CONNECT[provider](sbff.client, token)
    run = await sync(sbff, token, connection["id"])
    assert run["status"] == "succeeded" and run["records"] == FIXTURES[provider] and run["error"] is None
    assert run["started_at"] and run["finished_at"]
    assert (await health(sbff, token, connection["id"]))["health_status"] == "HEALTHY"
    assert {name: t["row_count"] for name, t in (await tables(sbff.client, token)).items()} == FIXTURES[provider]

    await reset_sandbox_stats(sbff.client)
    again = await sync(sbff, token, connection["id"])
    reread = REREAD.get(provider, {})
    assert again["status"] == "succeeded" and again["records"] == {**dict.fromkeys(FIXTURES[provider], 0), **reread}
    # Only "anything newer?" calls
    assert sum((await sandbox_stats(sbff.client))["records_served"].values()) == sum(reread.values())
    assert {name: t["row_count"] for name, t in (await tables(sbff.client, token)).items()} == FIXTURES[provider]


async def test_incremental_sync_fetches_only_the_changed_records(sbff: BFF) -> None:
    token, _ = await customer(sbff)
    crm = await connect_crm(sbff.client, token)
    await sync(sbff, token, crm["id"])
    touched = (await sbff.client.post("/sandbox/_control/touch", json={"resource": "crm.contacts", "count": 5})).json()[
        "touched"
    ]
    await reset_sandbox_stats(sbff.client)

    run = await sync(sbff, token, crm["id"])
    assert run["records"] == {"contacts": 5, "deals": 0}
    stats = await sandbox_stats(sbff.client)
    assert stats["requests"]["crm.contacts"] == 1 and stats["records_served"]["crm.contacts"] == 5
    assert stats["requests"]["crm.deals"] == 1 and stats["records_served"]["crm.deals"] == 0

    contacts = (await tables(sbff.client, token))["contacts"]
    assert contacts["row_count"] == 1250  # updated in place, not added
    body = (
        await sbff.client.get(
            f"/api/database/rows/table/{contacts['id']}/?user_field_names=True&page_size=500", headers=auth(token)
        )
    ).json()
    edited = {row["id"]: row for row in body["results"] if row["last_name"].endswith("(edited)")}
    assert set(edited) == set(touched) and all(row["_run_id"] == run["id"] for row in edited.values())


async def test_manual_bank_refresh_is_picked_up_incrementally(sbff: BFF) -> None:
    token, _ = await customer(sbff)
    bank = await connect_bank(sbff.client, token)
    await sync(sbff, token, bank["id"])
    refresh_url = (await sbff.client.post(f"/api/server/{bank['id']}/manual-refresh", headers=auth(token))).json()[
        "refresh_url"
    ]
    page = await press_refresh(sbff.client, refresh_url)  # the customer presses "Refresh" on the bank's page
    assert "10 new transactions imported." in page.text
    run = await sync(sbff, token, bank["id"])
    assert run["records"] == {"transactions": 10}
    assert (await tables(sbff.client, token))["transactions"]["row_count"] == 210


async def test_rate_limits_are_retried_and_logged(sandbox: Callable[..., Any]) -> None:
    async with sandbox(BFF_SANDBOX_429_EVERY="3", BFF_SANDBOX_RETRY_AFTER="1") as bff:
        token, _ = await customer(bff)
        crm = await connect_crm(bff.client, token)
        await reset_sandbox_stats(bff.client)  # restarts the every-3rd-call cadence too
        run = await sync(bff, token, crm["id"])
        assert run["status"] == "succeeded" and run["records"] == FIXTURES["crm"]
        assert (await sandbox_stats(bff.client))["rate_limited"] >= 1
        assert {n: t["row_count"] for n, t in (await tables(bff.client, token)).items()} == FIXTURES["crm"]
        lines = [line for line in await logs(bff, token, crm["id"]) if line["pipeline_run_id"] == run["id"]]
        retries = [line for line in lines if "429" in line["message"]]
        assert retries and all(line["level"] == "warning" and "retry 1 of 8" in line["message"] for line in retries)
        assert "the provider asked to wait 1 s" in retries[0]["message"]
        assert any(line["message"].startswith("contacts: 1250 records") for line in lines)
        assert any(line["message"].startswith("deals: 300 records") for line in lines)


async def test_server_errors_beyond_the_retry_cap_fail_only_that_table(sandbox: Callable[..., Any]) -> None:
    async with sandbox(BFF_SANDBOX_FAIL_EVERY="1", BFF_SANDBOX_FAIL_MATCH="deals") as bff:
        bff.services.sync.retry_policy = fast_retries
        token, _ = await customer(bff)
        crm = await connect_crm(bff.client, token)
        run = await sync(bff, token, crm["id"])
        assert run["status"] == "completed_with_errors"
        assert run["records"] == {"contacts": 1250, "deals": 0}
        assert "deals" in run["error"] and "contacts" not in run["error"]
        state = await health(bff, token, crm["id"])
        assert state["health_status"] == "COMPLETED_WITH_ERRORS" and "deals" in state["detail"]
        assert (await tables(bff.client, token))["contacts"]["row_count"] == 1250
        assert (await sandbox_stats(bff.client))["requests"]["crm.deals"] == 3  # first try + 2 retries
        messages = [line["message"] for line in await logs(bff, token, crm["id"])]
        assert sum("server errors (HTTP 5xx): retry" in m for m in messages) == 2
        assert any(m.startswith("deals: failed") for m in messages)


async def test_every_table_failing_is_an_error(sandbox: Callable[..., Any]) -> None:
    async with sandbox(BFF_SANDBOX_FAIL_EVERY="1") as bff:
        bff.services.sync.retry_policy = fast_retries
        token, _ = await customer(bff)
        crm = await connect_crm(bff.client, token)
        run = await sync(bff, token, crm["id"])
        assert run["status"] == "failed"
        state = await health(bff, token, crm["id"])
        assert state["health_status"] == "ERROR" and "contacts" in state["detail"] and "deals" in state["detail"]


async def test_rejected_credentials_ask_for_reauthorisation(sbff: BFF) -> None:
    token, _ = await customer(sbff)
    crm = await connect_crm(sbff.client, token)
    bank = await connect_bank(sbff.client, token)
    await sbff.client.post("/sandbox/_control/revoke", json={"provider": "crm"})
    await sbff.client.post("/sandbox/_control/revoke", json={"provider": "bank"})
    for connection in (crm, bank):
        run = await sync(sbff, token, connection["id"])
        assert run["status"] == "failed"
        state = await health(sbff, token, connection["id"])
        assert state["health_status"] == "ERROR" and "Re-authorise this connection" in state["detail"]
    # OAuth: the 401 led to one refresh attempt before giving up, and the run stopped at the first table.
    messages = [line["message"] for line in await logs(sbff, token, crm["id"])]
    assert any("renewing it once" in m for m in messages)
    assert (await last_run(sbff, token, crm["id"]))["records"] == {"contacts": 0}

    await sbff.client.post("/sandbox/_control/restore", json={"provider": "bank"})
    assert (await sync(sbff, token, bank["id"]))["status"] == "succeeded"
    assert (await health(sbff, token, bank["id"]))["health_status"] == "HEALTHY"


async def test_concurrent_sync_requests_get_one_202_and_one_409(sandbox: Callable[..., Any]) -> None:
    async with sandbox(BFF_SANDBOX_LATENCY_MS="50") as bff:
        token, _ = await customer(bff)
        bank = await connect_bank(bff.client, token)
        url = f"/api/server/{bank['id']}/sync"
        answers = await asyncio.gather(*(bff.client.post(url, headers=auth(token)) for _ in range(2)))
        assert sorted(a.status_code for a in answers) == [202, 409]
        accepted = next(a for a in answers if a.status_code == 202).json()
        refused = next(a for a in answers if a.status_code == 409).json()
        assert (
            refused["code"] == "sync_already_running"
            and refused["pipeline_run_id"] == accepted["run_data"][0]["pipeline_run_id"]
        )
        assert accepted["server_id"] == str(bank["id"]) and accepted["syncing"] is True
        assert accepted["task_id"] == accepted["run_data"][0]["task_id"]

        # Many at once: still exactly one run.
        answers = await asyncio.gather(*(bff.client.post(url, headers=auth(token)) for _ in range(10)))
        assert [a.status_code for a in answers].count(202) <= 1
        await bff.services.sync.wait(bank["id"])
        runs = (await bff.client.get(f"/api/server/{bank['id']}/runs", headers=auth(token))).json()
        assert runs["count"] == 1 + [a.status_code for a in answers].count(202)


async def test_sync_status_runs_and_health_etag(sandbox: Callable[..., Any]) -> None:
    async with sandbox(BFF_SANDBOX_LATENCY_MS="100") as bff:
        token, _ = await customer(bff)
        bank = await connect_bank(bff.client, token)
        base = f"/api/server/{bank['id']}"
        idle = (await bff.client.get(f"{base}/sync-status", headers=auth(token))).json()
        assert idle == {"running": False, "pipeline_run_id": None, "status": None}

        first = await bff.client.get(f"{base}/health", headers=auth(token))
        etag = first.headers["etag"]
        assert first.json() == {"id": bank["id"], "name": "Sandbox Bank", "health_status": "OK", "detail": None}
        unchanged = await bff.client.get(f"{base}/health/", headers={**auth(token), "If-None-Match": etag})
        assert unchanged.status_code == 304 and unchanged.headers["etag"] == etag and not unchanged.content

        started = (await bff.client.post(f"{base}/sync", json={}, headers=auth(token))).json()
        run_id = started["run_data"][0]["pipeline_run_id"]
        running = (await bff.client.get(f"{base}/sync-status", headers=auth(token))).json()
        assert running["running"] is True and running["pipeline_run_id"] == run_id
        await bff.services.sync.wait(bank["id"])
        done = (await bff.client.get(f"{base}/sync-status", headers=auth(token))).json()
        assert done == {"running": False, "pipeline_run_id": run_id, "status": "succeeded"}

        changed = await bff.client.get(f"{base}/health", headers={**auth(token), "If-None-Match": etag})
        assert (
            changed.status_code == 200
            and changed.json()["health_status"] == "HEALTHY"
            and changed.headers["etag"] != etag
        )

        second = await sync(bff, token, bank["id"], tables=["transactions"])
        runs = (await bff.client.get(f"{base}/runs?page_size=1", headers=auth(token))).json()
        assert runs["count"] == 2 and runs["results"][0]["id"] == second["id"] and runs["next"]
        assert second["tables"] == ["transactions"]
        older = (await bff.client.get(runs["next"], headers=auth(token))).json()
        assert older["results"][0]["id"] == run_id and older["next"] is None


async def test_connections_that_are_not_ready_cannot_sync(sbff: BFF) -> None:
    token, _ = await customer(sbff)
    created = await sbff.client.post("/api/servers", json={"servertype_id": "sandbox_crm"}, headers=auth(token))
    authorizing = await sbff.client.post(f"/api/server/{created.json()['id']}/sync", headers=auth(token))
    assert authorizing.status_code == 409 and authorizing.json()["code"] == "connection_not_ready"
    books = await sbff.client.post(
        "/api/servers",
        json={"servertype_id": "sandbox_accounting", "api_key": "sandbox-valid-key"},
        headers=auth(token),
    )
    config_select = await sbff.client.post(f"/api/server/{books.json()['id']}/sync", headers=auth(token))
    assert config_select.status_code == 409 and config_select.json()["code"] == "connection_not_ready"
    assert "divisions" in config_select.json()["detail"]


async def test_sync_a_subset_of_tables_and_reject_unknown_ones(sbff: BFF) -> None:
    token, _ = await customer(sbff)
    crm = await connect_crm(sbff.client, token)
    unknown = await sbff.client.post(
        f"/api/server/{crm['id']}/sync", json={"tables": ["contacts", "tickets"]}, headers=auth(token)
    )
    assert unknown.status_code == 400 and "tickets" in unknown.json()["errors"]["tables"]
    malformed = await sbff.client.post(f"/api/server/{crm['id']}/sync", json={"tables": "deals"}, headers=auth(token))
    assert malformed.status_code == 400 and malformed.json()["code"] == "validation_error"
    run = await sync(sbff, token, crm["id"], tables=["deals"])
    assert run["records"] == {"deals": 300}
    assert set(await tables(sbff.client, token)) == {"deals"}


async def test_other_sub_accounts_cannot_touch_the_connection(sbff: BFF) -> None:
    token, _ = await customer(sbff, "a")
    other, _ = await customer(sbff, "b")
    bank = await connect_bank(sbff.client, token)
    for method, path in (("POST", "sync"), ("GET", "health"), ("GET", "sync-status"), ("GET", "runs")):
        answer = await sbff.client.request(method, f"/api/server/{bank['id']}/{path}", headers=auth(other))
        assert answer.status_code == 404 and answer.json()["code"] == "not_found"
    assert (await sbff.client.post(f"/api/server/{bank['id']}/sync")).status_code == 401


async def test_deleting_a_connection_mid_sync_stops_it_and_drops_its_tables(sandbox: Callable[..., Any]) -> None:
    async with sandbox(BFF_SANDBOX_LATENCY_MS="100") as bff:
        token, account_id = await customer(bff)
        crm = await connect_crm(bff.client, token)
        bank = await connect_bank(bff.client, token)
        await sync(bff, token, bank["id"])
        await bff.client.post(f"/api/server/{crm['id']}/sync", headers=auth(token))
        while "contacts" not in await tables(bff.client, token):
            await asyncio.sleep(0.02)
        contacts_id = (await tables(bff.client, token))["contacts"]["id"]
        assert (await bff.client.delete(f"/api/server/{crm['id']}", headers=auth(token))).status_code == 204
        assert set(await tables(bff.client, token)) == {"transactions"}  # the other connection's table stays
        gone = await bff.client.get(f"/api/database/rows/table/{contacts_id}/", headers=auth(token))
        assert gone.status_code == 404
        assert await bff.services.warehouse.table_owner(contacts_id) is None
        # The worker's run notices on its next write and stops without re-creating anything.
        await asyncio.sleep(0.5)
        placement = await bff.services.warehouse.placement(account_id)
        async with bff.services.warehouse.servers.connection(placement) as conn:
            cur = await conn.execute(
                "SELECT schemaname, tablename FROM pg_tables WHERE schemaname NOT LIKE 'pg\\_%%'"
                " AND schemaname NOT IN ('information_schema', '_bff') ORDER BY 1, 2"
            )
            assert [(row["schemaname"], row["tablename"]) for row in await cur.fetchall()] == [
                (bank["name"], "transactions")
            ]
        assert await bff.services.store.runs.active(crm["id"]) is None


async def test_stopping_the_worker_mid_sync_requeues_the_run_and_the_next_worker_resumes_it(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory(sandbox_enabled=True, sandbox_env={"BFF_SANDBOX_LATENCY_MS": "150"})
    async with running_bff(settings) as bff:
        token, account_id = await customer(bff)
        books = await connect_accounting(bff.client, token)
        await bff.client.post(f"/api/server/{books['id']}/sync", headers=auth(token))
        while (await tables(bff.client, token)).get("invoices", {}).get("row_count", 0) < 500:
            await asyncio.sleep(0.02)
    # The lifespan ended mid-run: the run went back to the queue, with its place saved.
    async with running_bff(dataclasses.replace(settings, run_worker=False)) as bff:
        paused = await last_run(bff, token, books["id"])
        assert paused["status"] == "queued" and 500 <= sum(paused["records"].values()) < 1500
        assert any(
            "Sync paused: the worker running it stopped" in line["message"]
            for line in await logs(bff, token, books["id"])
        )
    # The next worker picks it up and continues from the saved cursor.
    async with running_bff(dataclasses.replace(settings, sandbox_env={})) as bff:
        await bff.services.sync.wait(books["id"], timeout=60)
        resumed = await last_run(bff, token, books["id"])
        assert resumed["id"] == paused["id"] and resumed["status"] == "succeeded"
        assert (await tables(bff.client, token))["invoices"]["row_count"] == 1500
        assert any(line["message"].startswith("Sync resumed") for line in await logs(bff, token, books["id"]))
        assert (await health(bff, token, books["id"]))["health_status"] == "HEALTHY"


async def test_a_run_whose_worker_died_is_requeued_by_the_watchdog_and_finishes(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory(sandbox_enabled=True, heartbeat_seconds=0.2, stalled_seconds=1.0, run_worker=False)
    async with running_bff(settings) as bff:
        token, account_id = await customer(bff)
        bank = await connect_bank(bff.client, token)
        answer = await bff.client.post(f"/api/server/{bank['id']}/sync", headers=auth(token))
        run_id = answer.json()["run_data"][0]["pipeline_run_id"]
        # A worker takes the job, marks the run running, then dies: no more heartbeats.
        manager = bff.services.queue.app.job_manager
        dead_worker = await manager.register_worker()
        job = await manager.fetch_job(queues=None, worker_id=dead_worker)
        assert job is not None and job.task_kwargs == {"run_id": run_id}
        await bff.services.store.runs.update(run_id, status="running", started=True, pid=999_999)
    async with running_bff(dataclasses.replace(settings, run_worker=True)) as bff:
        # A live worker never touches another live worker's run; this one's worker is silent.
        run = await bff.services.sync.wait(bank["id"], timeout=30)
        assert run is not None and run.id == run_id and run.status == "succeeded"
        assert run.records == {"transactions": 200}
        assert any(
            "was interrupted: the worker running it stopped responding" in line["message"]
            for line in await logs(bff, token, bank["id"])
        )
        assert (await health(bff, token, bank["id"]))["health_status"] == "HEALTHY"


async def test_sync_concurrency_is_bounded(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory(sandbox_enabled=True, sandbox_env={"BFF_SANDBOX_LATENCY_MS": "100"}, sync_concurrency=1)
    async with running_bff(settings) as bff:
        token, _ = await customer(bff)
        banks = [await connect_bank(bff.client, token) for _ in range(2)]
        for bank in banks:
            assert (await bff.client.post(f"/api/server/{bank['id']}/sync", headers=auth(token))).status_code == 202
        statuses: list[str] = []
        for _ in range(200):  # until the one slot has picked one of them
            statuses = [(await last_run(bff, token, bank["id"]))["status"] for bank in banks]
            if "running" in statuses:
                break
            await asyncio.sleep(0.05)
        assert sorted(statuses) == ["queued", "running"]
        queued = (
            await bff.client.get(
                f"/api/server/{banks[statuses.index('queued')]['id']}/sync-status", headers=auth(token)
            )
        ).json()
        assert queued["running"] is True  # queued counts as an active run
        for bank in banks:
            await bff.services.sync.wait(bank["id"])
            assert (await last_run(bff, token, bank["id"]))["status"] == "succeeded"


async def test_a_rate_limited_provider_frees_the_worker_for_other_customers(
    settings_factory: Callable[..., Settings],
) -> None:
    # One worker slot. The bank answers every other call with 429 and `Retry-After: 3`, which is
    # more than this deployment holds a worker for (long_wait_seconds=1): the run must step aside.
    settings = settings_factory(
        sandbox_enabled=True,
        sandbox_env={"BFF_SANDBOX_429_EVERY": "2", "BFF_SANDBOX_429_MATCH": "/bank/", "BFF_SANDBOX_RETRY_AFTER": "3"},
        sync_concurrency=1,
        long_wait_seconds=1.0,
    )
    async with running_bff(settings) as bff:
        slow_token, _ = await customer(bff, "slow")
        other_token, _ = await customer(bff, "other")
        bank = await connect_bank(bff.client, slow_token)
        crm = await connect_crm(bff.client, other_token)
        await bff.client.post(f"/api/server/{bank['id']}/sync", headers=auth(slow_token))
        while (await last_run(bff, slow_token, bank["id"]))["status"] != "waiting":
            await asyncio.sleep(0.02)
        waiting = await last_run(bff, slow_token, bank["id"])
        assert waiting["resume_at"] is not None
        # The other customer's sync runs now, on the only slot, while the bank run waits.
        crm_run = await sync(bff, other_token, crm["id"])
        assert crm_run["status"] == "succeeded" and crm_run["records"] == {"contacts": 1250, "deals": 300}
        assert (await last_run(bff, slow_token, bank["id"]))["status"] in {"waiting", "running", "queued"}
        # ...and the bank run finishes later, from where it stopped, with every record exactly once.
        finished = await bff.services.sync.wait(bank["id"], timeout=90)
        assert finished is not None and finished.status == "succeeded", finished
        assert finished.records == {"transactions": 200} and finished.attempts >= 2
        assert (await tables(bff.client, slow_token))["transactions"]["row_count"] == 200
        messages = [line["message"] for line in await logs(bff, slow_token, bank["id"])]
        assert any(m.startswith("Waiting: ") and "asked to wait 3 s" in m for m in messages)


async def test_retry_after_beyond_the_budget_fails_the_stream_and_says_so(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory(
        sandbox_enabled=True,
        sandbox_env={
            "BFF_SANDBOX_429_EVERY": "1",
            "BFF_SANDBOX_429_MATCH": "/bank/api/transactions",
            "BFF_SANDBOX_RETRY_AFTER": "7200",
        },
    )
    async with running_bff(settings) as bff:
        token, _ = await customer(bff)
        bank = await connect_bank(bff.client, token)
        run = await sync(bff, token, bank["id"])
        assert run["status"] == "failed"
        assert (
            "the provider asked to wait 120 min, more than the 30 min left of the 30 min retry budget" in run["error"]
        )


async def test_a_sync_refused_by_the_queueing_lock_leaves_no_run_behind(sandbox: Callable[..., Any]) -> None:
    """A job of the connection still waits (its run gone, say): the request is a 409, and no
    failed run shows up in the connection's history for a sync that never started."""
    async with sandbox() as bff:
        token, _ = await customer(bff)
        bank = await connect_bank(bff.client, token)
        await bff.services.queue.stop_worker()  # nothing takes the waiting job
        assert await bff.services.queue.defer_sync(999_999, bank["id"]) is not None  # holds the lock
        refused = await bff.client.post(f"/api/server/{bank['id']}/sync", headers=auth(token))
        assert refused.status_code == 409 and refused.json()["code"] == "sync_already_running"
        runs = (await bff.client.get(f"/api/server/{bank['id']}/runs", headers=auth(token))).json()
        assert runs["count"] == 0


async def test_categories_sync_only_those_divisions_and_keep_the_others_cursors(sbff: BFF) -> None:
    """``run_pipeline(categories=str(division))`` of seed 003: a division the connection did not choose
    is read by asking for it; the chosen ones' cursors are untouched."""
    token, _ = await customer(sbff)
    books = await connect_accounting(sbff.client, token, divisions=("101",))
    first = await sync(sbff, token, books["id"])
    assert first["records"]["invoices"] == 500 and first["categories"] is None

    answer = await sbff.client.post(
        f"/api/server/{books['id']}/sync?wait=60",
        json={"tables": ["invoices"], "categories": ["102", 103]},
        headers=auth(token),
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["run"]["records"] == {"invoices": 1000}
    assert answer.json()["run"]["categories"] == ["102", "103"]
    rows = (await tables(sbff.client, token))["invoices"]
    assert rows["row_count"] == 1500
    assert any("(divisions 102, 103)" in line["message"] for line in await logs(sbff, token, books["id"]))

    await sbff.client.post("/sandbox/_control/touch", json={"resource": "accounting.invoices", "count": 1})
    # The chosen division only, from its own cursor: 101's first invoice was touched.
    assert (await sync(sbff, token, books["id"], tables=["invoices"]))["records"] == {"invoices": 1}
    # 102 from the cursor its own run left: nothing new.
    again = await sync(sbff, token, books["id"], tables=["invoices"], categories=["102"])
    assert again["records"] == {"invoices": 0}


async def test_categories_refused_where_they_cannot_apply(sbff: BFF) -> None:
    token, _ = await customer(sbff)
    crm = await connect_crm(sbff.client, token)
    books = await connect_accounting(sbff.client, token)
    cases = [
        (crm["id"], {"categories": ["101"]}, "categories_not_supported"),
        (books["id"], {"categories": ["101"], "full": True}, "validation_error"),
        (books["id"], {"categories": [True]}, "validation_error"),
        (books["id"], {"categories": [""]}, "validation_error"),
        (books["id"], {"categories": {"101": 1}}, "validation_error"),
    ]
    for server_id, body, code in cases:
        answer = await sbff.client.post(f"/api/server/{server_id}/sync", json=body, headers=auth(token))
        assert answer.status_code == 400 and answer.json()["code"] == code, (body, answer.text)
        assert "categories" in answer.json()["errors"]


async def test_accounting_deleted_and_entitytype_tables(sbff: BFF) -> None:
    token, _ = await customer(sbff)
    books = await connect_accounting(sbff.client, token)
    await sync(sbff, token, books["id"])
    deleted = (
        await sbff.client.post("/sandbox/_control/delete", json={"resource": "accounting.invoices", "count": 2})
    ).json()
    run = await sync(sbff, token, books["id"], tables=["deleted"])
    assert run["records"] == {"deleted": 2}
    listed = await tables(sbff.client, token)
    assert listed["entitytype"]["row_count"] == 1
    answer = await sbff.client.get(
        f"/api/database/rows/table/{listed['deleted']['id']}/?user_field_names=True", headers=auth(token)
    )
    assert [(r["entitykey"], r["division"], r["entitytype"]) for r in answer.json()["results"]] == [
        (record_id, 101, 20) for record_id in deleted["deleted"]
    ]


async def test_a_table_selection_leaves_the_other_tables_out(sbff: BFF) -> None:
    """Seed 003's "(Optional) table selection via 'Advanced'": PATCH /api/server/{id} {tables: [...]}."""
    token, _ = await customer(sbff)
    books = await connect_accounting(sbff.client, token)
    url = f"/api/server/{books['id']}"
    chosen = await sbff.client.patch(url, json={"tables": ["entitytype", "invoices"]}, headers=auth(token))
    assert chosen.status_code == 200 and chosen.json()["tables"] == ["invoices", "entitytype"]
    run = await sync(sbff, token, books["id"])
    assert run["records"] == {"invoices": 1500, "entitytype": 1} and run["tables"] == ["invoices", "entitytype"]
    assert set(await tables(sbff.client, token)) == {"invoices", "entitytype"}
    left_out = await sbff.client.post(f"{url}/sync", json={"tables": ["deleted"]}, headers=auth(token))
    assert left_out.status_code == 400 and "deleted" in left_out.json()["errors"]["tables"]
    for bad in ([], ["nope"], "invoices", [1]):
        refused = await sbff.client.patch(url, json={"tables": bad}, headers=auth(token))
        assert refused.status_code == 400 and "tables" in refused.json()["errors"], bad
    every = await sbff.client.patch(url, json={"tables": None}, headers=auth(token))
    assert every.json()["tables"] is None
    assert set((await sync(sbff, token, books["id"]))["records"]) == {"invoices", "deleted", "entitytype"}
    assert any(
        "Tables to sync: invoices, entitytype." in line["message"] for line in await logs(sbff, token, books["id"])
    )


async def transactions_that_wrote(bff: BFF, account: int, table: str) -> int:
    """How many transactions wrote the rows of a synced table (rows written together share an xmin)."""
    for found, _ in await bff.services.warehouse.list_tables(account):
        if found.stream == table:
            async with bff.services.warehouse.servers.connection(found.placement) as conn:
                statement = sql.SQL("SELECT COUNT(DISTINCT xmin::text) AS n FROM {}").format(found.identifier)
                return int((await (await conn.execute(statement)).fetchone())["n"])  # type: ignore[index]
    raise AssertionError(f"no table {table}")


async def test_pages_fetched_while_a_batch_is_written_are_written_together_with_the_last_ones_cursor(
    sandbox: Callable[..., Any],
) -> None:
    async with sandbox(BFF_SANDBOX_SCALE="20") as bff:  # 4,000 transactions: 8 pages of 500
        token, account = await customer(bff)
        bank = await connect_bank(bff.client, token)
        run = await sync(bff, token, bank["id"])
        assert run["records"] == {"transactions": 4000}
        found = [t for t, _ in await bff.services.warehouse.list_tables(account) if t.stream == "transactions"][0]
        url = bff.services.warehouse.servers.url(found.placement.server, found.placement.database)
        # The table locked: the run's first write waits, the next pages are fetched meanwhile.
        async with await psycopg.AsyncConnection.connect(url) as holder:
            await holder.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(found.identifier))
            answer = await bff.client.post(f"/api/server/{bank['id']}/sync", json={"full": True}, headers=auth(token))
            assert answer.status_code == 202
            await asyncio.sleep(2)
            await holder.rollback()
        await bff.services.sync.wait(bank["id"])
        again = await last_run(bff, token, bank["id"])
        assert again["status"] == "succeeded" and again["records"] == {"transactions": 4000}
        async with bff.services.warehouse.servers.connection(found.placement) as conn:
            statement = sql.SQL("SELECT COUNT(DISTINCT xmin::text) AS n, COUNT(*) AS rows FROM {}")
            written = await (await conn.execute(statement.format(found.identifier))).fetchone()
        assert written is not None and written["rows"] == 4000
        assert written["n"] < 8  # fewer transactions than pages: what waited went in together
        messages = [line["message"] for line in await logs(bff, token, bank["id"])]
        assert sum(m.startswith("transactions: 4000 records in 8 pages") for m in messages) == 2
        # The cursor committed with the last batch: nothing new, nothing read again.
        assert (await sync(bff, token, bank["id"]))["records"] == {"transactions": 0}


async def test_batches_are_the_pages_already_fetched_and_a_failed_fetch_comes_after_them() -> None:
    async def pages() -> AsyncIterator[Page]:
        for n in range(7):
            yield Page("s", None, [{"id": n * 10 + i} for i in range(10)], {"cursor": n})
        raise ConnectorError("gone")

    batches = []
    with pytest.raises(ConnectorError, match="gone"):
        async for batch, count in sync_service._batches(pages(), size=30, depth=8):
            batches.append(([r["id"] for r in batch.records], batch.state, count))
            await asyncio.sleep(0.01)  # a write
    # Every page was fetched before the first batch was asked for: 30 records a batch, in order,
    # each with its last page's cursor; then the pages before the failure, then the failure.
    assert batches == [
        (list(range(30)), {"cursor": 2}, 3),
        (list(range(30, 60)), {"cursor": 5}, 3),
        (list(range(60, 70)), {"cursor": 6}, 1),
    ]
