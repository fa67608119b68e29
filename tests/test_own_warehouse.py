"""A partner gives one customer its own PostgreSQL (DESIGN §15, issue 22 item 1):
``PUT /api/partner/sub-account/{id}/warehouse {"url": …}``, checked, kept encrypted, never shown."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from conftest import BFF, auth, running_bff
from sandbox_flows import connect_crm
from sync_helpers import sync, tables
from tables_helpers import crm_customer, identity_customer, rows

from bff.crypto import Vault
from bff.settings import Settings
from bff.testing import free_port
from bff.warehouse_servers import WarehouseServers, server_name

PASSWORD = "s3cret-own-url-pw"


def _exists(url: str, database: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is not None


async def _put(bff: BFF, partner_token: str, account_id: int, body: Any) -> Any:
    return await bff.client.put(
        f"/api/partner/sub-account/{account_id}/warehouse", headers=auth(partner_token), json=body
    )


async def _partner_token(bff: BFF, account_id: int) -> str:
    async with bff.services.store.connection() as conn:
        cur = await conn.execute("SELECT partner_id FROM sub_accounts WHERE id = %s", (account_id,))
        partner = await bff.services.store.partners.get((await cur.fetchone())["partner_id"])
    return bff.services.tokens.mint_partner_token(partner_id=partner.id, generation=partner.token_generation).token


async def test_a_partner_puts_one_customer_on_its_own_postgresql(
    settings_factory: Callable[..., Settings],
    database_url: str,
    second_warehouse_server: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    own = psycopg.conninfo.make_conninfo(second_warehouse_server, password=PASSWORD)
    settings = settings_factory(sandbox_enabled=True, sql_access=True)
    async with running_bff(settings) as bff:
        # A customer with a database already (on the control server): moved to its own server.
        token, account_id, by_name, _ = await crm_customer(bff, "own")
        partner_token = await _partner_token(bff, account_id)
        before = await bff.services.warehouse.placement(account_id)
        assert before is not None and before.server == server_name(database_url)
        answer = await _put(bff, partner_token, account_id, {"url": own})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"server": server_name(own), "database": before.database, "moved": True}
        assert not _exists(database_url, before.database) and _exists(own, before.database)
        assert (await rows(bff, token, by_name["deals"]["id"]))["count"] == 300
        sql_answer = await bff.client.post(
            "/api/database/query/",
            headers=auth(token),
            json={"query": 'SELECT count(*) AS n FROM "Sandbox CRM".contacts'},
        )
        assert sql_answer.json()["rows"] == [{"n": 1250}], sql_answer.text
        # Kept encrypted; another process learns the server from it (and from nothing else).
        async with bff.services.store.connection() as conn:
            cur = await conn.execute(
                "SELECT own_url FROM warehouse_placements WHERE sub_account_id = %s", (account_id,)
            )
            sealed = (await cur.fetchone())["own_url"]
        assert PASSWORD not in sealed and "postgres" not in sealed
        fresh = WarehouseServers(bff.services.store, vault=Vault(settings.encryption_key))
        try:
            placed = await fresh.placement(account_id)
            assert placed is not None
            learnt = psycopg.conninfo.conninfo_to_dict(fresh.url(placed.server))
            assert learnt["password"] == PASSWORD and server_name(fresh.url(placed.server)) == server_name(own)
            assert fresh.names == [server_name(database_url)]  # never a candidate for other customers
        finally:
            await fresh.close()
        # A customer without a database yet gets it there on its first sync; other customers do not.
        new_token, new_id, _ = await identity_customer(bff, "own-new")
        new_partner = await _partner_token(bff, new_id)
        answer = await _put(bff, new_partner, new_id, {"url": own})
        assert answer.status_code == 200 and answer.json()["moved"] is False, answer.text
        crm = await connect_crm(bff.client, new_token)
        assert (await sync(bff, new_token, crm["id"]))["status"] == "succeeded"
        assert (await tables(bff.client, new_token))["deals"]["row_count"] == 300
        assert _exists(own, answer.json()["database"]) and not _exists(database_url, answer.json()["database"])
        _, other_id, _, _ = await crm_customer(bff, "someone-else")
        other = await bff.services.warehouse.placement(other_id)
        assert other is not None and other.server == server_name(database_url)
        # Another partner cannot touch this customer.
        _, stranger = await bff.partner("stranger")
        assert (await _put(bff, stranger, account_id, {"url": own})).status_code == 404
    assert PASSWORD not in caplog.text


async def test_a_url_that_does_not_work_is_refused_with_a_code(
    settings_factory: Callable[..., Settings], database_url: str, second_warehouse_server: str
) -> None:
    with psycopg.connect(second_warehouse_server, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS weak_own_login")
        conn.execute("CREATE ROLE weak_own_login LOGIN NOCREATEDB NOCREATEROLE")
    settings = settings_factory(sandbox_enabled=True)
    async with running_bff(settings) as bff:
        _, account_id, partner_token = await identity_customer(bff, "refused")
        port = free_port()
        cases: list[tuple[Any, int, str]] = [
            ({"url": "not a url at all"}, 400, "validation_error"),
            ({"url": f"{second_warehouse_server}&sslkey=/etc/passwd"}, 400, "validation_error"),
            ({"url": "postgresql:///postgres"}, 400, "validation_error"),  # no host, no user
            ({"url": ""}, 400, "validation_error"),
            ({"url": 5}, 400, "validation_error"),
            ({"uri": second_warehouse_server}, 400, "validation_error"),
            ({"url": f"postgresql://u:{PASSWORD}@127.0.0.1:{port}/db"}, 422, "warehouse_unreachable"),
            (
                {"url": psycopg.conninfo.make_conninfo(second_warehouse_server, user="nobody_here")},
                422,
                "warehouse_login_refused",
            ),
            (
                {"url": psycopg.conninfo.make_conninfo(second_warehouse_server, user="weak_own_login")},
                422,
                "warehouse_not_permitted",
            ),
            ({"url": database_url}, 422, "warehouse_not_permitted"),  # a server of this BFF already
        ]
        for body, status, code in cases:
            answer = await _put(bff, partner_token, account_id, body)
            assert (answer.status_code, answer.json()["code"]) == (status, code), (body, answer.text)
            assert PASSWORD not in answer.text
        assert await bff.services.warehouse.placement(account_id) is None  # nothing was kept
        async with bff.services.store.connection() as conn:
            cur = await conn.execute("SELECT count(*) AS n FROM warehouse_placements WHERE own_url IS NOT NULL")
            assert (await cur.fetchone())["n"] == 0
