"""A database per customer (DESIGN §15, issue 22 items 1 and 7): placement over several servers,
catalogues that show a customer nothing of another customer or of the control database, advisory
locks that cannot stall another customer's sync, and a customer's database dropped with it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
import pytest
from conftest import BFF, auth, running_bff
from sandbox_flows import connect_crm
from sync_helpers import sync, tables
from tables_helpers import crm_customer, identity_customer, rows

from bff import testing
from bff.db import libpq_environment, pg_tool
from bff.settings import Secret, Settings, generate_secret_key
from bff.warehouse_servers import ROLE_SUFFIXES, server_name

SECRET_LITERAL = "vip-customer-ceo@bigclient.example"


@pytest.fixture
async def sbff(settings_factory: Callable[..., Settings]) -> AsyncIterator[BFF]:
    async with running_bff(settings_factory(sandbox_enabled=True, sql_access=True)) as instance:
        yield instance


async def query(bff: BFF, token: str, text: str) -> Any:
    answer = await bff.client.post("/api/database/query/", headers=auth(token), json={"query": text, "limit": 10000})
    assert answer.status_code == 200, answer.text
    return answer.json()["rows"]


async def sql_login(bff: BFF, account_id: int, *, write: bool = False) -> psycopg.Connection[Any]:
    """A connection on the customer's SQL login, read-only or a writer (as its partner asks for one)."""
    async with bff.services.store.connection() as conn:
        cur = await conn.execute("SELECT partner_id FROM sub_accounts WHERE id = %s", (account_id,))
        partner = await bff.services.store.partners.get((await cur.fetchone())["partner_id"])
    minted = bff.services.tokens.mint_partner_token(partner_id=partner.id, generation=partner.token_generation)
    answer = await bff.client.post(
        f"/api/partner/sub-account/{account_id}/database-credentials",
        headers=auth(minted.token),
        json={"write": True} if write else None,
    )
    assert answer.status_code == 200, answer.text
    login = answer.json()
    return psycopg.connect(
        host=login["host"], port=login["port"], dbname=login["database"], user=login["user"],
        password=login["password"], autocommit=True,
    )  # fmt: skip


async def test_a_customers_catalogue_shows_nothing_of_other_customers_or_the_control_database(sbff: BFF) -> None:
    """The red-team queries of issue 22, through /api/database/query/ and through the SQL login."""
    token, account_id, _, _ = await crm_customer(sbff, "a")
    other_token, other_id, _, _ = await crm_customer(sbff, "b")
    secret_view = f"SELECT id FROM \"Sandbox CRM\".contacts WHERE email <> '{SECRET_LITERAL}'"
    made = await sbff.client.post("/api/table", headers=auth(other_token), json={"name": "VIPs", "query": secret_view})
    assert made.status_code == 201, made.text
    own = await sbff.client.post(
        "/api/table", headers=auth(token), json={"name": "Mine", "query": 'SELECT id FROM "Sandbox CRM".deals'}
    )
    assert own.status_code == 201, own.text
    other_database = await sbff.services.warehouse.database_of(other_id)
    own_database = await sbff.services.warehouse.database_of(account_id)
    assert other_database and own_database
    control_tables = (
        "partners",
        "sub_accounts",
        "connections",
        "warehouse_tables",
        "query_tables",
        "procrastinate_jobs",
    )

    def leaks(found: Any) -> list[str]:
        text = repr(found)
        return [word for word in (SECRET_LITERAL, other_database, "VIPs", *control_tables) if word in text]

    views = await query(sbff, token, "SELECT schemaname, viewname, definition FROM pg_views")
    assert [(v["schemaname"], v["viewname"]) for v in views if v["schemaname"] == "public"] == [("public", "Mine")]
    catalogue = {
        "pg_views": views,
        "pg_views wh_": await query(
            sbff, token, "SELECT definition FROM pg_views WHERE schemaname LIKE 'wh\\_%' OR definition LIKE '%@%'"
        ),
        "pg_class": await query(sbff, token, "SELECT relname, reltuples FROM pg_class"),
        "pg_namespace": await query(sbff, token, "SELECT nspname FROM pg_namespace"),
        "pg_stat_user_tables": await query(
            sbff, token, "SELECT schemaname, relname, n_live_tup FROM pg_stat_user_tables"
        ),
        "information_schema.tables": await query(
            sbff, token, "SELECT table_schema, table_name FROM information_schema.tables"
        ),
        "information_schema.columns": await query(
            sbff, token, "SELECT table_schema, table_name, column_name FROM information_schema.columns"
        ),
    }
    for name, found in catalogue.items():
        assert found is not None and leaks(found) == [], (name, leaks(found))
    # Its own tables are there (the queries did read the catalogue).
    stats = {(r["schemaname"], r["relname"]) for r in catalogue["pg_stat_user_tables"]}
    assert {("Sandbox CRM", "contacts"), ("Sandbox CRM", "deals")} <= stats
    # The same through a BI tool's login.
    with await sql_login(sbff, account_id) as conn:
        for statement in (
            "SELECT viewname, definition FROM pg_views",
            "SELECT relname FROM pg_class",
            "SELECT relname, n_live_tup FROM pg_stat_user_tables",
            "SELECT table_schema, table_name FROM information_schema.tables",
        ):
            assert leaks(conn.execute(statement).fetchall()) == [], statement
    # The other customer's view is still there, in its own database.
    assert (await rows(sbff, other_token, made.json()["id"]))["count"] == 1250


