"""Helpers for tests that sync sandbox connections and read the warehouse back."""

from __future__ import annotations

from typing import Any

import httpx
from conftest import BFF, auth


async def customer(bff: BFF, external_id: str = "cust-1") -> tuple[str, int]:
    """A fresh partner and sub-account; returns (identity token, sub-account id).

    An identity token, as a partner's back-end holds: the warehouse read API takes no other.
    """
    _, partner_token = await bff.partner(f"partner-{external_id}")
    minted = await bff.integrate(partner_token, external_id)  # provisions the sub-account
    identity = await bff.client.get(
        "/api/partner/sub-account/identity/", params={"account_id": minted["account_id"]}, headers=auth(partner_token)
    )
    assert identity.status_code == 200, identity.text
    return str(identity.json()["token"]), int(minted["account_id"])


async def sync(bff: BFF, token: str, connection_id: int, **body: Any) -> dict[str, Any]:
    """Start a sync, wait for the run to end, return the run as the runs API shows it."""
    answer = await bff.client.post(f"/api/server/{connection_id}/sync", json=body, headers=auth(token))
    assert answer.status_code == 202, answer.text
    await bff.services.sync.wait(connection_id)
    return await last_run(bff, token, connection_id)


async def last_run(bff: BFF, token: str, connection_id: int) -> dict[str, Any]:
    runs = (await bff.client.get(f"/api/server/{connection_id}/runs?page_size=1", headers=auth(token))).json()
    return runs["results"][0]  # type: ignore[no-any-return]


async def health(bff: BFF, token: str, connection_id: int) -> dict[str, Any]:
    answer = await bff.client.get(f"/api/server/{connection_id}/health", headers=auth(token))
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


async def tables(client: httpx.AsyncClient, token: str) -> dict[str, dict[str, Any]]:
    """The sub-account's warehouse tables by name (via the read API)."""
    apps = (await client.get("/api/applications/?exclude_tables=1", headers=auth(token))).json()
    database_id = apps["results"][0]["id"]
    listed = (await client.get(f"/api/database/tables/database/{database_id}/", headers=auth(token))).json()
    return {table["name"]: table for table in listed["results"]}


async def all_rows(client: httpx.AsyncClient, token: str, table_id: int, page_size: int = 500) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    url: str | None = f"/api/database/rows/table/{table_id}/?user_field_names=True&page_size={page_size}"
    while url:
        body = (await client.get(url, headers=auth(token))).json()
        rows += body["results"]
        url = body["next"]
    return rows


async def sandbox_stats(client: httpx.AsyncClient) -> dict[str, Any]:
    return (await client.get("/sandbox/_control/stats")).json()  # type: ignore[no-any-return]


async def reset_sandbox_stats(client: httpx.AsyncClient) -> None:
    assert (await client.post("/sandbox/_control/reset-stats")).status_code == 204


async def logs(bff: BFF, token: str, connection_id: int) -> list[dict[str, Any]]:
    body = (await bff.client.get(f"/api/server/{connection_id}/logs?page_size=500", headers=auth(token))).json()
    return body["results"]  # type: ignore[no-any-return]
