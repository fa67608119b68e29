"""The per-sub-account warehouse databases: upserts, cursors in the same transaction, tables' life cycle,
and isolation enforced by PostgreSQL (a database and roles per customer)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from bff.connectors import Stream, load_connectors
from bff.connectors.definitions import FieldSpec
from bff.store import Store
from bff.warehouse import Warehouse


@dataclasses.dataclass
class Env:
    store: Store
    warehouse: Warehouse
    accounts: list[int]
    connections: dict[int, list[int]]


@pytest.fixture
async def env(database_url: str) -> AsyncIterator[Env]:
    store = Store(database_url)
    await store.open()
    partner = await store.partners.create("p", [])
    accounts, connections = [], {}
    for external_id in ("a", "b"):
        account = await store.sub_accounts.create(partner.id, external_id, {})
        accounts.append(account.id)
        connections[account.id] = [
            (await store.connections.create(account.id, "sandbox_crm", "CRM", "OK")).id for _ in range(2)
        ]
    warehouse = Warehouse(store)
    try:
        yield Env(store, warehouse, accounts, connections)
    finally:
        await store.close()


def contacts() -> Stream:
    return load_connectors()["sandbox_crm"].stream("contacts")


def contact(i: int, **changes: Any) -> dict[str, Any]:
    record = {
        "id": f"c_{i:04d}",
        "email": f"p{i}@example.test",
        "first_name": "Ann",
        "last_name": f"Last {i}",
        "company": "Acme",
        "created_at": "2025-01-01T00:00:00Z",
        "updated_at": f"2026-01-01T00:{i % 60:02d}:00Z",
    }
    record.update(changes)
    return record


async def test_upsert_by_primary_key_never_duplicates(env: Env) -> None:
    account, connection = env.accounts[0], env.connections[env.accounts[0]][0]
    table = await env.warehouse.open_table(account, connection, contacts())
    assert await table.write([contact(i) for i in range(1, 101)], {"cursor": "a"}, run_id=1) == 100
    assert (
        await table.write([contact(i, last_name="Changed") for i in range(51, 151)], {"cursor": "b"}, run_id=2) == 100
    )
    count, rows = await env.warehouse.read_rows(account, table.table, offset=0, limit=1000)
    assert count == 150 and len({row["id"] for row in rows}) == 150
    by_id = {row["id"]: row for row in rows}
    assert by_id["c_0050"]["last_name"] == "Last 50" and by_id["c_0050"]["_run_id"] == 1
    assert by_id["c_0051"]["last_name"] == "Changed" and by_id["c_0051"]["_run_id"] == 2
    assert by_id["c_0051"]["_synced_at"].endswith("Z")
    # Insertion order is the reading order, and an update keeps a row's place.
    assert [row["id"] for row in rows[:3]] == ["c_0001", "c_0002", "c_0003"]
    assert await table.load_state() == {"cursor": "b"}


async def test_records_without_a_primary_key_are_left_out(env: Env) -> None:
    account, connection = env.accounts[0], env.connections[env.accounts[0]][0]
    table = await env.warehouse.open_table(account, connection, contacts())
    assert await table.write([contact(1), contact(2, id=None)], {}, run_id=1) == 1
    assert await table.write([contact(2, id=None)], {}, run_id=2) == 0
    assert (await env.warehouse.read_rows(account, table.table, offset=0, limit=10))[0] == 1


async def test_a_failed_page_leaves_neither_rows_nor_cursor(env: Env) -> None:
    account, connection = env.accounts[0], env.connections[env.accounts[0]][0]
    table = await env.warehouse.open_table(account, connection, contacts())
    await table.write([contact(1)], {"cursor": "first"}, run_id=1)
    # The 3rd record cannot be stored: the first two of this page must not be either.
    page = [contact(2), contact(3), contact(4, email=object())]
    with pytest.raises((psycopg.Error, TypeError)):
        await table.write(page, {"cursor": "second"}, run_id=2)
    count, _ = await env.warehouse.read_rows(account, table.table, offset=0, limit=10)
    assert count == 1
    assert await table.load_state() == {"cursor": "first"}
    # Also as read by a fresh warehouse object (another process, say).
    fresh = Warehouse(env.store)
    assert await (await fresh.open_table(account, connection, contacts())).load_state() == {"cursor": "first"}


async def test_one_database_per_sub_account_and_globally_unique_table_ids(env: Env) -> None:
    a, b = env.accounts
    table_a = await env.warehouse.open_table(a, env.connections[a][0], contacts())
    table_b = await env.warehouse.open_table(b, env.connections[b][0], contacts())
    await table_a.write([contact(1)], {}, run_id=1)
    await table_b.write([contact(1), contact(2)], {}, run_id=2)
    database_a, database_b = await env.warehouse.database_of(a), await env.warehouse.database_of(b)
    assert database_a and database_b and database_a != database_b
    assert database_a.startswith("wh_") and table_a.table.placement.database == database_a  # random, not the id
    # A schema named after the connection, a table named after the stream.
    assert (table_a.table.schema, table_a.table.physical) == ("CRM", "contacts")
    async with env.store.connection() as conn:
        cur = await conn.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s)", ([database_a, database_b],))
        assert {row["datname"] for row in await cur.fetchall()} == {database_a, database_b}
        # Nothing of the customers' data is in the control database.
        cur = await conn.execute("SELECT COUNT(*) AS n FROM pg_tables WHERE tablename = 'contacts'")
        assert await cur.fetchone() == {"n": 0}
    assert table_a.table.id != table_b.table.id
    assert await env.warehouse.table_owner(table_a.table.id) == a
    assert await env.warehouse.table_owner(table_b.table.id) == b
    # Each sub-account only sees its own tables.
    assert await env.warehouse.get_table(a, table_b.table.id) is None
    assert [(t.id, n.total) for t, n in await env.warehouse.list_tables(b)] == [(table_b.table.id, 2)]
    # Opening the same stream again gives the same table.
    again = await Warehouse(env.store).open_table(a, env.connections[a][0], contacts())
    assert again.table.id == table_a.table.id


async def test_each_customers_role_reads_its_own_database_and_nothing_else(env: Env, database_url: str) -> None:
    a, b = env.accounts
    for account in (a, b):
        writer = await env.warehouse.open_table(account, env.connections[account][0], contacts())
        await writer.write([contact(1)], {}, run_id=1)
    place_a, place_b = await env.warehouse.placement(a), await env.warehouse.placement(b)
    assert place_a is not None and place_b is not None
    async with env.store.connection() as conn:
        cur = await conn.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (place_a.database,))
        assert await cur.fetchone() == {"rolcanlogin": False}  # NOLOGIN
        # CONNECT is not PUBLIC's on a customer's database: only its own roles may open it.
        cur = await conn.execute(
            "SELECT has_database_privilege(%s, %s, 'CONNECT') AS own, has_database_privilege(%s, %s, 'CONNECT') AS other,"
            " has_database_privilege('public', %s, 'CONNECT') AS anyone,"
            " has_database_privilege(%s, %s, 'TEMPORARY') AS temp",
            (place_a.database, place_a.database, place_a.database, place_b.database, place_a.database)
            + (place_a.database, place_a.database),
        )
        assert await cur.fetchone() == {"own": True, "other": False, "anyone": False, "temp": False}
    async with env.warehouse.servers.connection(place_a) as conn:
        await conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(place_a.database)))
        try:
            cur = await conn.execute('SELECT COUNT(*) AS n FROM "CRM".contacts')
            assert await cur.fetchone() == {"n": 1}
            for forbidden in (
                sql.SQL("SELECT * FROM _bff.state"),
                sql.SQL('DELETE FROM "CRM".contacts'),
                sql.SQL('CREATE TABLE "CRM".x (y int)'),
                sql.SQL("CREATE TABLE public.x (y int)"),
                sql.SQL("CREATE TEMP TABLE x (y int)"),
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    async with conn.transaction():
                        await conn.execute(forbidden)
        finally:
            await conn.execute("RESET ROLE")


async def test_reading_a_sub_account_without_tables_creates_nothing(env: Env) -> None:
    assert await env.warehouse.list_tables(env.accounts[1]) == []
    assert await env.warehouse.get_table(env.accounts[1], 12345) is None
    assert await env.warehouse.placement(env.accounts[1]) is None


async def test_drop_connection_tables_removes_tables_cursors_and_index(env: Env) -> None:
    account = env.accounts[0]
    keep, drop = env.connections[account]
    kept = await env.warehouse.open_table(account, keep, contacts())
    dropped = await env.warehouse.open_table(account, drop, contacts())
    deals = await env.warehouse.open_table(account, drop, load_connectors()["sandbox_crm"].stream("deals"))
    for table in (kept, dropped):
        await table.write([contact(1)], {"cursor": "x"}, run_id=1)
    assert await env.warehouse.drop_connection_tables(account, drop) == 2
    assert [t.connection_id for t, _ in await env.warehouse.list_tables(account)] == [keep]
    assert await env.warehouse.table_owner(dropped.table.id) is None
    assert await env.warehouse.table_owner(deals.table.id) is None
    async with env.warehouse.servers.connection(kept.table.placement) as conn:
        cur = await conn.execute(
            "SELECT schemaname, tablename FROM pg_tables"
            " WHERE schemaname NOT LIKE 'pg\\_%%' AND schemaname <> 'information_schema'"
        )
        names = {(row["schemaname"], row["tablename"]) for row in await cur.fetchall()}
        assert names == {(kept.table.schema, "contacts"), ("_bff", "state")}
        cur = await conn.execute("SELECT COUNT(*) AS n FROM _bff.state WHERE connection_id = %s", (drop,))
        assert await cur.fetchone() == {"n": 0}
    # The stream starts from scratch if the same connection id ever syncs again.
    fresh = await env.warehouse.open_table(account, drop, contacts())
    assert await fresh.load_state() == {} and fresh.table.id != dropped.table.id


async def test_reset_state_forgets_cursors_but_keeps_rows(env: Env) -> None:
    account, connection = env.accounts[0], env.connections[env.accounts[0]][0]
    table = await env.warehouse.open_table(account, connection, contacts())
    await table.write([contact(1)], {"cursor": "x"}, run_id=1)
    await env.warehouse.reset_state(account, connection)
    assert await table.load_state() == {}
    assert (await env.warehouse.read_rows(account, table.table, offset=0, limit=10))[0] == 1


async def test_new_fields_become_columns_and_values_keep_their_types(env: Env) -> None:
    account, connection = env.accounts[0], env.connections[env.accounts[0]][0]
    base = contacts()
    first = await env.warehouse.open_table(account, connection, base)
    await first.write([contact(1)], {}, run_id=1)
    wider = dataclasses.replace(
        base,
        fields=(
            *base.fields,
            FieldSpec("tags", ("tags",), "json"),
            FieldSpec("vip", ("vip",), "boolean"),
            FieldSpec("score", ("score",), "number"),
            FieldSpec("visits", ("visits",), "integer"),
        ),
    )
    second = await env.warehouse.open_table(account, connection, wider)
    assert second.table.id == first.table.id
    assert [f.name for f in second.table.fields][-4:] == ["tags", "vip", "score", "visits"]
    await second.write([contact(2, tags=["a", {"b": 1}], vip=True, score=2.5, visits=3)], {}, run_id=2)
    _, rows = await env.warehouse.read_rows(account, second.table, offset=0, limit=10)
    assert rows[0]["tags"] is None and rows[0]["vip"] is None  # older rows: the new columns are empty
    assert rows[1]["tags"] == ["a", {"b": 1}] and rows[1]["vip"] is True
    assert rows[1]["score"] == 2.5 and rows[1]["visits"] == 3
    field_ids = [f.id for f in second.table.fields]
    assert len(set(field_ids)) == len(field_ids)


async def test_re_syncs_update_in_place_and_new_rows_are_summarised_into_the_synced_at_index(env: Env) -> None:
    account, connection = env.accounts[0], env.connections[env.accounts[0]][0]
    table = await env.warehouse.open_table(account, connection, contacts())
    target = table.table.identifier
    blocks = sql.SQL("SELECT id, (ctid::text::point)[0] AS block FROM {}").format(target)
    where: list[dict[str, float]] = []
    for run in (1, 2, 3):  # the first run inserts, the others rewrite every row
        for start in range(0, 3000, 500):
            await table.write([contact(i) for i in range(start, start + 500)], {}, run_id=run)
        async with env.warehouse.servers.connection(table.table.placement) as conn:
            where.append({row["id"]: row["block"] for row in await (await conn.execute(blocks)).fetchall()})
    # Each row's new version stays on its page (a HOT update: the page had room, no index changed).
    assert len(where[2]) == 3000
    assert sum(where[0][k] == where[2][k] for k in where[0]) >= 0.9 * 3000
    async with env.warehouse.servers.connection(table.table.placement) as conn:
        # Nothing left unsummarised: an updated_since read skips the ranges it does not need.
        index = sql.Identifier(table.table.schema, f"{table.table.physical[:45]}__synced").as_string(conn)
        cur = await conn.execute("SELECT brin_summarize_new_values(%s::regclass) AS n", (index,))
        assert (await cur.fetchone())["n"] == 0  # type: ignore[index]


async def test_a_page_write_does_not_wait_for_vacuum_s_lock(env: Env) -> None:
    account, connection = env.accounts[0], env.connections[env.accounts[0]][0]
    table = await env.warehouse.open_table(account, connection, contacts())
    await table.write([contact(i) for i in range(100)], {}, run_id=1)
    placement = table.table.placement
    with psycopg.connect(env.warehouse.servers.url(placement.server, placement.database)) as holder:
        # What VACUUM (and the BRIN summary) take: the summary waits briefly, then gives up.
        holder.execute(sql.SQL("LOCK TABLE {} IN SHARE UPDATE EXCLUSIVE MODE").format(table.table.identifier))
        assert await table.write([contact(i) for i in range(100, 600)], {"cursor": "x"}, run_id=2) == 500
        holder.rollback()
    count, _ = await env.warehouse.read_rows(account, table.table, offset=0, limit=1)
    assert count == 600
    assert await table.load_state() == {"cursor": "x"}


async def test_a_field_retyped_by_its_definition_keeps_its_values(env: Env) -> None:
    """Stripe's ``created`` went from integer (epoch seconds) to datetime, amounts from number to
    decimal: the next open converts the column and its values (epochs become their time)."""
    account, connection = env.accounts[0], env.connections[env.accounts[0]][0]
    base = contacts()
    old = dataclasses.replace(
        base,
        fields=(*base.fields, FieldSpec("created", ("created",), "integer"), FieldSpec("paid", ("paid",), "number")),
    )
    first = await env.warehouse.open_table(account, connection, old)
    await first.write([contact(1, created=1_700_000_003, paid=10.1)], {}, run_id=1)
    new = dataclasses.replace(
        base,
        fields=(*base.fields, FieldSpec("created", ("created",), "datetime"), FieldSpec("paid", ("paid",), "decimal")),
    )
    second = await env.warehouse.open_table(account, connection, new)
    assert second.table.id == first.table.id
    assert {f.name: f.type for f in second.table.fields}["created"] == "datetime"
    await second.write([contact(2, created="2026-01-02T03:04:05Z", paid="0.30")], {}, run_id=2)
    _, rows = await env.warehouse.read_rows(account, second.table, offset=0, limit=10)
    assert [(r["created"], r["paid"]) for r in rows] == [
        (dt.datetime(2023, 11, 14, 22, 13, 23, tzinfo=dt.UTC), decimal.Decimal("10.1")),
        (dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC), decimal.Decimal("0.30")),
    ]