async def test_an_advisory_lock_a_customer_holds_cannot_stall_another_customers_sync(sbff: BFF) -> None:
    """Issue 22: holding pg_advisory_lock(<next connection id>, hashtext('contacts')) stalled another
    customer's first sync when every customer shared one database."""
    token, account_id, _, connection_id = await crm_customer(sbff, "holder")
    _, partner_token = await sbff.partner("p2")
    minted = await sbff.integrate(partner_token, "victim")
    identity = await sbff.client.get(
        f"/api/partner/sub-account/identity/?account_id={minted['account_id']}", headers=auth(partner_token)
    )
    victim = identity.json()["token"]
    with await sql_login(sbff, account_id) as holder:
        for next_id in range(connection_id + 1, connection_id + 4):
            for stream in ("contacts", "deals"):
                holder.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (next_id, stream))
        crm = await connect_crm(sbff.client, victim)
        assert crm["id"] in range(connection_id + 1, connection_id + 4)
        run = await asyncio.wait_for(sync(sbff, victim, crm["id"]), timeout=60)
        assert run["status"] == "succeeded", run
    assert {name: t["row_count"] for name, t in (await tables(sbff.client, victim)).items()} == {
        "contacts": 1250,
        "deals": 300,
    }


async def bff_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m bff.cli ARGS`` with the database, warehouse servers and keys of a running BFF."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BFF_")}
    env.update(
        BFF_DATABASE_URL=settings.database_url.reveal(),  # type: ignore[union-attr]
        BFF_WAREHOUSE_URLS=",".join(url.reveal() for url in settings.warehouse_urls),
        BFF_SECRET_KEYS=generate_secret_key(),
        BFF_ENCRYPTION_KEY=settings.encryption_key.reveal(),
        BFF_DATA_DIR=str(settings.data_dir),
    )
    command = [sys.executable, "-m", "bff.cli", *args]
    return await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, env=env, timeout=180)


@pytest.fixture
def second_server(second_warehouse_server: str) -> str:
    """Another embedded PostgreSQL: a second warehouse server."""
    return second_warehouse_server


