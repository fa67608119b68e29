"""The raw proxy: calls pass through with the connection's auth, never leave the base URL, never echo secrets."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote

import pytest
from conftest import BFF, auth, running_bff
from records_helpers import Customer, accounting, connect_chat, crm, customer

from bff.settings import Settings


@pytest.fixture
async def sbff(settings_factory: Callable[..., Settings]) -> AsyncIterator[BFF]:
    async with running_bff(settings_factory(sandbox_enabled=True)) as instance:
        yield instance


@pytest.fixture
async def who(sbff: BFF) -> Customer:
    return await customer(sbff)


async def raw_request(bff: BFF, method: str, raw_path: bytes, token: str) -> tuple[int, dict[str, Any]]:
    """Send a path exactly as given (httpx would normalise `..` away before it leaves the client)."""
    path = raw_path.split(b"?")[0]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path.decode(),
        "raw_path": path,
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"authorization", f"Bearer {token}".encode())],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await bff.app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body)


async def test_get_and_post_pass_through(sbff: BFF, who: Customer) -> None:
    cid = await crm(sbff, who)
    listed = await sbff.client.get(f"/api/server/{cid}/proxy/contacts?limit=2", headers=who.headers)
    assert listed.status_code == 200 and len(listed.json()["results"]) == 2
    assert listed.json()["results"][0]["id"] == "c_0001" and "paging" in listed.json()
    missing = await sbff.client.get(f"/api/server/{cid}/proxy/contacts/c_9999", headers=who.headers)
    assert missing.status_code == 404 and missing.json() == {
        "error": "not_found",
        "error_description": "There is no contact c_9999.",
    }

    chat = int((await connect_chat(sbff, who))["id"])
    posted = await sbff.client.post(
        f"/api/server/{chat}/proxy/messages", json={"channel": "qa", "text": "raw call"}, headers=who.headers
    )
    assert posted.status_code == 201 and posted.json()["text"] == "raw call" and posted.json()["channel"] == "ch_qa"
    invalid = await sbff.client.post(f"/api/server/{chat}/proxy/messages", json={"channel": "qa"}, headers=who.headers)
    assert invalid.status_code == 400 and invalid.json()["error"] == "validation_error"


@pytest.mark.parametrize(
    "raw",
    [
        b"../crm/api/me",
        b"me/../../crm/api/me",
        b"%2e%2e/crm/api/me",
        b"%2E%2E%2Fcrm/api/me",
        b"%252e%252e/crm/api/me",
        b"/evil.test/x",
        b"http://evil.test/x",
        b"https:%2F%2Fevil.test/x",
        b"%2F%2Fevil.test/x",
        b"..%5Ccrm/api/me",
    ],
)
async def test_path_escapes_are_refused(sbff: BFF, who: Customer, raw: bytes) -> None:
    cid = await accounting(sbff, who)
    status, body = await raw_request(sbff, "GET", f"/api/server/{cid}/proxy/".encode() + raw, who.identity)
    assert status == 400 and body["code"] == "proxy_path_invalid", (raw, body)


async def test_credentials_never_come_back(sbff: BFF, who: Customer) -> None:
    cid = await accounting(sbff, who)
    me = await sbff.client.get(f"/api/server/{cid}/proxy/me", headers={**who.headers, "X-API-Key": "forged"})
    assert me.status_code == 200 and me.json() == {"company": "Sandbox Accounting BV", "user": "api"}
    assert "sandbox-valid-key" not in me.text and "sandbox-valid-key" not in str(me.headers)

    chat = int((await connect_chat(sbff, who))["id"])
    echoed = await sbff.client.post(
        f"/api/server/{chat}/proxy/messages",
        json={"channel": "qa", "text": "key sandbox-chat-key"},
        headers=who.headers,
    )
    assert echoed.status_code == 201 and "sandbox-chat-key" not in echoed.text and "key ***" in echoed.text

    crm_id = await crm(sbff, who)
    me_crm = await sbff.client.get(f"/api/server/{crm_id}/proxy/me", headers=who.headers)
    assert me_crm.status_code == 200 and me_crm.json()["portal"] == "Sandbox CRM"
    assert "authorization" not in {k.lower() for k in me_crm.headers}
    await sbff.services.writeback.log.flush()  # log lines are stored in batches, off the request path
    logs = (await sbff.client.get(f"/api/server/{crm_id}/logs", headers=auth(who.integrate))).json()["results"]
    assert any(line["message"] == "Proxy: GET /me → 200." for line in logs)


async def test_proxy_path_with_encoded_slash_in_a_segment_is_kept(sbff: BFF, who: Customer) -> None:
    cid = await crm(sbff, who)
    answer = await sbff.client.get(f"/api/server/{cid}/proxy/contacts/{quote('c_0001', safe='')}", headers=who.headers)
    assert answer.status_code == 200 and answer.json()["id"] == "c_0001"
