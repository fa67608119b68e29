"""The per-sub-account warehouse databases: upserts, cursors in the same transaction, tables' life cycle,
and isolation enforced by PostgreSQL (a database and roles per customer)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import decimal
from collections.abc import AsyncIterator, Callable
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


async def test_rows_a_re_sync_moves_to_new_blocks_are_summarised_too(env: Env) -> None:
    """Updated rows that no longer fit on their page go to blocks the table grows into: those
    block ranges need a summary as much as inserted rows do (nothing was inserted here)."""
    account, connection = env.accounts[0], env.connections[env.accounts[0]][0]
    table = await env.warehouse.open_table(account, connection, contacts())
    target = table.table.identifier
    size = sql.SQL("SELECT pg_relation_size({}::regclass) AS size").format(sql.Literal(target.as_string(None)))
    for run, company in ((1, "Acme"), (2, "A much longer company name " * 60)):
        for start in range(0, 3000, 500):
            await table.write([contact(i, company=company) for i in range(start, start + 500)], {}, run_id=run)
        async with env.warehouse.servers.connection(table.table.placement) as conn:
            grown = (await (await conn.execute(size)).fetchone())["size"]  # type: ignore[index]
        if run == 1:
            before = grown
    assert grown > 4 * before  # the long names made the table grow: past its first block range
    async with env.warehouse.servers.connection(table.table.placement) as conn:
        count = await (await conn.execute(sql.SQL("SELECT COUNT(*) AS n FROM {}").format(target))).fetchone()
        assert count == {"n": 3000}
        index = sql.Identifier(table.table.schema, f"{table.table.physical[:45]}__synced").as_string(conn)
        cur = await conn.execute("SELECT brin_summarize_new_values(%s::regclass) AS n", (index,))
        assert (await cur.fetchone())["n"] == 0  # type: ignore[index]


async def test_pages_after_the_first_bring_no_notice_from_the_server(env: Env) -> None:
    """The page's temporary table already exists on a connection's later pages: PostgreSQL says
    so in a notice unless told to keep it (one message less to make, send and read per page)."""
    account, connection = env.accounts[0], env.connections[env.accounts[0]][0]
    table = await env.warehouse.open_table(account, connection, contacts())
    placement = table.table.placement
    notices: list[str] = []
    async with await psycopg.AsyncConnection.connect(
        env.warehouse.servers.url(placement.server, placement.database), autocommit=True
    ) as conn:
        conn.add_notice_handler(lambda diagnostic: notices.append(str(diagnostic.message_primary)))
        begin = table._plan.sql(conn, "begin_page")
        for _ in range(3):
            await conn.execute(b"BEGIN; " + begin)
            await conn.execute("COMMIT")
    assert notices == []


async def test_a_customer_database_cut_short_while_being_made_accepts_no_login(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PUBLIC may connect to a database just made, until the BFF revokes it: a creation cut short
    in between (a worker killed) must not leave a database every login can open."""
    account = env.accounts[0]
    servers = env.warehouse.servers
    admin = servers.admin
    server = await servers.choose_server()
    state = (
        "SELECT datname AS name, datallowconn AS open, has_database_privilege('public', datname, 'CONNECT') AS public"
        " FROM pg_database WHERE datname LIKE 'wh%%'"
    )

    async def databases() -> dict[str, tuple[bool, bool]]:
        async with await admin(server) as conn:
            return {r["name"]: (r["open"], r["public"]) for r in await (await conn.execute(state)).fetchall()}

    class Cut(Exception):
        pass

    async def cut_after_create_database(server: str) -> Any:
        conn = await admin(server)
        execute = conn.execute

        async def until_roles(query: Any, *args: Any, **kwargs: Any) -> Any:
            if "CREATE ROLE" in (query if isinstance(query, str) else query.as_string(conn)):
                raise Cut
            return await execute(query, *args, **kwargs)

        conn.execute = until_roles  # type: ignore[method-assign]
        return conn

    before = await databases()
    monkeypatch.setattr(servers, "admin", cut_after_create_database)
    with pytest.raises(Cut):
        await env.warehouse.placement(account, create=True)
    monkeypatch.undo()
    left = {name: flags for name, flags in (await databases()).items() if name not in before}
    assert list(left.values()) == [(False, True)]  # PUBLIC not revoked yet, but nobody can connect
    # The next attempt makes that database whole (no second one): open to the customer's roles only.
    done = await env.warehouse.placement(account, create=True)
    assert done is not None and (await databases())[done.database] == (True, False)
    assert [name for name in await databases() if name not in before] == list(left) == [done.database]