async def test_customers_spread_over_the_warehouse_servers(
    settings_factory: Callable[..., Settings], database_url: str, second_server: str
) -> None:
    first = database_url
    settings = settings_factory(sandbox_enabled=True, warehouse_urls=(Secret(first), Secret(second_server)))
    async with running_bff(settings) as bff:
        customers = [await crm_customer(bff, f"c{i}") for i in range(3)]
        placements = [await bff.services.warehouse.placement(account_id) for _, account_id, _, _ in customers]
        # New customers go to the emptiest server; the first listed among equals.
        assert [p.server for p in placements] == [server_name(first), server_name(second_server), server_name(first)]
        for (token, _, by_name, _), placement in zip(customers, placements, strict=True):
            assert (await rows(bff, token, by_name["deals"]["id"]))["count"] == 300
            server = first if placement.server == server_name(first) else second_server
            with psycopg.connect(server, autocommit=True) as conn:
                found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (placement.database,)).fetchone()
                assert found == (1,)
        # The second server's customer is not on the first server at all.
        with psycopg.connect(first, autocommit=True) as conn:
            assert (
                conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (placements[1].database,)).fetchone()
                is None
            )
        # bff warehouse servers: customers and size per server (the keys of the running BFF).
        listed = await bff_cli(settings, "warehouse", "servers")
        assert listed.returncode == 0, listed.stderr
        servers = json.loads(listed.stdout)
        assert [(s["server"], s["customers"]) for s in servers] == [
            (server_name(first), 2),
            (server_name(second_server), 1),
        ]
        assert all(s["size_bytes"] > 1_000_000 for s in servers), servers  # databases of several MB each
        assert "postgresql://" not in listed.stdout and "password" not in listed.stdout
        # A customer on the second server is dropped there with its roles.
        assert await bff.services.warehouse.drop_customer(customers[1][1])
        with psycopg.connect(second_server, autocommit=True) as conn:
            assert (
                conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (placements[1].database,)).fetchone()
                is None
            )
            assert (
                conn.execute("SELECT 1 FROM pg_roles WHERE rolname LIKE %s", (placements[1].database + "%",)).fetchone()
                is None
            )


async def test_dropping_a_customer_drops_its_database_and_every_role(sbff: BFF) -> None:
    token, account_id, by_name, _ = await crm_customer(sbff, "leaving")
    await sbff.client.post("/api/table", headers=auth(token), json={"name": "Q", "query": "SELECT 1 AS one"})
    await query(sbff, token, "SELECT 1")
    placement = await sbff.services.warehouse.placement(account_id)
    assert placement is not None
    roles = [placement.database + suffix for suffix in ROLE_SUFFIXES]
    async with sbff.services.store.connection() as conn:
        cur = await conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (roles,))
        assert {r["rolname"] for r in await cur.fetchall()} >= {placement.database, placement.database + "_q"}
    assert await sbff.services.warehouse.drop_customer(account_id)
    async with sbff.services.store.connection() as conn:
        cur = await conn.execute("SELECT datname FROM pg_database WHERE datname = %s", (placement.database,))
        assert await cur.fetchone() is None
        cur = await conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (roles,))
        assert await cur.fetchall() == []
        cur = await conn.execute("SELECT COUNT(*) AS n FROM warehouse_tables WHERE sub_account_id = %s", (account_id,))
        assert await cur.fetchone() == {"n": 0}
    assert await sbff.services.warehouse.placement(account_id) is None
    assert not await sbff.services.warehouse.drop_customer(account_id)  # nothing left to drop


async def test_schemas_are_named_after_connections_and_follow_a_rename(sbff: BFF) -> None:
    token, account_id, by_name, connection_id = await crm_customer(sbff, "names")
    assert (by_name["deals"]["schema"], by_name["deals"]["table"]) == ("Sandbox CRM", "deals")
    assert by_name["deals"]["sql_name"] == '"Sandbox CRM"."deals"'
    # A second connection of the same name gets " (2)".
    second = await connect_crm(sbff.client, token)
    assert (await sync(sbff, token, second["id"]))["status"] == "succeeded"
    listed = (await sbff.client.get(f"/api/database/tables/database/{account_id}/", headers=auth(token))).json()
    schemas = {(t["connection"], t["schema"]) for t in listed["results"] if t["type"] == "synced"}
    assert schemas == {(connection_id, "Sandbox CRM"), (second["id"], "Sandbox CRM (2)")}
    made = await sbff.client.post(
        "/api/table", headers=auth(token), json={"name": "Big deals", "query": 'SELECT id FROM "Sandbox CRM".deals'}
    )
    assert made.status_code == 201, made.text

    async def rename(name: str) -> set[str]:
        answer = await sbff.client.patch(f"/api/server/{connection_id}", headers=auth(token), json={"name": name})
        assert answer.status_code == 200, answer.text
        listed = (await sbff.client.get(f"/api/database/tables/database/{account_id}/", headers=auth(token))).json()
        return {t["schema"] for t in listed["results"] if t["connection"] == connection_id}

    # Taken by the other connection: a duplicate gets " (2)".
    assert await rename("Sandbox CRM (2)") == {"Sandbox CRM (2) (2)"}
    assert await rename("exact online") == {"exact online"}
    listed = (await sbff.client.get(f"/api/database/tables/database/{account_id}/", headers=auth(token))).json()
    renamed = {t["name"]: t for t in listed["results"] if t["connection"] == connection_id}
    assert renamed["deals"]["sql_name"] == '"exact online"."deals"'
    # The saved query table keeps working (the view follows the schema), and so do rows and writes.
    assert (await rows(sbff, token, made.json()["id"]))["count"] == 300
    assert (await rows(sbff, token, renamed["deals"]["id"]))["count"] == 300
    assert (await sync(sbff, token, connection_id))["status"] == "succeeded"
    assert await query(sbff, token, 'SELECT COUNT(*) AS n FROM "exact online".deals') == [{"n": 300}]


