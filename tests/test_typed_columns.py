"""Typed warehouse columns (DESIGN §15, issue 22 item 3): what BI tools read over SQL, what the
rows API returns, and the upgrade of tables made before (text datetimes, epoch ``_synced_at``)."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections.abc import AsyncIterator, Callable

import psycopg
import pytest
from conftest import BFF, auth, running_bff
from psycopg import sql
from sandbox_flows import connect_crm
from sync_helpers import sync, tables
from tables_helpers import customer_database, identity_customer, rows

from bff import testing
from bff.sandbox.data import deals_table
from bff.settings import Settings
from bff.store.migrate import migrate
from bff.warehouse import VALID_INPUT_FUNCTIONS

DEALS = {d["id"]: d for d in deals_table().records}


@pytest.fixture
async def sbff(settings_factory: Callable[..., Settings]) -> AsyncIterator[BFF]:
    async with running_bff(settings_factory(sandbox_enabled=True, sql_access=True)) as instance:
        yield instance


async def test_columns_are_typed_for_sql_readers_and_the_rows_api_keeps_its_json(sbff: BFF) -> None:
    token, account_id, partner_token = await identity_customer(sbff)
    crm = await connect_crm(sbff.client, token)
    assert (await sync(sbff, token, crm["id"]))["status"] == "succeeded"
    deals = (await tables(sbff.client, token))["deals"]
    assert {f["name"]: f["type"] for f in deals["fields"]}["amount"] == "decimal"
    answer = await sbff.client.post(
        f"/api/partner/sub-account/{account_id}/database-credentials", headers=auth(partner_token)
    )
    assert answer.status_code == 200, answer.text
    login = answer.json()
    # What psql, pandas or dlt get over the customer's SQL login: numeric and timestamptz.
    with psycopg.connect(
        host=login["host"], port=login["port"], dbname=login["database"], user=login["user"],
        password=login["password"], autocommit=True,
    ) as conn:  # fmt: skip
        row = conn.execute(
            sql.SQL("SELECT amount, created_at, _synced_at, _deleted_at FROM {} WHERE id = 'd_001'").format(
                sql.SQL(deals["sql_name"])
            )
        ).fetchone()
        assert row is not None
        amount, created, synced, deleted = row
        assert amount == decimal.Decimal("1547.29") and isinstance(amount, decimal.Decimal)
        assert created == dt.datetime(2025, 3, 7, tzinfo=dt.UTC)
        assert isinstance(synced, dt.datetime) and synced.tzinfo is not None and deleted is None
        recent = conn.execute(
            sql.SQL("SELECT COUNT(*) FROM {} WHERE _synced_at > now() - interval '1 day'").format(
                sql.SQL(deals["sql_name"])
            )
        ).fetchone()
        assert recent == (len(DEALS),)
    ran = await sbff.client.post(
        "/api/database/query/",
        headers=auth(token),
        json={"query": f"SELECT id, amount FROM {deals['sql_name']} WHERE _synced_at > now() - interval '1 day'"},
    )
    assert ran.status_code == 200, ran.text
    assert ran.json()["count"] == len(DEALS) and ran.json()["fields"][1] == {"name": "amount", "type": "decimal"}
    # The rows API: numbers for decimals, ISO strings for datetimes; filters take their types.
    first = (await rows(sbff, token, deals["id"], "filter__id__equal=d_001"))["results"][0]
    assert first["amount"] == 1547.29 and first["created_at"] == DEALS["d_001"]["created_at"]
    assert first["updated_at"] == DEALS["d_001"]["updated_at"] and first["_synced_at"].endswith("Z")
    dear = await rows(sbff, token, deals["id"], "filter__amount__higher_than=40000.5&size=1")
    assert dear["count"] == sum(d["amount"] > 40000.5 for d in DEALS.values())
    since = "2025-10-01T00:00:00Z"
    later = await rows(sbff, token, deals["id"], f"filter__created_at__higher_than={since}&size=1")
    assert later["count"] == sum(d["created_at"] > since for d in DEALS.values())
    bad = await rows(sbff, token, deals["id"], "filter__amount__equal=lots", status=400)
    assert "filter__amount__equal" in bad["errors"]
    # A query table whose _synced_at is a timestamp takes updated_since (it was 409 query_table_broken).
    made = await sbff.client.post(
        "/api/table",
        headers=auth(token),
        json={"name": "Recent", "query": f"SELECT id, _synced_at FROM {deals['sql_name']}"},
    )
    assert made.status_code == 201, made.text
    assert {f["name"]: f["type"] for f in made.json()["fields"]}["_synced_at"] == "datetime"
    assert (await rows(sbff, token, made.json()["id"], "updated_since=2000-01-01T00:00:00Z"))["count"] == len(DEALS)
    assert (await rows(sbff, token, made.json()["id"], "updated_since=2999-01-01T00:00:00Z"))["count"] == 0


OLD_TABLE = """CREATE TABLE wh_old.c1_deals (
    id text, amount double precision, created_at text,
    _synced_at double precision NOT NULL, _run_id bigint, _deleted_at double precision,
    _seq bigint GENERATED ALWAYS AS IDENTITY)"""


def test_upgrade_types_tables_made_the_old_way_and_keeps_their_query_tables(
    test_databases: testing.TestDatabases,
) -> None:
    name = f"mig_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(test_databases.admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = test_databases.admin_url.replace("/postgres?", f"/{name}?")
    reader = f"wh_old_{uuid.uuid4().hex[:8]}"
    try:
        migrate(url, "i26_customer_token_floor")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO partners (name, created_at) VALUES ('p', 0)")
            conn.execute(
                "INSERT INTO sub_accounts (partner_id, external_id, created_at, warehouse_schema)"
                " SELECT id, 'a', 0, 'wh_old' FROM partners"
            )
            conn.execute(
                "INSERT INTO connections (sub_account_id, connector, name, health_status, created_at, updated_at)"
                " SELECT id, 'sandbox_crm', 'CRM', 'OK', 0, 0 FROM sub_accounts"
            )
            conn.execute("CREATE SCHEMA wh_old")
            conn.execute(OLD_TABLE)
            conn.execute(
                "INSERT INTO wh_old.c1_deals (id, amount, created_at, _synced_at, _run_id, _deleted_at) VALUES"
                " ('d1', 10.5, '2025-03-07T00:00:00Z', 1800000000, 1, NULL),"
                " ('d2', 20, 'not a time', 1800000000, 1, 1800000100)"
            )
            conn.execute(
                "INSERT INTO warehouse_tables (id, sub_account_id, connection_id, stream, physical, primary_key, created_at)"
                " SELECT 1000001, s.id, c.id, 'deals', 'c1_deals', '[\"id\"]', 0 FROM sub_accounts s, connections c"
            )
            conn.execute(
                "INSERT INTO warehouse_fields (table_id, name, type, position) VALUES"
                " (1000001, 'id', 'text', 0), (1000001, 'amount', 'number', 1), (1000001, 'created_at', 'datetime', 2)"
            )
            # A query table over it (and a view over that), owned by the customer's role with a grant.
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(reader)))
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA wh_old TO {}").format(sql.Identifier(reader)))
            conn.execute(sql.SQL("GRANT SELECT ON wh_old.c1_deals TO {}").format(sql.Identifier(reader)))
            conn.execute("CREATE VIEW wh_old.q_1000002 AS SELECT id, created_at, _synced_at FROM wh_old.c1_deals")
            conn.execute("CREATE VIEW wh_old.q_nested AS SELECT id, _synced_at FROM wh_old.q_1000002")
            conn.execute(sql.SQL("ALTER VIEW wh_old.q_1000002 OWNER TO {}").format(sql.Identifier(reader)))
            conn.execute(sql.SQL("GRANT SELECT ON wh_old.q_nested TO {}").format(sql.Identifier(reader)))
            conn.execute(
                "INSERT INTO query_tables (id, sub_account_id, name, query, view_name, fields, created_at, updated_at)"
                " SELECT 1000002, id, 'Q', 'SELECT id, created_at, _synced_at FROM c1_deals', 'q_1000002',"
                ' \'[{"id": 7, "name": "id", "type": "text"}, {"id": 8, "name": "created_at", "type": "text"},'
                ' {"id": 9, "name": "_synced_at", "type": "number"}]\', 0, 0 FROM sub_accounts'
            )
        migrate(url)
        with psycopg.connect(url, autocommit=True) as conn:
            types = dict(
                conn.execute(
                    "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
                    " WHERE attrelid = 'wh_old.c1_deals'::regclass AND attnum > 0"
                ).fetchall()
            )
            assert types["_synced_at"] == types["_deleted_at"] == types["created_at"] == "timestamp with time zone"
            assert types["amount"] == "double precision"  # a number until the definition says decimal
            moment = dt.datetime.fromtimestamp(1800000000, dt.UTC)
            assert conn.execute(
                "SELECT id, created_at, _synced_at, _deleted_at FROM wh_old.c1_deals ORDER BY id"
            ).fetchall() == [
                ("d1", dt.datetime(2025, 3, 7, tzinfo=dt.UTC), moment, None),
                ("d2", None, moment, moment + dt.timedelta(seconds=100)),
            ]
            # The views are back, with their owner and grants; the query table's types follow.
            assert conn.execute("SELECT COUNT(*) FROM wh_old.q_nested").fetchone() == (2,)
            owner = conn.execute("SELECT viewowner FROM pg_views WHERE viewname = 'q_1000002'").fetchone()
            assert owner == (reader,)
            granted = conn.execute("SELECT has_table_privilege(%s, 'wh_old.q_nested', 'SELECT')", (reader,)).fetchone()
            assert granted == (True,)
            fields = conn.execute("SELECT fields FROM query_tables WHERE id = 1000002").fetchone()
            assert fields is not None
            assert [(f["id"], f["type"]) for f in fields[0]] == [(7, "text"), (8, "datetime"), (9, "datetime")]
        migrate(url)  # idempotent
    finally:
        test_databases.drop(url)
        with psycopg.connect(test_databases.admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(reader)))


async def test_a_definition_that_makes_an_amount_decimal_retypes_the_table_on_the_next_sync(sbff: BFF) -> None:
    token, account_id, _ = await identity_customer(sbff)
    crm = await connect_crm(sbff.client, token)
    await sync(sbff, token, crm["id"])
    deals = (await tables(sbff.client, token))["deals"]
    table = await sbff.services.warehouse.get_table(account_id, deals["id"])
    assert table is not None
    made = await sbff.client.post(
        "/api/table",
        headers=auth(token),
        json={"name": "Amounts", "query": f"SELECT id, amount FROM {deals['sql_name']}"},
    )
    assert made.status_code == 201, made.text
    # As a release before typed columns left it: a double precision amount, typed "number".
    async with customer_database(sbff, account_id) as conn:
        await conn.execute(sql.SQL("DROP VIEW public.{}").format(sql.Identifier("Amounts")))
        await conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN amount TYPE double precision").format(table.identifier))
    async with sbff.services.store.connection() as conn:
        await conn.execute(
            "UPDATE warehouse_fields SET type = 'number' WHERE table_id = %s AND name = 'amount'", (table.id,)
        )
    updated = await sbff.client.patch(
        f"/api/table/{made.json()['id']}",
        headers=auth(token),
        json={"query": f"SELECT id, amount FROM {deals['sql_name']}"},
    )
    assert updated.status_code == 200 and updated.json()["fields"][1]["type"] == "number"
    sbff.services.warehouse._plans.clear()  # a new process: the definition is read afresh
    await sync(sbff, token, crm["id"], full=True)
    async with customer_database(sbff, account_id) as conn:
        cur = await conn.execute(
            "SELECT format_type(atttypid, atttypmod) AS t FROM pg_attribute WHERE attrelid = %s::regclass"
            " AND attname = 'amount'",
            (table.identifier.as_string(conn),),
        )
        assert (await cur.fetchone())["t"] == "numeric"
    listed = await tables(sbff.client, token)
    assert {f["name"]: f["type"] for f in listed["deals"]["fields"]}["amount"] == "decimal"
    assert {f["name"]: f["type"] for f in listed["Amounts"]["fields"]}["amount"] == "decimal"
    assert listed["Amounts"]["row_count"] == len(DEALS)


@pytest.mark.parametrize("version", [0, 1], ids=["pg16+", "pg14-15"])
async def test_both_ways_of_telling_a_valid_input_agree(sbff: BFF, version: int) -> None:
    """Retyping a text column keeps what parses and empties the rest, on PostgreSQL 14 and 15
    (no pg_input_is_valid) as on 16+."""
    async with sbff.services.store.connection() as conn:
        await conn.execute(sql.SQL(VALID_INPUT_FUNCTIONS[version]))  # type: ignore[arg-type]
        cur = await conn.execute(
            "SELECT pg_temp.bff_valid('2025-03-07T00:00:00Z', 'timestamptz') AS a,"
            " pg_temp.bff_valid('n/a', 'timestamptz') AS b, pg_temp.bff_valid('12.50', 'numeric') AS c,"
            " pg_temp.bff_valid('lots', 'numeric') AS d, pg_temp.bff_valid('2025-02-30', 'date') AS e"
        )
        assert await cur.fetchone() == {"a": True, "b": False, "c": True, "d": False, "e": False}