async def test_two_processes_placing_one_new_customer_at_once_share_one_database(env: Env, database_url: str) -> None:
    """Two BFF processes (two stores, two warehouses: no lock in common but PostgreSQL's) make a new
    customer's first table at once: the second keeps the placement the first recorded, and both
    get the same database."""
    account = env.accounts[1]
    other_store = Store(database_url)
    await other_store.open()
    other = Warehouse(other_store)
    try:
        first, second = await asyncio.gather(
            env.warehouse.placement(account, create=True), other.placement(account, create=True)
        )
    finally:
        await other.close()
        await other_store.close()
    assert first is not None and first == second
    assert [p.database for p in await env.warehouse.servers.placements.all() if p.sub_account_id == account] == [
        first.database
    ]


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


# -- the write path's shortcuts (issue 27): each must store exactly what the plain upsert stores ---------------


async def stored(env: Env, table: Any) -> dict[str, dict[str, Any]]:
    """Every column of every row (``_sdc_batched_at`` too), by id; ``_seq`` left out (insertion order only)."""
    async with env.warehouse.servers.connection(table.table.placement) as conn:
        cur = await conn.execute(sql.SQL("SELECT *, _sdc_batched_at FROM {}").format(table.table.identifier))
        return {row["id"]: {k: v for k, v in row.items() if k != "_seq"} for row in await cur.fetchall()}


async def page_tables(env: Env, table: Any) -> int:
    """Temporary page tables in the customer's database, of any session (the upsert's staging)."""
    async with env.warehouse.servers.connection(table.table.placement) as conn:
        cur = await conn.execute(
            "SELECT COUNT(*) AS n FROM pg_class WHERE relpersistence = 't' AND relname LIKE %s", ("\\_page\\_%",)
        )
        return int((await cur.fetchone())["n"])  # type: ignore[index]


async def test_a_first_load_is_copied_straight_into_the_table_and_stores_what_an_upsert_stores(env: Env) -> None:
    clock = [1_800_000_000.25]
    warehouse = Warehouse(env.store, clock=lambda: clock[0])
    account = env.accounts[0]
    straight, upserted = env.connections[account]
    pages = [[contact(i) for i in range(start, start + 250)] for start in (1, 251)]
    # A table holding a row already: its pages go through the temporary table and ON CONFLICT.
    await (await warehouse.open_table(account, upserted, contacts())).write([contact(9999)], {}, run_id=0)

    first = await warehouse.open_table(account, straight, contacts())
    for n, page in enumerate(pages):
        assert await first.write(page, {"cursor": f"p{n}"}, run_id=1) == 250
    assert await page_tables(env, first) == 0  # no staging table: COPY went into the table itself
    other = await warehouse.open_table(account, upserted, contacts())
    for n, page in enumerate(pages):
        assert await other.write(page, {"cursor": f"p{n}"}, run_id=1) == 250
    assert await page_tables(env, other) >= 1
    by_copy, by_upsert = await stored(env, first), await stored(env, other)
    del by_upsert["c_9999"]
    assert by_copy == by_upsert and len(by_copy) == 500
    assert by_copy["c_0007"]["_synced_at"] == by_copy["c_0007"]["_sdc_batched_at"] == warehouse_moment(clock[0])
    assert await first.load_state() == await other.load_state() == {"cursor": "p1"}
    # The rows API reads a first load in the provider's order.
    _, rows = await warehouse.read_rows(account, first.table, offset=0, limit=3)
    assert [row["id"] for row in rows] == ["c_0001", "c_0002", "c_0003"]

    # The next run (a full re-sync that no longer sees the last 100) upserts over both the same way.
    clock[0] += 60
    changed = [contact(i, last_name="Changed") if i % 3 == 0 else contact(i) for i in range(1, 401)]
    for writer_connection in (straight, upserted):
        again = await warehouse.open_table(account, writer_connection, contacts())
        await again.write(changed[:200], {"cursor": "r0"}, run_id=2)
        await again.write(changed[200:], {"cursor": "r1"}, run_id=2)
        assert await again.mark_missing_deleted(2) == (100 if writer_connection == straight else 101)
    by_copy, by_upsert = await stored(env, first), await stored(env, other)
    del by_upsert["c_9999"]
    assert by_copy == by_upsert and len(by_copy) == 500
    assert by_copy["c_0003"]["last_name"] == "Changed" and by_copy["c_0003"]["_run_id"] == 2
    assert by_copy["c_0450"]["_deleted_at"] is not None and by_copy["c_0450"]["_run_id"] == 1


