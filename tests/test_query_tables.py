"""Query tables: views in the customer's schema, defined and read as the customer's own role,
and the SQL that must never get through."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from conftest import BFF, auth, running_bff
from sync_helpers import tables
from tables_helpers import crm_customer, customer_database, identity_customer, rows

from bff.sandbox.data import contacts_table, deals_table
from bff.settings import Settings

DEALS = deals_table().records
CONTACTS = {c["id"]: c for c in contacts_table().records}


@pytest.fixture
async def sbff(settings_factory: Callable[..., Settings]) -> AsyncIterator[BFF]:
    async with running_bff(settings_factory(sandbox_enabled=True)) as instance:
        yield instance


async def create(bff: BFF, token: str, name: str, query: str, *, path: str = "/api/table") -> Any:
    return await bff.client.post(path, json={"name": name, "query": query}, headers=auth(token))


def join_query(by_name: dict[str, dict[str, Any]]) -> str:
    deals, contacts = by_name["deals"]["sql_name"], by_name["contacts"]["sql_name"]
    return (
        f"SELECT d.id AS deal_id, d.amount, d.stage, c.email, c.company, d._synced_at\n"
        f"FROM {deals} d JOIN {contacts} c ON c.id = d.contact_id\n"
        "WHERE d.stage IN ('closedwon', 'contractsent') -- open or won\n"
    )


async def test_a_join_of_contacts_and_deals_returns_exactly_the_expected_rows(sbff: BFF) -> None:
    token, account_id, by_name, _ = await crm_customer(sbff)
    created = await create(sbff, token, "Won deals", join_query(by_name))
    assert created.status_code == 201, created.text
    table = created.json()
    assert table["type"] == "query" and table["name"] == "Won deals" and table["query"] == join_query(by_name)
    assert [(f["name"], f["type"]) for f in table["fields"]] == [
        ("deal_id", "text"),
        ("amount", "decimal"),
        ("stage", "text"),
        ("email", "text"),
        ("company", "text"),
        ("_synced_at", "datetime"),
    ]
    expected = {
        d["id"]: (d["amount"], CONTACTS[d["contact_id"]]["email"])
        for d in DEALS
        if d["stage"] in ("closedwon", "contractsent")
    }
    body = await rows(sbff, token, table["id"], "size=500")
    assert body["count"] == len(expected) == len(body["results"])
    assert {r["deal_id"]: (r["amount"], r["email"]) for r in body["results"]} == expected

    # The same filters as on synced tables, and field ids as keys without user_field_names.
    won = await rows(sbff, token, table["id"], "filter__stage__equal=closedwon&order_by=-amount&size=3")
    top = sorted((d for d in DEALS if d["stage"] == "closedwon"), key=lambda d: -d["amount"])[:3]
    assert [r["deal_id"] for r in won["results"]] == [d["id"] for d in top]
    keyed = (await sbff.client.get(f"/api/database/rows/table/{table['id']}/?size=1", headers=auth(token))).json()
    assert set(keyed["results"][0]) == {f"field_{f['id']}" for f in table["fields"]}
    assert (await rows(sbff, token, table["id"], "updated_since=2000-01-01T00:00:00Z"))["count"] == len(expected)
    await rows(sbff, token, table["id"], "filter__nope__equal=1", status=400)

    listed = await tables(sbff.client, token)
    assert listed["Won deals"]["type"] == "query" and listed["Won deals"]["row_count"] == len(expected)
    assert listed["deals"]["type"] == "synced" and listed["deals"]["row_count"] == len(DEALS)
    got = (await sbff.client.get(f"/api/table/{table['id']}", headers=auth(token))).json()
    assert got == {**table, "row_count": None} or got["id"] == table["id"]
    assert account_id


async def test_the_alias_patch_and_delete(sbff: BFF) -> None:
    token, _, by_name, _ = await crm_customer(sbff)
    created = await create(
        sbff, token, "Deals", f"SELECT id, amount FROM {by_name['deals']['sql_name']}", path="/table"
    )
    assert created.status_code == 201, created.text
    table = created.json()
    assert (await create(sbff, token, "Deals", "SELECT 1 AS one")).json()["code"] == "name_taken"

    patched = await sbff.client.patch(
        f"/api/table/{table['id']}/",
        json={
            "name": "Big deals",
            "query": f"SELECT id, amount, stage FROM {by_name['deals']['sql_name']} WHERE amount > 40000",
        },
        headers=auth(token),
    )
    assert patched.status_code == 200, patched.text
    after = patched.json()
    assert after["name"] == "Big deals" and [f["name"] for f in after["fields"]] == ["id", "amount", "stage"]
    # Field ids stay with their names across edits.
    assert after["fields"][0]["id"] == table["fields"][0]["id"]
    assert (await rows(sbff, token, table["id"]))["count"] == sum(d["amount"] > 40000 for d in DEALS)

    refused = await sbff.client.patch(f"/api/table/{table['id']}", json={"query": "DELETE FROM x"}, headers=auth(token))
    assert refused.status_code == 400 and refused.json()["code"] == "query_invalid"
    assert (await rows(sbff, token, table["id"]))["count"] == sum(d["amount"] > 40000 for d in DEALS)  # unchanged

    # Percent signs and placeholders in the SQL are only text.
    literal = (
        await create(sbff, token, "Percent", "SELECT '50%' AS pct, '%s' AS placeholder, '%(x)s' AS named")
    ).json()
    assert (await rows(sbff, token, literal["id"]))["results"] == [
        {"pct": "50%", "placeholder": "%s", "named": "%(x)s"}
    ]

    gone = await sbff.client.delete(f"/api/table/{table['id']}", headers=auth(token))
    assert gone.status_code == 204
    assert (await sbff.client.get(f"/api/table/{table['id']}", headers=auth(token))).status_code == 404
    assert (await sbff.client.get(f"/api/database/rows/table/{table['id']}/", headers=auth(token))).status_code == 404
    assert "Big deals" not in await tables(sbff.client, token)


async def test_bad_bodies_tokens_and_other_customers(sbff: BFF) -> None:
    token, _, by_name, _ = await crm_customer(sbff, "a")
    other, _, _ = await identity_customer(sbff, "b")
    table = (await create(sbff, token, "Deals", f"SELECT id FROM {by_name['deals']['sql_name']}")).json()
    for body in (
        {},
        {"name": "x"},
        {"query": "SELECT 1"},
        {"name": 3, "query": "SELECT 1"},
        {"name": " ", "query": "SELECT 1"},
    ):
        answer = await sbff.client.post("/api/table", json=body, headers=auth(token))
        assert answer.status_code == 400 and answer.json()["code"] == "validation_error", body
    for method in ("GET", "PATCH", "DELETE"):
        answer = await sbff.client.request(method, f"/api/table/{table['id']}", json={"name": "y"}, headers=auth(other))
        assert answer.status_code == 404 and answer.json()["code"] == "not_found"
    assert (await sbff.client.get(f"/api/database/rows/table/{table['id']}/", headers=auth(other))).status_code == 404
    _, partner_token = await sbff.partner("browser-side")
    integrate = (await sbff.integrate(partner_token, "c"))["token"]
    answer = await create(sbff, integrate, "x", "SELECT 1 AS one")
    assert answer.status_code == 403 and answer.json()["code"] == "token_not_allowed"


async def test_hostile_queries_are_refused_and_both_customers_tables_survive(sbff: BFF) -> None:
    token, account_id, by_name, _ = await crm_customer(sbff, "a")
    other_token, other_id, other_tables, _ = await crm_customer(sbff, "b")
    other_database = await sbff.services.warehouse.database_of(other_id)
    deals = by_name["deals"]["sql_name"]
    hostile = {
        "other database": f'SELECT * FROM "{other_database}".{other_tables["deals"]["sql_name"]}',
        "control tables": "SELECT * FROM public.connections",
        "partners": "SELECT name FROM partners",
        "two statements": f"SELECT 1; DROP TABLE {deals}",
        "drop": f"DROP TABLE {deals}",
        "read a file": "SELECT pg_read_file('/etc/hostname')",
        "read a file 2": "SELECT * FROM pg_ls_dir('.')",
        "copy to program": "COPY (SELECT 1) TO PROGRAM 'touch /tmp/bff-pwned'",
        "dblink": "SELECT * FROM dblink('dbname=postgres', 'SELECT 1') AS t(x int)",
        "create": f"CREATE TABLE {deals}_copy AS SELECT * FROM {deals}",
        "insert": f"INSERT INTO {deals} (id, _synced_at) VALUES ('x', now()) RETURNING id",
        "update": f"UPDATE {deals} SET amount = 0 RETURNING id",
        "delete in a CTE": f"WITH gone AS (DELETE FROM {deals} RETURNING id) SELECT * FROM gone",
        "reset role, then run SQL text": (
            "SELECT set_config('role', 'none', true) AS r,"
            " query_to_xml('SELECT pg_read_file(''/etc/hostname'')', true, true, '') AS x"
        ),
        "session authorization": "SELECT set_config('session_authorization', 'postgres', true)",
        "grant": f'GRANT SELECT ON ALL TABLES IN SCHEMA "{by_name["deals"]["schema"]}" TO PUBLIC',
        "bookkeeping": "SELECT * FROM _bff.state",
        "empty": "-- nothing",
        "syntax": "SELEKT 1",
    }
    for label, query in hostile.items():
        answer = await create(sbff, token, label, query)
        assert answer.status_code == 400 and answer.json()["code"] == "query_invalid", (label, answer.text)
        assert answer.json()["errors"]["query"], label
    other_database_answer = (await create(sbff, token, "x", hostile["other database"])).json()
    assert "cross-database references are not implemented" in other_database_answer["detail"]
    assert "permission denied" in (await create(sbff, token, "x", hostile["bookkeeping"])).json()["detail"]
    assert "multiple commands" in (await create(sbff, token, "x", hostile["two statements"])).json()["detail"]

    started = time.monotonic()
    slow = await create(sbff, token, "slow", "SELECT 1 AS one FROM pg_sleep(60)")
    assert slow.status_code == 400 and slow.json()["code"] == "query_invalid" and "timeout" in slow.json()["detail"]
    assert time.monotonic() - started < 20

    # Nothing was created, nothing was written, both customers keep every table and row.
    for who, who_token in (("a", token), ("b", other_token)):
        listed = await tables(sbff.client, who_token)
        assert {n: t["row_count"] for n, t in listed.items()} == {"contacts": 1250, "deals": 300}, who
        assert (await rows(sbff, who_token, listed["deals"]["id"], "filter__amount__equal=0"))["count"] == 0
    async with sbff.services.store.connection() as conn:
        cur = await conn.execute("SELECT COUNT(*) AS n FROM query_tables")
        assert await cur.fetchone() == {"n": 0}
        cur = await conn.execute("SELECT COUNT(*) AS n FROM partners")
        assert (await cur.fetchone())["n"] == 2
    for who in (account_id, other_id):
        async with customer_database(sbff, who) as conn:
            cur = await conn.execute("SELECT COUNT(*) AS n FROM pg_views WHERE schemaname = 'public'")
            assert await cur.fetchone() == {"n": 0}


async def test_a_statement_that_changes_data_is_told_only_a_query_can_be_saved_or_run(sbff: BFF) -> None:
    token, _, by_name, _ = await crm_customer(sbff)
    deals = by_name["deals"]["sql_name"]
    changes = {
        "delete": f"DELETE FROM {deals}",
        "delete returning": f"  -- clean up\n DELETE FROM {deals} WHERE amount < 0 RETURNING id",
        "update": f"UPDATE {deals} SET amount = 0",
        "insert": f"INSERT INTO {deals} (id, _synced_at) VALUES ('x', now())",
        "merge": f"MERGE INTO {deals} d USING {deals} s ON d.id = s.id WHEN MATCHED THEN DELETE",
        "with, then delete": f"WITH old AS (SELECT id FROM {deals}) DELETE FROM {deals} WHERE id IN (SELECT id FROM old)",
    }
    for label, query in changes.items():
        saved = await create(sbff, token, label, query)
        ran = await sbff.client.post("/api/database/query/", json={"query": query}, headers=auth(token))
        for answer, done in ((saved, "saved"), (ran, "run")):
            body = answer.json()
            assert answer.status_code == 400 and body["code"] == "query_invalid", (label, answer.text)
            assert f"Only a query (SELECT, or WITH … SELECT) can be {done};" in body["detail"], (label, body)
            assert "syntax error" not in body["detail"] and body["errors"]["query"], (label, body)
    # A query that is merely mistyped keeps the database's own words.
    typo = (await create(sbff, token, "typo", f"SELECT id FROM {deals} WHERE")).json()
    assert "syntax error" in typo["detail"]
    assert (await rows(sbff, token, by_name["deals"]["id"]))["count"] == 300


async def test_a_query_on_a_deleted_connection_fails_clearly_and_listing_still_works(sbff: BFF) -> None:
    token, _, by_name, connection_id = await crm_customer(sbff)
    table = (await create(sbff, token, "Deals", f"SELECT id, amount FROM {by_name['deals']['sql_name']}")).json()
    assert (await sbff.client.delete(f"/api/server/{connection_id}", headers=auth(token))).status_code == 204
    broken = await sbff.client.get(f"/api/database/rows/table/{table['id']}/", headers=auth(token))
    assert broken.status_code == 409 and broken.json()["code"] == "query_table_broken"
    assert "no longer runs" in broken.json()["detail"]
    listed = await tables(sbff.client, token)
    assert (
        set(listed) == {"Deals"}
        and listed["Deals"]["row_count"] is None
        and "no longer runs" in listed["Deals"]["error"]
    )
    # Fixing the query brings it back.
    fixed = await sbff.client.patch(f"/api/table/{table['id']}", json={"query": "SELECT 1 AS one"}, headers=auth(token))
    assert fixed.status_code == 200, fixed.text
    assert (await rows(sbff, token, table["id"]))["results"] == [{"one": 1}]


async def test_views_belong_to_the_customers_runner_role_not_to_the_bff(sbff: BFF) -> None:
    token, account_id, by_name, _ = await crm_customer(sbff)
    await create(sbff, token, "Deals", f"SELECT id FROM {by_name['deals']['sql_name']}")
    database = await sbff.services.warehouse.database_of(account_id)
    runner = f"{database}_q"
    async with customer_database(sbff, account_id) as conn:
        # The view has the name the customer gave it, in the customer's own public schema.
        cur = await conn.execute(
            "SELECT viewowner, (SELECT rolsuper FROM pg_roles WHERE rolname = viewowner) AS super FROM pg_views"
            " WHERE schemaname = 'public' AND viewname = 'Deals'",
        )
        assert await cur.fetchone() == {"viewowner": runner, "super": False}
        # It may make views in its own public schema, and nothing in the synced schemas or the bookkeeping.
        cur = await conn.execute(
            "SELECT has_schema_privilege(%s, %s, 'CREATE') AS synced_create,"
            " has_schema_privilege(%s, '_bff', 'USAGE') AS bookkeeping,"
            " has_database_privilege(%s, current_database(), 'TEMPORARY') AS temp",
            (runner, by_name["deals"]["schema"], runner, runner),
        )
        assert await cur.fetchone() == {"synced_create": False, "bookkeeping": False, "temp": False}
    async with sbff.services.store.connection() as conn:
        # The control database (partners, tokens, connections) is not the customer's to open.
        cur = await conn.execute(
            "SELECT has_database_privilege(%s, current_database(), 'CONNECT') AS control", (runner,)
        )
        assert await cur.fetchone() == {"control": False}


async def test_filters_on_typed_view_columns(sbff: BFF) -> None:
    token, _, by_name, _ = await crm_customer(sbff)
    deals = by_name["deals"]["sql_name"]
    table = (
        await create(
            sbff,
            token,
            "Typed",
            f"SELECT id, created_at::timestamptz AS created, created_at::date AS day, amount::numeric(12, 2) AS money,"
            f" amount > 40000 AS big FROM {deals}",
        )
    ).json()
    assert [(f["name"], f["type"]) for f in table["fields"]] == [
        ("id", "text"),
        ("created", "datetime"),
        ("day", "date"),
        ("money", "decimal"),
        ("big", "boolean"),
    ]
    since = "2025-10-01T00:00:00Z"
    later = await rows(sbff, token, table["id"], f"filter__created__higher_than={since}&size=500&order_by=id")
    assert [r["id"] for r in later["results"]] == sorted(d["id"] for d in DEALS if d["created_at"] > since)
    assert later["results"][0]["created"].startswith("2025-") and isinstance(later["results"][0]["money"], float)
    big = await rows(sbff, token, table["id"], "filter__big__equal=true&size=500")
    assert big["count"] == sum(d["amount"] > 40000 for d in DEALS)
    # search reads timestamps and dates as text
    assert (await rows(sbff, token, table["id"], "search=2025-03-07"))["count"] == sum(
        d["created_at"].startswith("2025-03-07") for d in DEALS
    )
    # A value the column's type cannot take is the caller's mistake, not a broken table.
    bad = await rows(sbff, token, table["id"], "filter__day__equal=someday", status=400)
    assert bad["code"] == "validation_error" and "dates" in bad["errors"]["filter__day__equal"]
    nothing = await rows(sbff, token, table["id"], "exclude=id,created,day,money,big&size=2")
    assert nothing["results"] == [{}, {}]