async def test_customers_may_write_their_own_database_and_the_next_sync_upserts_over_it(sbff: BFF) -> None:
    """Issue 22 item 5: a writer login and /api/database/query/ {"write": true} change synced rows and
    make tables in schemas of the customer's own; the synced schemas' DDL stays the BFF's."""
    token, account_id, by_name, connection_id = await crm_customer(sbff, "writer")
    deals = by_name["deals"]["sql_name"]

    async def write(statement: str) -> Any:
        return await sbff.client.post(
            "/api/database/query/", headers=auth(token), json={"query": statement, "write": True}
        )

    deleted = await write(f"DELETE FROM {deals} WHERE stage = 'closedlost'")
    assert deleted.status_code == 200, deleted.text
    lost = deleted.json()["rowcount"]
    assert lost > 0 and deleted.json()["status"] == f"DELETE {lost}"
    changed = (await write(f"UPDATE {deals} SET amount = 0 WHERE id = 'd_001' RETURNING id, amount")).json()
    assert changed["rows"] == [{"id": "d_001", "amount": 0.0}] and changed["rowcount"] == 1
    made = await write("CREATE SCHEMA mine")
    assert made.status_code == 200 and made.json()["status"] == "CREATE SCHEMA", made.text
    assert (await write('CREATE TABLE mine.notes AS SELECT id FROM "Sandbox CRM".deals LIMIT 3')).status_code == 200
    for refused in (
        f"ALTER TABLE {deals} ADD COLUMN mine int",
        f"DROP TABLE {deals}",
        f"TRUNCATE {deals}",
        'CREATE TABLE "Sandbox CRM".mine (n int)',
        "UPDATE _bff.state SET state = '{}'",
        "CREATE TEMP TABLE t (n int)",
        "SELECT 1; SELECT 2",
    ):
        answer = await write(refused)
        assert answer.status_code == 400 and answer.json()["code"] == "query_invalid", (refused, answer.text)
    # Without write, the same endpoint stays read-only.
    read_only = await sbff.client.post(
        "/api/database/query/", headers=auth(token), json={"query": f"DELETE FROM {deals}"}
    )
    assert read_only.status_code == 400
    assert (await rows(sbff, token, by_name["deals"]["id"]))["count"] == 300 - lost
    # The customer's read login reads what its writers made; its writer login writes too.
    with await sql_login(sbff, account_id) as conn:
        assert conn.execute("SELECT COUNT(*) FROM mine.notes").fetchone() == (3,)
    with await sql_login(sbff, account_id, write=True) as conn:
        conn.execute("INSERT INTO mine.notes VALUES ('x')")
        assert conn.execute(f"DELETE FROM {deals} WHERE id = 'd_001'").rowcount == 1
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"ALTER TABLE {deals} ADD COLUMN mine int")
        assert conn.execute("SHOW statement_timeout").fetchone() == ("10s",)
    # The next (full) sync upserts over the customer's edits, as usual.
    assert (await sync(sbff, token, connection_id, full=True))["status"] == "succeeded"
    assert (await rows(sbff, token, by_name["deals"]["id"]))["count"] == 300
    restored = await rows(sbff, token, by_name["deals"]["id"], "filter__id__equal=d_001")
    assert restored["results"][0]["amount"] != 0