def warehouse_moment(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


async def test_a_record_listed_twice_in_one_page_keeps_its_last_copy(env: Env) -> None:
    account, connection = env.accounts[0], env.connections[env.accounts[0]][0]
    table = await env.warehouse.open_table(account, connection, contacts())
    page = [contact(1), contact(2), contact(1, last_name="Again")]
    assert await table.write(page, {"cursor": "a"}, run_id=1) == 3  # a first load
    assert await table.write([contact(3), contact(3, last_name="Twice")], {"cursor": "b"}, run_id=1) == 2
    later = await env.warehouse.open_table(account, connection, contacts())  # the next run: upserts
    assert await later.write([contact(2, last_name="New"), contact(2, last_name="Newer")], {}, run_id=2) == 2
    rows = await stored(env, table)
    assert sorted(rows) == ["c_0001", "c_0002", "c_0003"]
    assert [rows[k]["last_name"] for k in sorted(rows)] == ["Again", "Newer", "Twice"]


async def test_a_first_load_that_meets_a_key_already_stored_upserts_that_page_and_the_rest(env: Env) -> None:
    """A provider listing a record on two pages (records moved between reads), or a row a customer's
    script inserted meanwhile: the page's COPY fails whole and the page is upserted instead."""
    account, connection = env.accounts[0], env.connections[env.accounts[0]][0]
    table = await env.warehouse.open_table(account, connection, contacts())
    assert await table.write([contact(i) for i in range(1, 101)], {"cursor": "1"}, run_id=1) == 100
    async with env.warehouse.servers.connection(table.table.placement) as conn:  # as a writer login would
        await conn.execute(
            sql.SQL("INSERT INTO {} (id, last_name, _synced_at) VALUES ('c_0150', 'by a script', now())").format(
                table.table.identifier
            )
        )
    page = [contact(i, last_name="Moved") if i == 100 else contact(i) for i in range(100, 201)]
    assert await table.write(page, {"cursor": "2"}, run_id=1) == 101
    assert await table.write([contact(i) for i in range(201, 251)], {"cursor": "3"}, run_id=1) == 50
    rows = await stored(env, table)
    assert len(rows) == 250
    assert rows["c_0100"]["last_name"] == "Moved" and rows["c_0150"]["last_name"] == "Last 150"
    assert rows["c_0150"]["_run_id"] == 1 and rows["c_0150"]["email"] == "p150@example.test"
    assert await table.load_state() == {"cursor": "3"}
    async with env.warehouse.servers.connection(table.table.placement) as conn:
        cur = await conn.execute(
            sql.SQL("SELECT COUNT(*) AS n FROM {} GROUP BY id HAVING COUNT(*) > 1").format(table.table.identifier)
        )
        assert await cur.fetchall() == []


async def test_keys_equal_only_for_postgresql_are_one_row(env: Env) -> None:
    """``1.0`` and ``1.00`` differ in Python and are one ``numeric`` key: the shortcut that trusted
    Python (straight COPY, or an upsert without DISTINCT ON) fails, and the page is written again."""
    base = contacts()
    stream = dataclasses.replace(
        base,
        fields=(FieldSpec("id", ("id",), "decimal"), *base.fields[1:]),
    )
    account, connection = env.accounts[0], env.connections[env.accounts[0]][0]
    table = await env.warehouse.open_table(account, connection, stream)
    assert await table.write([contact(1, id="1.0"), contact(2, id="1.00")], {"cursor": "a"}, run_id=1) == 2
    later = await env.warehouse.open_table(account, connection, stream)  # not a first load any more
    assert await later.write([contact(3, id="2.0"), contact(4, id="2.00")], {"cursor": "b"}, run_id=2) == 2
    rows = await stored(env, table)
    assert sorted(rows) == [decimal.Decimal("1.0"), decimal.Decimal("2.0")]
    assert rows[decimal.Decimal("1")]["last_name"] == "Last 2" and rows[decimal.Decimal("2")]["last_name"] == "Last 4"
    assert await later.load_state() == {"cursor": "b"}


async def test_a_first_load_page_postgresql_refuses_leaves_neither_rows_nor_cursor(env: Env) -> None:
    account, connection = env.accounts[0], env.connections[env.accounts[0]][0]
    table = await env.warehouse.open_table(account, connection, contacts())
    await table.write([contact(i) for i in range(1, 11)], {"cursor": "first"}, run_id=1)
    page = [contact(i) for i in range(11, 300)] + [contact(300, created_at="not a time")]
    with pytest.raises(psycopg.errors.DataError):
        await table.write(page, {"cursor": "second"}, run_id=1)
    assert len(await stored(env, table)) == 10
    assert await table.load_state() == {"cursor": "first"}
    assert await table.write(page[:-1], {"cursor": "again"}, run_id=1) == 289
    assert len(await stored(env, table)) == 299 and await table.load_state() == {"cursor": "again"}


def test_copy_lines_are_what_psycopg_writes() -> None:
    """The fast COPY text of a plain page (issue 27) is byte for byte psycopg's own, also with the
    tail a first load adds to each line once the page before has committed."""
    from psycopg._copy_base import TextFormatter
    from psycopg.adapt import Transformer

    from bff.warehouse import copy_lines, join_lines

    rows = [
        ("t_1", 1, -80.69, 1e16, True, None, "2026-01-01T00:01:00Z"),
        ("", 2**70, float("inf"), float("-inf"), False, "é ☃", "2026-01-01"),
        ("x", -0, -0.0, 0.1, True, None, "1/Date("),
    ]
    formatter = TextFormatter(Transformer())
    lines = copy_lines(rows)
    assert lines is not None
    assert join_lines(lines) == b"".join([*(formatter.write_row(row) for row in rows), formatter.end()])
    tail = ("2026-12-06T00:00:00+00:00", 7)
    assert join_lines(lines, tail) == b"".join([*(formatter.write_row(row + tail) for row in rows), formatter.end()])
    nan = copy_lines([(float("nan"),)])
    assert nan is not None and join_lines(nan).lower() == b"nan\n"
    assert join_lines(copy_lines([("a", 1)]) or [], ("Z", 7)) == b"a\t1\tZ\t7\n"
    assert join_lines(copy_lines([("a",), (None,)]) or []) == b"a\n\\N\n"
    assert join_lines(copy_lines([(), ()]) or [], ("x",)) == b"\tx\n\tx\n"
    assert copy_lines([]) == [] and join_lines([], tail) == b""
    assert copy_lines([("a", 1), ("b",)]) is None  # rows of one width only
    # Anything else is psycopg's to write.
    for other in ({"a": 1}, [1], decimal.Decimal("1.5"), dt.date(2026, 1, 1), b"x"):
        assert copy_lines([("a", other)]) is None


@pytest.mark.parametrize("plain", [True, False])
async def test_rows_written_as_tuples_land_as_written(env: Env, plain: bool) -> None:
    """A sync writes tuples in field order, as COPY text when the page is plain: a first load
    (copied straight into the table) and a re-sync (upserted) store the same values either way,
    and a page that is not plain keeps tabs, newlines and backslashes."""
    account, connection = env.accounts[0], env.connections[env.accounts[0]][0]
    stream = contacts()
    table = await env.warehouse.open_table(account, connection, stream)
    names = [f.name for f in stream.fields]

    def rows(last_name: str) -> list[tuple[Any, ...]]:
        return [tuple(contact(i, last_name=f"{last_name} {i}")[n] for n in names) for i in range(1, 4)]

    async def stored() -> dict[str, str]:
        _, found = await env.warehouse.read_rows(account, table.table, offset=0, limit=10)
        return {row["id"]: row["last_name"] for row in found}

    assert await table.write(rows("First"), {"cursor": "1"}, run_id=1, tuples=True, plain=plain) == 3
    assert await stored() == {f"c_000{i}": f"First {i}" for i in range(1, 4)}
    assert await table.write(rows("Again"), {"cursor": "2"}, run_id=2, tuples=True, plain=plain) == 3
    assert await stored() == {f"c_000{i}": f"Again {i}" for i in range(1, 4)}
    if not plain:
        await table.write(rows("Tab\there\\\nx\r"), {}, run_id=3, tuples=True, plain=False)
        assert (await stored())["c_0001"] == "Tab\there\\\nx\r 1"
    assert await table.load_state() == ({"cursor": "2"} if plain else {})


async def test_a_first_loads_page_is_copied_while_the_page_before_commits_and_committed_after_it(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first load copies a page into the table while the page before is still being written
    (off that serial chain), and commits it only after that one: rows become visible in the order
    of their _synced_at."""
    import bff.warehouse as warehouse_module

    account, connection = env.accounts[0], env.connections[env.accounts[0]][0]
    stream = contacts()
    table = await env.warehouse.open_table(account, connection, stream)
    names = [f.name for f in stream.fields]

    def rows(first: int) -> list[tuple[Any, ...]]:
        return [tuple(contact(i)[n] for n in names) for i in range(first, first + 3)]

    # The second page is handed over while the first is still being written (as a sync does).
    first = asyncio.create_task(table.write(rows(1), {"cursor": "0"}, run_id=1, tuples=True, plain=True))
    assert await table.write(rows(4), {"cursor": "1"}, run_id=1, after=first, tuples=True, plain=True) == 3
    assert await page_tables(env, table) == 0  # both went straight in, no staging table
    copied: list[int] = []
    real = warehouse_module._copy

    async def copy(conn: Any, statement: bytes, rows: list[Any], *args: Any) -> None:
        await real(conn, statement, rows, *args)
        copied.append(len(rows))

    monkeypatch.setattr(warehouse_module, "_copy", copy)
    before: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    writing = asyncio.create_task(
        table.write(rows(7), {"cursor": "2"}, run_id=1, after=before, tuples=True, plain=True)
    )
    for _ in range(200):
        if copied:
            break
        await asyncio.sleep(0.01)
    assert copied == [3] and not writing.done()  # copied, and waiting for the page before to commit
    assert len(await stored(env, table)) == 6 and await table.load_state() == {"cursor": "1"}  # not yet visible
    before.set_result(3)
    assert await writing == 3
    _, found = await env.warehouse.read_rows(account, table.table, offset=0, limit=10)
    assert [row["id"] for row in found] == [f"c_000{i}" for i in range(1, 10)]
    assert {row["_run_id"] for row in found} == {1} and await table.load_state() == {"cursor": "2"}


async def test_a_first_loads_page_copied_while_the_page_before_fell_back_to_an_upsert_is_stamped_after_it(
    env: Env,
) -> None:
    """The page before met a key already stored and was upserted, after its own page before was in;
    a page copied straight in meanwhile still carries a later _synced_at (pages are stamped in the
    order they are handed over) and commits after it."""
    ticks = iter(range(1_800_000_000, 1_800_001_000))
    warehouse = Warehouse(env.store, clock=lambda: float(next(ticks)))
    account, connection = env.accounts[0], env.connections[env.accounts[0]][0]
    table = await warehouse.open_table(account, connection, contacts())
    assert await table.write([contact(i) for i in range(1, 11)], {"cursor": "1"}, run_id=1) == 10
    async with warehouse.servers.connection(table.table.placement) as conn:  # as a script would
        await conn.execute(
            sql.SQL("INSERT INTO {} (id, last_name, _synced_at) VALUES ('c_0015', 'by a script', now())").format(
                table.table.identifier
            )
        )
    gate: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    second = asyncio.create_task(table.write([contact(i) for i in range(11, 21)], {"cursor": "2"}, 1, after=gate))
    third = asyncio.create_task(table.write([contact(i) for i in range(21, 31)], {"cursor": "3"}, 1, after=second))
    await asyncio.sleep(0.5)  # the second page's COPY failed on c_0015; the third page is copied, stamped
    gate.set_result(10)
    assert await second == 10 and await third == 10
    rows = await stored(env, table)
    assert len(rows) == 30 and await table.load_state() == {"cursor": "3"}
    newest_second = max(rows[f"c_00{i}"]["_synced_at"] for i in range(11, 21))
    assert min(rows[f"c_00{i}"]["_synced_at"] for i in range(21, 31)) > newest_second


async def test_a_first_loads_page_sharing_a_key_with_a_page_being_written_is_copied_only_after_it(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two transactions each inserting a key the other holds would wait on each other (PostgreSQL
    ends that by failing one of them): a page holding a key of a page still being written is
    copied only once that one is in, and the key's later copy wins."""
    import bff.warehouse as warehouse_module

    account, connection = env.accounts[0], env.connections[env.accounts[0]][0]
    table = await env.warehouse.open_table(account, connection, contacts())
    assert await table.write([contact(i) for i in range(1, 4)], {"cursor": "1"}, run_id=1) == 3
    started: list[int] = []
    real = warehouse_module._copy

    async def copy(conn: Any, statement: bytes, rows: list[Any], *args: Any) -> None:
        started.append(len(rows))
        await real(conn, statement, rows, *args)

    monkeypatch.setattr(warehouse_module, "_copy", copy)

    async def until(condition: Callable[[], bool], tries: int = 200) -> None:
        for _ in range(tries):
            if condition():
                return
            await asyncio.sleep(0.01)

    gate: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    second = asyncio.create_task(table.write([contact(i) for i in range(4, 7)], {"cursor": "2"}, 1, after=gate))
    await until(lambda: len(started) == 1)
    page = [contact(6, last_name="Again"), contact(7), contact(8), contact(9)]
    third = asyncio.create_task(table.write(page, {"cursor": "3"}, 1, after=second))
    await until(lambda: len(started) > 1, tries=30)
    assert started == [3] and not third.done()  # the third page waits for the second before copying
    gate.set_result(3)
    assert await second == 3 and await third == 4
    rows = await stored(env, table)
    assert sorted(rows) == [f"c_000{i}" for i in range(1, 10)] and rows["c_0006"]["last_name"] == "Again"
    assert await table.load_state() == {"cursor": "3"}


async def test_keys_are_exact_only_when_postgresql_compares_them_as_python_does(env: Env) -> None:
    account, connection = env.accounts[0], env.connections[env.accounts[0]][0]
    base = contacts()
    text = (await env.warehouse.open_table(account, connection, base))._plan
    assert text.exact({"c_1", "c_2"}) and text.exact(set())
    assert not text.exact({"c_1", 2})  # 2 and "2" are one text key
    integer = dataclasses.replace(base, name="numbered", fields=(FieldSpec("id", ("id",), "integer"), *base.fields[1:]))
    plan = (await env.warehouse.open_table(account, connection, integer))._plan
    assert plan.exact({1, 2}) and not plan.exact({1, "01"}) and not plan.exact({True})
    decimal_keys = dataclasses.replace(
        base, name="priced", fields=(FieldSpec("id", ("id",), "decimal"), *base.fields[1:])
    )
    plan = (await env.warehouse.open_table(account, connection, decimal_keys))._plan
    assert not plan.exact({decimal.Decimal("1.0")})  # 1.0 and 1.00 are one numeric
