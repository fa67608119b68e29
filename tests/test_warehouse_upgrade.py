"""Issue 22 item 8: an install of the release before customer databases (every warehouse a schema
of the control database) upgrades: migrations, then each customer's schema moves into a database
of its own at start, with its table and field ids, rows, cursors and query tables."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from conftest import auth, running_bff
from psycopg import sql
from sync_helpers import tables
from tables_helpers import customer_database, rows

from bff import app as app_module
from bff import testing
from bff.settings import Secret, Settings
from bff.store import migrate

PREVIOUS_HEAD = "i23_connection_tables"  # the migration head of the release before customer databases


def build_previous_release(url: str, schema: str) -> dict[str, Any]:
    """What that release left: a schema ``wh_…`` with a table ``c<connection>_deals``, its index rows
    and cursors in the control database, the customer's roles and a query table as a view ``q_<id>``."""
    migrate(url, PREVIOUS_HEAD)
    with psycopg.connect(url, autocommit=True) as conn:
        partner = conn.execute("INSERT INTO partners (name, created_at) VALUES ('p', 0) RETURNING id").fetchone()[0]
        account = conn.execute(
            "INSERT INTO sub_accounts (partner_id, external_id, created_at, warehouse_schema)"
            " VALUES (%s, 'old-customer', 0, %s) RETURNING id",
            (partner, schema),
        ).fetchone()[0]
        connection = conn.execute(
            "INSERT INTO connections (sub_account_id, connector, name, health_status, created_at, updated_at)"
            " VALUES (%s, 'sandbox_crm', 'Sandbox CRM', 'HEALTHY', 0, 0) RETURNING id",
            (account,),
        ).fetchone()[0]
        physical = f"c{connection}_deals"
        ident, table = sql.Identifier(schema), sql.Identifier(schema, physical)
        runner, login = sql.Identifier(schema + "_q"), sql.Identifier(schema + "_sql")
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(ident))
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(ident))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'x' IN ROLE {}").format(runner, ident))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'y' IN ROLE {}").format(login, ident))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(ident, ident))
        conn.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA {} TO {}").format(ident, runner))
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (id text, amount numeric, stage text, _synced_at timestamptz NOT NULL,"
                " _run_id bigint, _deleted_at timestamptz, _seq bigint GENERATED ALWAYS AS IDENTITY)"
            ).format(table)
        )
        conn.execute(sql.SQL("CREATE UNIQUE INDEX ON {} (id)").format(table))
        conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(table, ident))
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (id, amount, stage, _synced_at, _run_id, _deleted_at) VALUES"
                " ('d_b', 20.50, 'won', '2027-01-01T00:00:00Z', 7, NULL),"
                " ('d_a', 10, 'lost', '2027-01-01T00:00:00Z', 7, '2027-01-02T00:00:00Z')"
            ).format(table)
        )
        conn.execute(
            "INSERT INTO warehouse_tables (id, sub_account_id, connection_id, stream, physical, primary_key, created_at)"
            " VALUES (1000001, %s, %s, 'deals', %s, '[\"id\"]', 0)",
            (account, connection, physical),
        )
        fields = conn.execute(
            "INSERT INTO warehouse_fields (table_id, name, type, position) VALUES"
            " (1000001, 'id', 'text', 0), (1000001, 'amount', 'decimal', 1), (1000001, 'stage', 'text', 2)"
            " RETURNING id"
        ).fetchall()
        conn.execute(
            "INSERT INTO warehouse_state (connection_id, stream, state, updated_at) VALUES"
            " (%s, 'deals', '{\"cursor\": \"2027-01-01\"}', 0), (%s, 'deals:deletions', '{\"since\": \"s1\"}', 0)",
            (connection, connection),
        )
        query = f"SELECT id, amount FROM {physical} WHERE amount > 15"
        conn.execute(sql.SQL("SET ROLE {}").format(runner))
        conn.execute(
            sql.SQL("CREATE VIEW {}.q_1000002 AS ").format(ident).as_string(conn)
            + query.replace(physical, f"{schema}.{physical}")
        )
        conn.execute("RESET ROLE")
        conn.execute(
            "INSERT INTO query_tables (id, sub_account_id, name, query, view_name, fields, created_at, updated_at)"
            " VALUES (1000002, %s, 'Big deals', %s, 'q_1000002',"
            ' \'[{"id": 900001, "name": "id", "type": "text"}, {"id": 900002, "name": "amount", "type": "decimal"}]\','
            " 0, 0)",
            (account, query),
        )
    return {"account": account, "connection": connection, "physical": physical, "field_ids": [f[0] for f in fields]}


@contextlib.contextmanager
def previous_release(test_databases: testing.TestDatabases) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """A database of its own as that release left it (:func:`build_previous_release`), dropped
    afterwards: (its URL, the customer's schema, what was made)."""
    name = f"prev_{uuid.uuid4().hex[:12]}"
    schema = f"wh_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(test_databases.admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = test_databases.admin_url.replace("/postgres?", f"/{name}?")
    try:
        yield url, schema, build_previous_release(url, schema)
    finally:
        test_databases.drop(url)


