"""Limits on a customer's SQL (DESIGN §15, issue 22 item 4): the
roles' own timeouts and connection limits, a read-only login that stays read-only, and
/api/database/query/ throttled and capped per customer (429/503 with a code, never a 500)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
import pytest
from conftest import BFF, auth, running_bff, start_of_a_window
from psycopg import sql
from sandbox_flows import connect_crm
from sync_helpers import sync, tables
from tables_helpers import identity_customer

from bff.query_tables import RUNNER_SUFFIX, TEMP_FILE_LIMIT
from bff.settings import Settings


@pytest.fixture
async def sbff(settings_factory: Callable[..., Settings]) -> AsyncIterator[BFF]:
    async with running_bff(settings_factory(sandbox_enabled=True, sql_access=True)) as instance:
        yield instance


def connect(login: dict[str, Any]) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=login["host"], port=login["port"], dbname=login["database"], user=login["user"],
        password=login["password"], autocommit=True,
    )  # fmt: skip


async def query(bff: BFF, token: str, text: str) -> Any:
    return await bff.client.post("/api/database/query/", headers=auth(token), json={"query": text})


async def test_the_read_only_login_cannot_write_even_with_read_only_turned_off(sbff: BFF) -> None:
    token, account_id, partner_token = await identity_customer(sbff)
    crm = await connect_crm(sbff.client, token)
    await sync(sbff, token, crm["id"])
    deals_table = (await tables(sbff.client, token))["deals"]
    deals = deals_table["sql_name"]
    answer = await sbff.client.post(
        f"/api/partner/sub-account/{account_id}/database-credentials", headers=auth(partner_token)
    )
    login = answer.json()
    runner = login["database"] + RUNNER_SUFFIX
    assert (await query(sbff, token, "SELECT 1")).status_code == 200  # the runner is made on first use
    async with sbff.services.store.connection() as conn:
        cur = await conn.execute(
            "SELECT rolname, rolconnlimit, rolconfig FROM pg_roles WHERE rolname = ANY(%s) ORDER BY rolname",
            ([login["user"], runner],),
        )
        roles = {r["rolname"]: r for r in await cur.fetchall()}
    assert set(roles) == {login["user"], runner}
    for role in roles.values():
        config = set(role["rolconfig"])
        assert {
            "default_transaction_read_only=on",
            "statement_timeout=10000",
            f"temp_file_limit={TEMP_FILE_LIMIT}",
        } <= config
        assert 0 < role["rolconnlimit"] <= 16
    with connect(login) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("10s",)
        conn.execute("SET default_transaction_read_only = off")
        conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE")
        assert conn.execute("SHOW transaction_read_only").fetchone() == ("off",)
        for statement in (
            f"INSERT INTO {deals} (id, _synced_at) VALUES ('x', now())",
            f"UPDATE {deals} SET amount = 0",
            f"DELETE FROM {deals}",
            "CREATE TEMP TABLE spill AS SELECT generate_series(1, 200000) AS n",
            "CREATE TABLE public.mine (n int)",
            f'CREATE TABLE "{deals_table["schema"]}".mine (n int)',
            "CREATE SCHEMA mine",
            "SET temp_file_limit = -1",
            "SET ROLE " + runner,
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
        assert conn.execute(sql.SQL("SELECT COUNT(*) FROM {}").format(sql.SQL(deals))).fetchone() == (300,)
        # The login's own connection limit: a BI tool cannot take every connection of the server.
        limit = roles[login["user"]]["rolconnlimit"]
        extra = [connect(login) for _ in range(limit - 1)]
        try:
            with pytest.raises(psycopg.OperationalError, match="too many connections"):
                connect(login)
        finally:
            for other in extra:
                other.close()


async def test_concurrent_slow_queries_of_one_customer_are_refused_with_a_code_and_others_still_run(
    sbff: BFF,
) -> None:
    token, busy_id, _ = await identity_customer(sbff, "busy")
    other, _, _ = await identity_customer(sbff, "calm")
    query_tables = sbff.services.query_tables
    query_tables.connection_cap, query_tables.wait_seconds = 3, 0.2
    answers = await asyncio.gather(*(query(sbff, token, "SELECT pg_sleep(1.5)") for _ in range(12)))
    statuses = sorted(a.status_code for a in answers)
    assert set(statuses) == {200, 429} and statuses.count(200) == 3, statuses
    assert {a.json()["code"] for a in answers if a.status_code == 429} == {"too_many_queries"}
    assert all(a.headers.get("retry-after") for a in answers if a.status_code == 429)
    # Meanwhile, and afterwards, another customer's query runs.
    slow = [asyncio.ensure_future(query(sbff, token, "SELECT pg_sleep(1)")) for _ in range(3)]
    await asyncio.sleep(0.2)
    assert (await query(sbff, other, "SELECT 1 AS one")).json()["rows"] == [{"one": 1}]
    await asyncio.gather(*slow)
    # Over the runner role's own CONNECTION LIMIT (several BFF processes together): 503, not 500.
    query_tables.connection_cap, query_tables.wait_seconds = 50, 5.0
    placement = await sbff.services.warehouse.placement(busy_id)
    runner = placement.database + RUNNER_SUFFIX
    async with sbff.services.store.connection() as conn:
        await conn.execute(sql.SQL("ALTER ROLE {} CONNECTION LIMIT 2").format(sql.Identifier(runner)))
    # The runner connections this process keeps go: as if other processes held the role's connections.
    await sbff.services.warehouse.servers.forget(placement)
    answers = await asyncio.gather(*(query(sbff, token, "SELECT pg_sleep(1)") for _ in range(6)))
    statuses = sorted(a.status_code for a in answers)
    assert set(statuses) <= {200, 503} and 503 in statuses and 200 in statuses, statuses
    assert {a.json()["code"] for a in answers if a.status_code == 503} == {"database_busy"}


async def test_database_queries_count_against_the_read_limit(sbff: BFF) -> None:
    token, _, _ = await identity_customer(sbff)
    await start_of_a_window(sbff)
    for _ in range(119):
        assert (await sbff.client.get("/api/applications/?exclude_tables=1", headers=auth(token))).status_code == 200
    assert (await query(sbff, token, "SELECT 1")).status_code == 200  # the 120th read of the minute
    refused = await query(sbff, token, "SELECT 1")
    assert refused.status_code == 429 and refused.json()["code"] == "rate_limited"
    assert refused.headers["retry-after"]


async def test_the_watchdog_holds_a_customer_login_to_the_limit_it_lifted_and_spares_the_bffs_own(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory(sandbox_enabled=True, sql_access=True, sql_watch_seconds=0.5, sql_idle_seconds=2.0)
    async with running_bff(settings) as bff:
        token, account_id, partner_token = await identity_customer(bff)
        bff.services.query_tables.timeout_ms = 2000  # the statement limit the watchdog holds
        answer = await bff.client.post(
            f"/api/partner/sub-account/{account_id}/database-credentials", headers=auth(partner_token)
        )
        login = answer.json()
        placement = await bff.services.warehouse.placement(account_id)
        assert placement is not None

        def lifted_sleep() -> float:
            with connect(login) as conn:
                conn.execute("SET statement_timeout = 0")
                conn.execute("SET default_transaction_read_only = off")
                # A login may set its own role's defaults (PostgreSQL lets every role): the
                # watchdog puts them back.
                conn.execute("ALTER ROLE CURRENT_USER SET statement_timeout = 0")
                conn.execute(
                    sql.SQL("ALTER ROLE CURRENT_USER IN DATABASE {} SET statement_timeout = 0").format(
                        sql.Identifier(login["database"])
                    )
                )
                started = time.monotonic()
                with pytest.raises(psycopg.errors.QueryCanceled):
                    conn.execute("SELECT pg_sleep(60)")
                return time.monotonic() - started

        def idle_in_transaction() -> None:
            with connect(login) as conn:
                with pytest.raises(psycopg.OperationalError):
                    with conn.transaction():
                        conn.execute("SELECT 1")
                        time.sleep(4)
                        conn.execute("SELECT 1")

        async def control_sleep() -> None:
            async with bff.services.store.connection() as conn:
                await conn.execute("SELECT pg_sleep(4)")

        async def bff_own_sleep() -> None:  # the BFF's own connection to the customer database
            async with bff.services.warehouse.servers.connection(placement) as conn:
                await conn.execute("SET statement_timeout = 0")
                await conn.execute("SELECT pg_sleep(4)")

        took, *_ = await asyncio.gather(
            asyncio.to_thread(lifted_sleep), asyncio.to_thread(idle_in_transaction), control_sleep(), bff_own_sleep()
        )
        assert 2.0 <= took < 2.0 + 0.5 + 1.5, took
        # The defaults the login lifted are back: a fresh session starts with the limit again.
        with connect(login) as conn:
            assert conn.execute("SHOW statement_timeout").fetchone() == ("2s",)
        assert 2.0 <= await asyncio.to_thread(lifted_sleep) < 4.0


async def test_one_worker_of_the_deployment_watches_and_another_takes_over_when_it_stops(
    settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watchdog reads every customer session of every server: one worker does it (a session
    lock on the control database elects it), not each of them; when that worker stops, the lock
    goes with its session and another worker watches from its next round."""
    import contextlib

    from bff import warehouse_limits

    calls: list[int] = []  # which process's warehouse servers each round was for

    async def counted(servers: Any, **limits: Any) -> int:
        calls.append(id(servers))
        return 0

    monkeypatch.setattr(warehouse_limits, "stop_overrunning", counted)
    settings = settings_factory(sql_watch_seconds=0.1)

    async def rounds_for(seconds: float) -> set[int]:
        calls.clear()
        await asyncio.sleep(seconds)
        return set(calls)

    async with contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(running_bff(settings))
        second_stack = contextlib.AsyncExitStack()
        second = await second_stack.enter_async_context(running_bff(settings))
        try:
            processes = {id(first.services.warehouse.servers): first, id(second.services.warehouse.servers): second}
            await rounds_for(1.0)  # both workers have started their rounds
            watchers = await rounds_for(1.5)
            assert len(watchers) == 1 and len(calls) >= 5, (watchers, calls)
            (watching,) = watchers
            if processes[watching] is second:  # stop the watcher, keep the other running
                await second_stack.aclose()
                remaining = first
            else:
                await stack.aclose()
                remaining = second
            assert await rounds_for(1.5) == {id(remaining.services.warehouse.servers)}
        finally:
            await second_stack.aclose()
