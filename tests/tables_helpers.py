"""Helpers for the query-table and rows-filter tests: identity tokens, synced CRM customers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from conftest import BFF, auth
from psycopg import AsyncConnection
from sandbox_flows import connect_crm
from sync_helpers import sync, tables


async def identity_customer(bff: BFF, external_id: str = "cust-1") -> tuple[str, int, str]:
    """A fresh partner and sub-account; returns (identity token, sub-account id, partner token)."""
    _, partner_token = await bff.partner(f"partner-{external_id}")
    minted = await bff.integrate(partner_token, external_id)
    answer = await bff.client.get(
        f"/api/partner/sub-account/identity/?account_id={minted['account_id']}", headers=auth(partner_token)
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["token"]), int(minted["account_id"]), partner_token


async def crm_customer(bff: BFF, external_id: str = "cust-1") -> tuple[str, int, dict[str, dict[str, Any]], int]:
    """A customer with a synced Sandbox CRM: (identity token, account id, tables by name, connection id)."""
    token, account_id, _ = await identity_customer(bff, external_id)
    crm = await connect_crm(bff.client, token)
    run = await sync(bff, token, crm["id"])
    assert run["status"] in ("succeeded", "success", "HEALTHY", "completed") or run["error"] is None, run
    return token, account_id, await tables(bff.client, token), int(crm["id"])


async def rows(bff: BFF, token: str, table_id: int, query: str = "", *, status: int = 200) -> dict[str, Any]:
    sep = "&" if query else ""
    answer = await bff.client.get(
        f"/api/database/rows/table/{table_id}/?user_field_names=true{sep}{query}", headers=auth(token)
    )
    assert answer.status_code == status, answer.text
    return answer.json()  # type: ignore[no-any-return]


@contextlib.asynccontextmanager
async def customer_database(bff: BFF, account_id: int) -> AsyncIterator[AsyncConnection[Any]]:
    """The BFF's own (admin) connection to a customer's database, for looking inside it."""
    placement = await bff.services.warehouse.placement(account_id)
    assert placement is not None, "the customer has no database yet"
    async with bff.services.warehouse.servers.connection(placement) as conn:
        yield conn
