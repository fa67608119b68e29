"""SQL access for BI tools: a read-only login per customer, limited to its own database."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from conftest import BFF, auth, running_bff
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from tables_helpers import crm_customer

from bff.settings import Settings


def connect(credentials: dict[str, Any]) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=credentials["host"],
        port=credentials["port"],
        dbname=credentials["database"],
        user=credentials["user"],
        password=credentials["password"],
        autocommit=True,
    )


async def credentials_for(bff: BFF, partner_token: str, account_id: int) -> Any:
    return await bff.client.post(
        f"/api/partner/sub-account/{account_id}/database-credentials", headers=auth(partner_token)
    )


async def test_sql_access_is_off_by_default(settings_factory: Callable[..., Settings]) -> None:
    async with running_bff(settings_factory(sandbox_enabled=True)) as bff:
        _, partner_token = await bff.partner("p")
        account = await bff.integrate(partner_token, "x")
        answer = await credentials_for(bff, partner_token, account["account_id"])
        assert answer.status_code == 404 and answer.json()["code"] == "sql_access_disabled"


async def test_credentials_read_their_own_schema_only_and_rotate(settings_factory: Callable[..., Settings]) -> None:
    async with running_bff(settings_factory(sandbox_enabled=True, sql_access=True)) as bff:
        token, account_id, by_name, _ = await crm_customer(bff, "a")
        _, other_id, other_tables, _ = await crm_customer(bff, "b")
        query_table = await bff.client.post(
            "/api/table",
            json={"name": "Deals", "query": f"SELECT id, amount FROM {by_name['deals']['sql_name']}"},
            headers=auth(token),
        )
        assert query_table.status_code == 201, query_table.text
        async with bff.services.store.connection() as conn:
            cur = await conn.execute(
                "SELECT p.id FROM partners p JOIN sub_accounts s ON s.partner_id = p.id WHERE s.id = %s", (account_id,)
            )
            partner_id = (await cur.fetchone())["id"]
        partner = await bff.services.store.partners.get(partner_id)
        partner_token = bff.services.tokens.mint_partner_token(
            partner_id=partner.id, generation=partner.token_generation
        ).token

        # Another partner cannot get this customer's login; a sub-account token is not a partner token.
        _, stranger = await bff.partner("stranger")
        assert (await credentials_for(bff, stranger, account_id)).status_code == 404
        assert (await credentials_for(bff, token, account_id)).json()["code"] == "token_wrong_kind"

        first = await credentials_for(bff, partner_token, account_id)
        assert first.status_code == 200, first.text
        creds = first.json()
        database = await bff.services.warehouse.database_of(account_id)
        other_database = await bff.services.warehouse.database_of(other_id)
        assert set(creds) == {"host", "port", "database", "user", "password", "schema"}
        assert creds["database"] == database and creds["schema"] == "public"
        assert first.headers["cache-control"] == "no-store"

        synced_schema = by_name["deals"]["schema"]
        with connect(creds) as conn:
            deals = sql.SQL(by_name["deals"]["sql_name"])
            assert conn.execute(sql.SQL("SELECT COUNT(*) FROM {}").format(deals)).fetchone() == (300,)
            view = sql.Identifier("Deals")  # the query table, by the name the customer gave it
            assert conn.execute(sql.SQL("SELECT COUNT(*) FROM {}").format(view)).fetchone() == (300,)
            for forbidden in (
                sql.SQL("SELECT * FROM _bff.state"),
                sql.SQL("SELECT pg_read_file('/etc/hostname')"),
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(forbidden)
            # Another customer's tables are in another database: not even nameable here.
            with pytest.raises(psycopg.errors.FeatureNotSupported):
                conn.execute(
                    sql.SQL("SELECT * FROM {}.{}").format(
                        sql.Identifier(other_database), sql.SQL(other_tables["deals"]["sql_name"])
                    )
                )
            # Read-only: no writes, no DDL, even on its own tables and views.
            for write in (
                sql.SQL("DELETE FROM {}").format(deals),
                sql.SQL("DROP VIEW {}").format(view),
                sql.SQL("CREATE TABLE {}.x (y int)").format(sql.Identifier(synced_schema)),
            ):
                with pytest.raises((psycopg.errors.ReadOnlySqlTransaction, psycopg.errors.InsufficientPrivilege)):
                    conn.execute(write)
            conn.execute("SET default_transaction_read_only = off")
            for write in (
                sql.SQL("DELETE FROM {}").format(deals),
                sql.SQL("DROP VIEW {}").format(view),
                sql.SQL("CREATE TABLE {}.x (y int)").format(sql.Identifier(synced_schema)),
                sql.SQL("CREATE TABLE public.x (y int)"),
                sql.SQL("CREATE SCHEMA mine"),
                sql.SQL("CREATE TEMP TABLE x (y int)"),
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(write)
        # The login opens its own database and no other: not another customer's, not the control database.
        control = bff.services.store.url
        for elsewhere in (other_database, conninfo_to_dict(control)["dbname"]):
            with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
                connect({**creds, "database": elsewhere})

        async with bff.services.store.connection() as conn:
            cur = await conn.execute(
                "SELECT rolpassword, rolcanlogin, rolsuper FROM pg_authid WHERE rolname = %s", (creds["user"],)
            )
            before = await cur.fetchone()
        assert before["rolcanlogin"] is True and before["rolsuper"] is False
        again = (await credentials_for(bff, partner_token, account_id)).json()
        assert again["user"] == creds["user"] and again["password"] != creds["password"]
        async with bff.services.store.connection() as conn:
            cur = await conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (creds["user"],))
            assert (await cur.fetchone())["rolpassword"] != before["rolpassword"]
        with connect(again) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (creds["user"],)