async def test_a_partner_exports_a_customers_database_as_a_pg_dump_archive(
    sbff: BFF, test_databases: testing.TestDatabases
) -> None:
    token, account_id, partner_token = await identity_customer(sbff, "exported")
    path = f"/api/partner/sub-account/{account_id}/export"
    nothing = await sbff.client.get(path, headers=auth(partner_token))
    assert nothing.status_code == 404 and nothing.json()["code"] == "no_warehouse"
    crm = await connect_crm(sbff.client, token)
    assert (await sync(sbff, token, crm["id"]))["status"] == "succeeded"
    await sbff.client.post(
        "/api/table", headers=auth(token), json={"name": "Won", "query": 'SELECT id FROM "Sandbox CRM".deals'}
    )
    answer = await sbff.client.get(path, headers=auth(partner_token))
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/octet-stream"
    assert answer.headers["cache-control"] == "no-store" and answer.content.startswith(b"PGDMP")
    # It restores anywhere (no owners, no grants) with the customer's tables and views, and no cursors.
    target = f"restored_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(test_databases.admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{target}"')
    url = test_databases.admin_url.replace("/postgres?", f"/{target}?")
    try:
        restore = subprocess.run(
            [pg_tool("pg_restore"), "--no-owner", "--dbname", target],
            input=answer.content,
            capture_output=True,
            env=libpq_environment(url),
            check=False,
        )
        assert restore.returncode == 0, restore.stderr
        with psycopg.connect(url) as conn:
            assert conn.execute('SELECT COUNT(*) FROM "Sandbox CRM".deals').fetchone() == (300,)
            assert conn.execute('SELECT COUNT(*) FROM public."Won"').fetchone() == (300,)
            assert conn.execute("SELECT to_regnamespace('_bff')").fetchone() == (None,)
    finally:
        with psycopg.connect(test_databases.admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)')
    # Only its partner may: another partner's token finds nothing; a customer token is refused.
    _, stranger = await sbff.partner("stranger")
    assert (await sbff.client.get(path, headers=auth(stranger))).status_code == 404
    assert (await sbff.client.get(path, headers=auth(token))).status_code in (401, 403)


async def test_deleting_a_sub_account_drops_its_database_and_roles(sbff: BFF) -> None:
    token, account_id, partner_token = await identity_customer(sbff, "deleted")
    crm = await connect_crm(sbff.client, token)
    assert (await sync(sbff, token, crm["id"]))["status"] == "succeeded"
    await query(sbff, token, "SELECT 1")  # its runner exists too
    placement = await sbff.services.warehouse.placement(account_id)
    assert placement is not None
    _, stranger = await sbff.partner("stranger")
    assert (
        await sbff.client.delete(f"/api/partner/sub-account/{account_id}", headers=auth(stranger))
    ).status_code == 404
    gone = await sbff.client.delete(f"/api/partner/sub-account/{account_id}", headers=auth(partner_token))
    assert gone.status_code == 204, gone.text
    async with sbff.services.store.connection() as conn:
        cur = await conn.execute("SELECT 1 AS found FROM pg_database WHERE datname = %s", (placement.database,))
        assert await cur.fetchone() is None
        cur = await conn.execute("SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s)", (placement.database,))
        assert await cur.fetchall() == []
        cur = await conn.execute("SELECT COUNT(*) AS n FROM connections WHERE sub_account_id = %s", (account_id,))
        assert await cur.fetchone() == {"n": 0}
    listed = (await sbff.client.get("/api/partner/sub-accounts", headers=auth(partner_token))).json()
    assert account_id not in {a["id"] for a in listed["results"]}
    assert (
        await sbff.client.delete(f"/api/partner/sub-account/{account_id}", headers=auth(partner_token))
    ).status_code == 404
