"""Helpers for writeback tests: a customer with an identity token and connected sandboxes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from conftest import BFF, auth
from sandbox_flows import connect_accounting, connect_crm


@dataclass
class Customer:
    integrate: str
    identity: str
    account_id: int

    @property
    def headers(self) -> dict[str, str]:
        return auth(self.identity)


async def customer(bff: BFF, external_id: str = "cust-1") -> Customer:
    _, partner_token = await bff.partner(f"partner-{external_id}")
    minted = await bff.integrate(partner_token, external_id)
    identity = await bff.client.get(
        f"/api/partner/sub-account/identity/?external_id={external_id}", headers=auth(partner_token)
    )
    assert identity.status_code == 200, identity.text
    return Customer(str(minted["token"]), str(identity.json()["token"]), int(minted["account_id"]))


async def connect_chat(bff: BFF, who: Customer) -> dict[str, Any]:
    created = await bff.client.post(
        "/api/servers",
        json={"servertype_id": "sandbox_chat", "api_key": "sandbox-chat-key"},
        headers=auth(who.integrate),
    )
    assert created.status_code == 201, created.text
    return created.json()  # type: ignore[no-any-return]


async def crm(bff: BFF, who: Customer) -> int:
    return int((await connect_crm(bff.client, who.integrate))["id"])


async def accounting(bff: BFF, who: Customer) -> int:
    return int((await connect_accounting(bff.client, who.integrate))["id"])


async def stats(bff: BFF) -> dict[str, Any]:
    return (await bff.client.get("/sandbox/_control/stats")).json()  # type: ignore[no-any-return]
