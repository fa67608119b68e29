"""Sandbox writes and Sandbox Chat, straight against the sandbox app (no BFF in between)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import httpx
import pytest

from bff.sandbox import SandboxOptions, create_sandbox_app
from bff.sandbox.data import make_contact

CHAT = {"Authorization": "Bearer sandbox-chat-key"}
BOOKS = {"X-API-Key": "sandbox-valid-key"}


def client(options: SandboxOptions | None = None, clock: float = 1_800_000_000.0) -> httpx.AsyncClient:
    # A test's own sandbox: its controls are open (deployments need BFF_SANDBOX_ADMIN_KEY).
    app = create_sandbox_app(dataclasses.replace(options or SandboxOptions(), controls_open=True), clock=lambda: clock)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sandbox.test")


@pytest.fixture
async def sandbox() -> AsyncIterator[httpx.AsyncClient]:
    async with client() as c:
        yield c


async def test_invoice_writes_validate_like_a_real_api(sandbox: httpx.AsyncClient) -> None:
    created = await sandbox.post(
        "/accounting/api/divisions/103/invoices", json={"customer": "Wood", "amount": 10}, headers=BOOKS
    )
    assert created.status_code == 201
    invoice = created.json()
    assert invoice["id"] == "inv_103_0501" and invoice["number"] == "103-2026-00501" and invoice["status"] == "draft"
    for body, field in (
        ({"customer": "Wood"}, "amount"),
        ({"amount": 5}, "customer"),
        ({"customer": "W", "amount": 5, "currency": "euro"}, "currency"),
        ({"customer": "W", "amount": 5, "status": "sent"}, "status"),
        ({"customer": "W", "amount": 5, "issued_on": "31/01/2026"}, "issued_on"),
        ({"customer": "W", "amount": 5, "colour": "red"}, "colour"),
    ):
        bad = await sandbox.post("/accounting/api/divisions/101/invoices", json=body, headers=BOOKS)
        assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == field, (body, bad.json())
    nowhere = await sandbox.post(
        "/accounting/api/divisions/999/invoices", json={"customer": "W", "amount": 1}, headers=BOOKS
    )
    assert nowhere.status_code == 404
    not_json = await sandbox.post("/accounting/api/divisions/101/invoices", content=b"{", headers=BOOKS)
    assert not_json.status_code == 400 and not_json.json()["error"] == "invalid_request"
    unauthorised = await sandbox.post("/accounting/api/divisions/101/invoices", json={"customer": "W", "amount": 1})
    assert unauthorised.status_code == 401


async def test_a_written_invoice_is_seen_by_the_next_incremental_read(sandbox: httpx.AsyncClient) -> None:
    listed = await sandbox.get("/accounting/api/divisions/101/invoices?page_size=500&page=1", headers=BOOKS)
    newest = max(r["updated_at"] for r in listed.json()["results"])
    await sandbox.post("/accounting/api/divisions/101/invoices", json={"customer": "New", "amount": 3}, headers=BOOKS)
    paid = await sandbox.patch("/accounting/api/invoices/inv_101_0007", json={"status": "paid"}, headers=BOOKS)
    assert paid.status_code == 200 and paid.json()["status"] == "paid"
    changed = await sandbox.get(f"/accounting/api/divisions/101/invoices?updated_after={newest}", headers=BOOKS)
    assert [r["id"] for r in changed.json()["results"]] == ["inv_101_0501", "inv_101_0007"]
    assert (await sandbox.delete("/accounting/api/invoices/inv_101_0007", headers=BOOKS)).status_code == 204
    assert (await sandbox.get("/accounting/api/invoices/inv_101_0007", headers=BOOKS)).status_code == 404
    total = (await sandbox.get("/accounting/api/divisions/101/invoices", headers=BOOKS)).json()["total"]
    assert total == 500  # one added, one deleted


async def test_fault_knobs_apply_to_writes() -> None:
    async with client(SandboxOptions(rate_limit_every=2)) as limited:
        first = await limited.post("/chat/api/messages", json={"channel": "qa", "text": "a"}, headers=CHAT)
        second = await limited.post("/chat/api/messages", json={"channel": "qa", "text": "b"}, headers=CHAT)
        assert first.status_code == 201 and second.status_code == 429 and second.headers["retry-after"] == "1"
    async with client(SandboxOptions(fail_every=1, fail_match="/chat/api/messages")) as failing:
        broken = await failing.post("/chat/api/messages", json={"channel": "qa", "text": "a"}, headers=CHAT)
        assert broken.status_code == 500
        assert (await failing.get("/chat/api/channels", headers=CHAT)).status_code == 200
        stats = (await failing.get("/_control/stats")).json()
        assert stats["failed"] == 1 and stats["calls"] == 2 and stats["requests"]["chat.messages.write"] == 1


async def test_chat_channels_messages_and_paging(sandbox: httpx.AsyncClient) -> None:
    channels = (await sandbox.get("/chat/api/channels", headers=CHAT)).json()["channels"]
    assert [c["name"] for c in channels] == ["general", "qa", "sales", "support", "random"]
    ids: list[str] = []
    url = "/chat/api/messages?limit=25"
    while url:
        page = (await sandbox.get(url, headers=CHAT)).json()
        ids += [m["id"] for m in page["messages"]]
        after = page.get("paging", {}).get("next", {}).get("after")
        url = f"/chat/api/messages?limit=25&after={after}" if after else ""
    assert ids == [f"m_{i:04d}" for i in range(1, 61)]
    posted = await sandbox.post("/chat/api/messages", json={"channel": "#Sales", "text": "Deal won"}, headers=CHAT)
    assert posted.status_code == 201 and posted.json()["channel"] == "ch_sales" and posted.json()["id"] == "m_0061"
    in_sales = (await sandbox.get("/chat/api/messages?channel=sales&limit=500", headers=CHAT)).json()["messages"]
    assert in_sales[-1]["text"] == "Deal won" and {m["channel"] for m in in_sales} == {"ch_sales"}
    too_long = await sandbox.post("/chat/api/messages", json={"channel": "qa", "text": "x" * 4001}, headers=CHAT)
    assert too_long.status_code == 400 and too_long.json()["errors"][0]["field"] == "text"
    assert (await sandbox.get("/chat/api/messages/m_9999", headers=CHAT)).status_code == 404


async def test_chat_key_and_revocation(sandbox: httpx.AsyncClient) -> None:
    wrong = await sandbox.get("/chat/api/me", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_auth"
    assert (await sandbox.get("/chat/api/me", headers=CHAT)).json() == {"workspace": "Sandbox Chat", "user": "bff-bot"}
    assert (await sandbox.post("/_control/revoke", json={"provider": "chat"})).status_code == 200
    assert (await sandbox.get("/chat/api/me", headers=CHAT)).status_code == 401
    await sandbox.post("/_control/restore", json={"provider": "chat"})
    assert (await sandbox.get("/chat/api/me", headers=CHAT)).status_code == 200


async def test_crm_contact_search_is_exact_and_case_insensitive() -> None:
    first = make_contact(1)[0]
    async with client() as sandbox:
        sandbox_app = sandbox._transport.app  # type: ignore[attr-defined]
        sandbox_app.state.sandbox.oauth.bearer_ok = lambda request: True  # auth is covered elsewhere
        hits = (await sandbox.get(f"/crm/api/contacts?email={first['email'].upper()}")).json()["results"]
        assert [h["id"] for h in hits] == ["c_0001"]
        assert (await sandbox.get("/crm/api/contacts?email=nobody@nowhere.test")).json() == {"results": []}
        dupe = await sandbox.post("/crm/api/contacts", json={"email": first["email"]})
        assert dupe.status_code == 409 and "c_0001" in dupe.json()["error_description"]
        bad_contact = await sandbox.post("/crm/api/deals", json={"name": "x", "contact_id": "c_9999"})
        assert bad_contact.status_code == 400 and bad_contact.json()["errors"][0]["field"] == "contact_id"
