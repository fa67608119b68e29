"""``bff warehouse move`` (DESIGN §15, issue 22 item 1): a customer's database goes to another server
while a sync writes to it, and nothing is lost; while it moves, the customer's writes wait (a sync)
or are answered 503 warehouse_moving (customer SQL), and a move that fails leaves it where it was."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from conftest import BFF, auth, running_bff
from sync_helpers import logs
from tables_helpers import crm_customer, customer_database, rows
from test_customer_databases import bff_cli, sql_login

from bff import warehouse_move
from bff.services import sync as sync_service
from bff.settings import Secret, Settings
from bff.warehouse import TableWriter
from bff.warehouse_servers import WarehouseMoving, server_name


def _exists(url: str, database: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is not None


async def _query(bff: BFF, token: str, text: str, **body: Any) -> Any:
    return await bff.client.post(
        "/api/database/query/", headers=auth(token), json={"query": text, "limit": 10000, **body}
    )


@pytest.fixture
def two_servers(
    settings_factory: Callable[..., Settings], database_url: str, second_warehouse_server: str
) -> tuple[Settings, str, str]:
    """Settings with two warehouse servers (the control database's first), and their URLs."""
    first, second = database_url, second_warehouse_server
    settings = settings_factory(sandbox_enabled=True, sql_access=True, warehouse_urls=(Secret(first), Secret(second)))
    return settings, first, second


async def test_a_customer_moves_to_another_server_while_a_sync_writes_and_nothing_is_lost(
    two_servers: tuple[Settings, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, first, second = two_servers
    async with running_bff(settings) as bff:
        token, account_id, by_name, connection_id = await crm_customer(bff, "mover")
        before = await bff.services.warehouse.placement(account_id)
        assert before is not None and before.server == server_name(first)
        # What the customer made itself goes along: a query table, and a table of its writer login.
        made = await bff.client.post(
            "/api/table", headers=auth(token), json={"name": "Big deals", "query": 'SELECT id FROM "Sandbox CRM".deals'}
        )
        assert made.status_code == 201, made.text
        with await sql_login(bff, account_id, write=True) as writer:
            writer.execute("CREATE SCHEMA mine")
            writer.execute("CREATE TABLE mine.notes AS SELECT 'kept' AS note")
        with psycopg.connect(first, autocommit=True) as conn:
            verifier = conn.execute(
                "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (before.database + "_sqlw",)
            ).fetchone()
        # A full sync, its third page held until the move has begun.
        original = TableWriter.write
        pages = 0
        move_began = asyncio.Event()

        async def held_write(self: TableWriter, *args: Any, **kwargs: Any) -> int:
            nonlocal pages
            pages += 1
            if pages == 3:
                await move_began.wait()
            return await original(self, *args, **kwargs)

        monkeypatch.setattr(TableWriter, "write", held_write)
        monkeypatch.setattr(sync_service, "WRITE_BATCH_RECORDS", 1)  # a write per page, whatever was fetched
        started = await bff.client.post(f"/api/server/{connection_id}/sync", headers=auth(token), json={"full": True})
        assert started.status_code == 202, started.text
        while pages < 3:
            await asyncio.sleep(0.01)
        run_id = (await bff.services.store.runs.active(connection_id)).id  # type: ignore[union-attr]
        mover = asyncio.create_task(bff_cli(settings, "warehouse", "move", str(account_id), server_name(second)))
        # The held page goes on once the source is dumped and closed (its copy is being made).
        while not _exists(second, before.database):
            assert not mover.done(), mover.result().stderr
            await asyncio.sleep(0.01)
        move_began.set()
        moved = await mover
        assert moved.returncode == 0, moved.stderr
        report = json.loads(moved.stdout)
        assert report["source"] == server_name(first) and report["target"] == server_name(second)
        assert "postgresql://" not in moved.stdout + moved.stderr and "password" not in moved.stdout

        run = await bff.services.sync.wait(connection_id, timeout=120)
        assert run is not None and run.id == run_id and run.status == "succeeded", run
        assert run.records == {"contacts": 1250, "deals": 300}
        messages = [line["message"] for line in await logs(bff, token, connection_id)]
        assert any("being moved to another server" in m for m in messages), messages  # it did wait

        after = await bff.services.warehouse.placement(account_id)
        assert after is not None and after.server == server_name(second) and after.database == before.database
        assert not _exists(first, before.database) and _exists(second, before.database)
        with psycopg.connect(first, autocommit=True) as conn:  # the old roles went with it
            assert (
                conn.execute("SELECT 1 FROM pg_roles WHERE rolname LIKE %s", (before.database + "%",)).fetchone()
                is None
            )
        # Every row was written by this run exactly once, on the new server; none is marked deleted.
        async with customer_database(bff, account_id) as conn:
            for table, count in (("contacts", 1250), ("deals", 300)):
                cur = await conn.execute(
                    f"SELECT count(*) AS n, count(DISTINCT id) AS ids, count(*) FILTER (WHERE _run_id = %s) AS by_run,"
                    f' count(_deleted_at) AS deleted FROM "Sandbox CRM".{table}',
                    (run_id,),
                )
                assert await cur.fetchone() == {"n": count, "ids": count, "by_run": count, "deleted": 0}
            cur = await conn.execute("SELECT note FROM mine.notes")
            assert await cur.fetchall() == [{"note": "kept"}]
        assert (await rows(bff, token, by_name["deals"]["id"]))["count"] == 300
        assert (await rows(bff, token, made.json()["id"]))["count"] == 300
        answer = await _query(bff, token, "SELECT count(*) AS n FROM mine.notes")
        assert answer.status_code == 200 and answer.json()["rows"] == [{"n": 1}], answer.text
        # The SQL logins keep their passwords (the verifier was copied), so their credentials hold.
        with psycopg.connect(second, autocommit=True) as conn:
            assert (
                conn.execute(
                    "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (before.database + "_sqlw",)
                ).fetchone()
                == verifier
            )
        # A second move is refused while one runs; an unknown server is a one-line error.
        with pytest.raises(warehouse_move.MoveRefused, match="is on"):
            await warehouse_move.move_customer(bff.services.warehouse, account_id, server_name(second))
        with pytest.raises(warehouse_move.MoveRefused, match="not a warehouse server"):
            await warehouse_move.move_customer(bff.services.warehouse, account_id, "nowhere:5432")


async def test_while_a_customer_moves_its_sql_writes_get_503_and_a_failed_move_leaves_it_writable(
    two_servers: tuple[Settings, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, first, second = two_servers
    async with running_bff(settings) as bff:
        token, account_id, by_name, _ = await crm_customer(bff, "stays")
        placement = await bff.services.warehouse.placement(account_id)
        assert placement is not None
        write = 'DELETE FROM "Sandbox CRM".deals WHERE id = (SELECT min(id) FROM "Sandbox CRM".deals)'
        assert (await _query(bff, token, "SELECT 1 AS one")).status_code == 200
        with await sql_login(bff, account_id) as login:
            login_before = login.info.dsn + " password=" + str(login.info.password)
        holding = asyncio.Event()
        release = asyncio.Event()

        async def failing_restore(tool: str, args: list[str], url: str, **kwargs: Any) -> None:
            if tool == "pg_restore":
                holding.set()
                await release.wait()
                raise warehouse_move.DatabaseUnavailable("pg_restore failed: as this test asked")
            await real_run(tool, args, url, **kwargs)

        real_run = warehouse_move._run
        monkeypatch.setattr(warehouse_move, "_run", failing_restore)
        mover = asyncio.create_task(
            warehouse_move.move_customer(bff.services.warehouse, account_id, server_name(second))
        )
        await asyncio.wait_for(holding.wait(), 60)
        # Mid-move: customer SQL that writes is answered 503 warehouse_moving (with Retry-After) ...
        answer = await _query(bff, token, write, write=True)
        assert answer.status_code == 503 and answer.json()["code"] == "warehouse_moving", answer.text
        assert answer.headers["Retry-After"]
        # ... the BFF's own writes fail as moving (a sync waits on them) ...
        with pytest.raises(WarehouseMoving):
            async with bff.services.warehouse.servers.connection(placement) as conn:
                await conn.execute('UPDATE "Sandbox CRM".deals SET name = name')
        # ... the customer's SQL logins are refused, and the rows API still reads.
        with pytest.raises(psycopg.OperationalError, match="permission denied"):
            psycopg.connect(login_before, autocommit=True)
        with pytest.raises(AssertionError, match="warehouse_moving"):
            await sql_login(bff, account_id)  # new credentials wait for the move too
        for _ in range(2):  # the first read may meet a session the move ended
            answer = await bff.client.get(
                f"/api/database/rows/table/{by_name['deals']['id']}/?user_field_names=true", headers=auth(token)
            )
            if answer.status_code == 200:
                break
            assert answer.json()["code"] == "warehouse_moving"
        assert answer.status_code == 200 and answer.json()["count"] == 300
        release.set()
        with pytest.raises(warehouse_move.DatabaseUnavailable, match="as this test asked"):
            await mover
        # The failed move changed nothing: same server, writable, nothing left on the target.
        assert await bff.services.warehouse.placement(account_id) == placement
        assert (await bff.services.warehouse.servers.placements.moving_to(account_id))[1] is None
        assert not _exists(second, placement.database) and _exists(first, placement.database)
        answer = await _query(bff, token, write, write=True)
        assert answer.status_code == 200 and answer.json()["rowcount"] == 1, answer.text
        async with bff.services.warehouse.servers.connection(placement) as conn:
            await conn.execute('UPDATE "Sandbox CRM".deals SET name = name WHERE false')
        with await sql_login(bff, account_id) as login:
            assert login.execute('SELECT count(*) FROM "Sandbox CRM".deals').fetchone() == (299,)