async def test_an_install_of_the_previous_release_moves_each_customer_into_its_own_database(
    test_databases: testing.TestDatabases, settings_factory: Callable[..., Settings]
) -> None:
    with previous_release(test_databases) as (url, schema, old):
        settings = settings_factory(database_url=Secret(url), sandbox_enabled=True)
        async with running_bff(settings) as bff:  # migrations, then the move, at start
            store = bff.services.store
            _, partner_token = await bff.partner("caller")
            async with store.connection() as conn:
                await conn.execute("UPDATE sub_accounts SET partner_id = (SELECT MAX(id) FROM partners)")
            identity = await bff.client.get(
                f"/api/partner/sub-account/identity/?account_id={old['account']}", headers=auth(partner_token)
            )
            token = identity.json()["token"]
            listed = await tables(bff.client, token)
            deals = listed["deals"]
            # The same table and field ids, now in the connection's schema, named after the stream.
            assert deals["id"] == 1000001 and [f["id"] for f in deals["fields"]] == old["field_ids"]
            assert (deals["schema"], deals["table"], deals["row_count"], deals["deleted_count"]) == (
                "Sandbox CRM",
                "deals",
                2,
                1,
            )
            read = await rows(bff, token, deals["id"])
            assert [(r["id"], r["amount"], r["_run_id"]) for r in read["results"]] == [
                ("d_b", 20.5, 7),
                ("d_a", 10, 7),
            ]  # insertion order kept
            # The query table: made again from its query, a view named as the customer named it.
            big = listed["Big deals"]
            assert big["id"] == 1000002 and big.get("error") is None, big
            assert (await rows(bff, token, big["id"]))["results"] == [{"id": "d_b", "amount": 20.5}]
            # SQL written against the old names still runs; the new names too.
            for text in (
                f"SELECT COUNT(*) AS n FROM {old['physical']}",
                'SELECT COUNT(*) AS n FROM "Sandbox CRM".deals',
            ):
                ran = await bff.client.post("/api/database/query/", headers=auth(token), json={"query": text})
                assert ran.json()["rows"] == [{"n": 2}], (text, ran.text)
            # The cursors went with the data; the old schema, roles and cursors are gone.
            async with customer_database(bff, old["account"]) as conn:
                cur = await conn.execute("SELECT stream, state FROM _bff.state ORDER BY stream")
                assert await cur.fetchall() == [
                    {"stream": "deals", "state": {"cursor": "2027-01-01"}},
                    {"stream": "deals:deletions", "state": {"since": "s1"}},
                ]
                cur = await conn.execute("SELECT viewname FROM pg_views WHERE schemaname = 'public' ORDER BY 1")
                assert [r["viewname"] for r in await cur.fetchall()] == ["Big deals", old["physical"]]
            async with store.connection() as conn:
                cur = await conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
                assert await cur.fetchone() is None
                cur = await conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE %s", (schema + "%",))
                assert await cur.fetchall() == []
                cur = await conn.execute("SELECT COUNT(*) AS n FROM warehouse_state")
                assert await cur.fetchone() == {"n": 0}
                cur = await conn.execute("SELECT warehouse_schema FROM sub_accounts WHERE id = %s", (old["account"],))
                assert await cur.fetchone() == {"warehouse_schema": None}
            placement = await bff.services.warehouse.placement(old["account"])
        # A second start moves nothing and changes nothing.
        async with running_bff(settings) as bff:
            assert await bff.services.warehouse.placement(old["account"]) == placement
            assert (await rows(bff, token, 1000001))["count"] == 2


async def test_a_sync_that_meets_a_customer_not_yet_moved_moves_it_first(
    test_databases: testing.TestDatabases,
    settings_factory: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 22 (item 4): a sync opening a table of a customer the start-up move had not reached
    made the new table empty beside the old one, whose rows were then never moved."""
    with previous_release(test_databases) as (url, schema, old):

        async def not_yet(*args: Any) -> int:
            return 0  # another process is still moving customers, and has not reached this one

        monkeypatch.setattr(app_module, "upgrade_warehouses", not_yet)
        settings = settings_factory(database_url=Secret(url), sandbox_enabled=True)
        async with running_bff(settings) as bff:
            stream = bff.services.connectors["sandbox_crm"].stream("deals")
            table = (await bff.services.warehouse.open_table(old["account"], old["connection"], stream)).table
            assert (table.id, table.schema, table.physical) == (1000001, "Sandbox CRM", "deals")
            async with customer_database(bff, old["account"]) as conn:
                cur = await conn.execute('SELECT id FROM "Sandbox CRM".deals ORDER BY _seq')
                assert [r["id"] for r in await cur.fetchall()] == ["d_b", "d_a"]  # moved, not made anew
                cur = await conn.execute("SELECT state FROM _bff.state WHERE stream = 'deals'")
                assert [r["state"] for r in await cur.fetchall()] == [{"cursor": "2027-01-01"}]
            async with bff.services.store.connection() as conn:
                cur = await conn.execute("SELECT warehouse_schema FROM sub_accounts WHERE id = %s", (old["account"],))
                assert (await cur.fetchone())["warehouse_schema"] is None
