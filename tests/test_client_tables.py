"""The Python client's query tables and filtered rows, against a real server."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import httpx
import pytest
from conftest import serve_in_thread

from bff.cli import create_partner
from bff.client import AsyncPartnerClient, BFFError, PartnerClient, row_params
from bff.sandbox.data import deals_table
from bff.settings import Settings

DEALS = deals_table().records


def test_row_params_spell_the_rows_api() -> None:
    assert row_params(
        filters={"stage__equal": "closedwon", "vip__equal": True, "company__empty": None},
        order_by=["-amount", "id"],
        updated_since=datetime(2026, 1, 2, 3, 4, 5),
        include=["id", "amount"],
    ) == {
        "user_field_names": "True",
        "filter__stage__equal": "closedwon",
        "filter__vip__equal": "true",
        "filter__company__empty": "",
        "order_by": "-amount,id",
        "updated_since": "2026-01-02T03:04:05+00:00",
        "include": "id,amount",
    }
    with pytest.raises(ValueError, match="field__operator"):
        row_params(filters={"stage": "x"})


async def test_create_query_table_and_filtered_rows(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory(sandbox_enabled=True, sql_access=True)
    with serve_in_thread(settings) as base_url:
        token = (await create_partner(settings, "acme", []))["token"]
        with PartnerClient(base_url, token) as partner:
            created = partner.create_sub_account("wood_123")
            customer = partner.sub_account_client(external_id="wood_123")
            identity = partner.identity_token(external_id="wood_123")["token"]
            connection = httpx.post(  # the bank sandbox connects without a browser
                f"{base_url}/api/servers",
                json={"servertype_id": "sandbox_bank", "login": "sandbox", "password": "sandbox"},
                headers={"Authorization": f"Bearer {identity}"},
            ).json()
            customer.refresh_connection(connection_id=connection["id"], is_async=False)
            bank = next(t for t in customer.tables(customer.database_id()) if t["name"] == "transactions")
            incoming = customer.create_query_table(
                "Incoming", f"SELECT id, amount, description FROM {bank['sql_name']} WHERE amount > 0"
            )
            assert incoming["type"] == "query" and [f["name"] for f in incoming["fields"]] == [
                "id",
                "amount",
                "description",
            ]
            rows = list(
                customer.rows(incoming["id"], order_by="-amount", filters={"amount__higher_than": 1000}, page_size=7)
            )
            assert rows and all(r["amount"] > 1000 for r in rows)
            assert [r["amount"] for r in rows] == sorted((r["amount"] for r in rows), reverse=True)
            # updated_since needs a _synced_at column, which this query did not select.
            with pytest.raises(BFFError) as no_column:
                list(customer.rows(incoming["id"], updated_since="2000-01-01T00:00:00Z"))
            assert no_column.value.code == "validation_error" and "updated_since" in no_column.value.errors
            customer.update_query_table(
                incoming["id"], query=f"SELECT id, amount, _synced_at FROM {bank['sql_name']} WHERE amount > 0"
            )
            assert len(list(customer.rows(incoming["id"], updated_since="2000-01-01T00:00:00Z", page_size=500))) >= len(
                rows
            )
            assert list(customer.rows(incoming["id"], updated_since=datetime(2100, 1, 1))) == []
            with pytest.raises(BFFError) as refused:
                customer.create_query_table("bad", "SELECT 1; SELECT 2")
            assert refused.value.code == "query_invalid" and refused.value.status == 400
            renamed = customer.update_query_table(incoming["id"], name="Money in")
            assert customer.query_table(incoming["id"])["name"] == renamed["name"] == "Money in"
            customer.delete_query_table(incoming["id"])
            credentials = partner.database_credentials(created["id"])
            assert credentials["user"].endswith("_sql") and credentials["password"]

        async with AsyncPartnerClient(base_url, token) as apartner:
            acustomer = await apartner.sub_account_client(external_id="wood_123")
            table = await acustomer.create_query_table(
                "Out", f"SELECT id, amount FROM {bank['sql_name']} WHERE amount < 0"
            )
            got = [
                r async for r in acustomer.rows(table["id"], filters={"amount__lower_than": -100}, order_by="amount")
            ]
            assert got and got[0]["amount"] == min(r["amount"] for r in got)
            await acustomer.delete_query_table(table["id"])
