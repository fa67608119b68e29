from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from bff.sandbox import SandboxOptions, create_sandbox_app

REDIRECT = "http://127.0.0.1:8000/oauth/callback"
CLIENT = {"client_id": "bff-sandbox", "client_secret": "bff-sandbox-secret"}
VERIFIER = "test-verifier-" + "x" * 50
KEY = {"X-API-Key": "sandbox-valid-key"}
BANK = ("sandbox", "sandbox")


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FormScraper(HTMLParser):
    """Collects forms with their inputs and buttons, plus a few page facts."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []
        self.html_lang: str | None = None
        self.h1 = ""
        self.status_text: str | None = None
        self.external: list[str] = []
        self.scripts = 0
        self._in: str | None = None
        self._button: dict[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "html":
            self.html_lang = a.get("lang")
        elif tag == "form":
            self.forms.append({**a, "inputs": [], "buttons": []})
        elif tag == "input" and self.forms:
            self.forms[-1]["inputs"].append(a)
        elif tag == "button":
            self._button = {**a, "text": ""}
        elif tag == "h1":
            self._in = "h1"
        elif a.get("role") == "status":
            self._in = "status"
            self.status_text = ""
        if tag == "script":
            self.scripts += 1
        for attr in ("src", "href"):
            if attr in a:
                self.external.append(a[attr])

    def handle_endtag(self, tag: str) -> None:
        if tag == "button" and self._button is not None:
            if self.forms:
                self.forms[-1]["buttons"].append(self._button)
            self._button = None
        elif tag in ("h1", "p"):
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._button is not None:
            self._button["text"] += data.strip()
        if self._in == "h1":
            self.h1 += data.strip()
        elif self._in == "status":
            self.status_text = (self.status_text or "") + data.strip()


def scrape(html: str) -> FormScraper:
    scraper = FormScraper()
    scraper.feed(html)
    return scraper


def challenge_for(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def client_for(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


@pytest.fixture
async def crm() -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(create_sandbox_app()) as client:
        yield client


def authorize_params(**overrides: str | None) -> dict[str, str]:
    params: dict[str, str | None] = {
        "response_type": "code",
        "client_id": "bff-sandbox",
        "redirect_uri": REDIRECT,
        "state": "st/ate+with spaces=&é",
        "code_challenge": challenge_for(VERIFIER),
        "code_challenge_method": "S256",
        "scope": "contacts.read deals.read",
    }
    params.update(overrides)
    return {k: v for k, v in params.items() if v is not None}


async def decide(client: httpx.AsyncClient, decision: str, prefix: str = "", **overrides: str | None) -> httpx.Response:
    page = await client.get(prefix + "/crm/oauth/authorize", params=authorize_params(**overrides))
    assert page.status_code == 200, page.text
    (form,) = scrape(page.text).forms
    data = {i["name"]: i["value"] for i in form["inputs"] if i.get("type") == "hidden"}
    (button,) = [b for b in form["buttons"] if b["text"] == decision]
    data[button["name"]] = button["value"]
    return await client.post(form["action"], data=data)


async def get_code(client: httpx.AsyncClient, **overrides: str | None) -> str:
    response = await decide(client, "Allow", **overrides)
    assert response.status_code == 302
    return parse_qs(urlsplit(response.headers["location"]).query)["code"][0]


async def exchange(client: httpx.AsyncClient, code: str, **overrides: str) -> httpx.Response:
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "code_verifier": VERIFIER,
        **CLIENT,
        **overrides,
    }
    return await client.post("/crm/oauth/token", data=data)


async def tokens(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await exchange(client, await get_code(client))
    assert response.status_code == 200, response.text
    return response.json()


def bearer(token: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {token['access_token']}"}


async def refresh(client: httpx.AsyncClient, refresh_token: str) -> httpx.Response:
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token, **CLIENT}
    return await client.post("/crm/oauth/token", data=data)


async def all_contacts(client: httpx.AsyncClient, headers: dict[str, str], **params: Any) -> list[dict]:
    records: list[dict] = []
    while True:
        body = (await client.get("/crm/api/contacts", params=params, headers=headers)).json()
        records += body["results"]
        if "paging" not in body:
            return records
        params["after"] = body["paging"]["next"]["after"]


async def all_deals(client: httpx.AsyncClient, headers: dict[str, str], **params: Any) -> list[dict]:
    records: list[dict] = []
    offset = 0
    while True:
        body = (await client.get("/crm/api/deals", params={**params, "offset": offset}, headers=headers)).json()
        records += body["results"]
        offset += len(body["results"])
        if not body["has_more"]:
            return records


async def all_invoices(client: httpx.AsyncClient, code: int, **params: Any) -> list[dict]:
    records: list[dict] = []
    page = 1
    while True:
        url = f"/accounting/api/divisions/{code}/invoices"
        body = (await client.get(url, params={**params, "page": page}, headers=KEY)).json()
        records += body["results"]
        if page >= body["page_count"]:
            return records
        page += 1


async def all_transactions(client: httpx.AsyncClient, **params: Any) -> list[dict]:
    records: list[dict] = []
    response = await client.get("/bank/api/transactions", params=params, auth=BANK)
    while True:
        records += response.json()
        if "next" not in response.links:
            return records
        response = await client.get(response.links["next"]["url"], auth=BANK)


def assert_sorted(records: list[dict]) -> None:
    keys = [(r["updated_at"], r["id"]) for r in records]
    assert keys == sorted(keys)


# -- paging ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_contacts_cursor_paging_returns_every_contact_once(crm: httpx.AsyncClient) -> None:
    headers = bearer(await tokens(crm))
    records = await all_contacts(crm, headers, limit=100)
    ids = [r["id"] for r in records]
    assert len(ids) == 1250 and len(set(ids)) == 1250
    assert set(ids) == {f"c_{i:04d}" for i in range(1, 1251)}
    assert_sorted(records)
    assert set(records[0]) == {"id", "email", "first_name", "last_name", "company", "created_at", "updated_at"}
    assert records[0]["updated_at"] == "2026-01-01T00:01:00Z"
    assert records[-1]["updated_at"] == "2026-01-01T20:50:00Z"  # 1250 minutes later


@pytest.mark.asyncio
async def test_contacts_limit_is_capped_and_validated(crm: httpx.AsyncClient) -> None:
    headers = bearer(await tokens(crm))
    big = await crm.get("/crm/api/contacts", params={"limit": 5000}, headers=headers)
    assert len(big.json()["results"]) == 500
    for bad in ("0", "-1", "ten"):
        response = await crm.get("/crm/api/contacts", params={"limit": bad}, headers=headers)
        assert response.status_code == 400
    response = await crm.get("/crm/api/contacts", params={"after": "!!not-a-cursor"}, headers=headers)
    assert response.status_code == 400


@pytest.mark.asyncio
async def test_deals_offset_paging_returns_every_deal_once(crm: httpx.AsyncClient) -> None:
    headers = bearer(await tokens(crm))
    first = (await crm.get("/crm/api/deals", params={"limit": 70}, headers=headers)).json()
    assert (first["total"], first["offset"], first["limit"], first["has_more"]) == (300, 0, 70, True)
    records = await all_deals(crm, headers, limit=70)
    ids = [r["id"] for r in records]
    assert len(ids) == 300 and set(ids) == {f"d_{i:03d}" for i in range(1, 301)}
    assert_sorted(records)
    beyond = (await crm.get("/crm/api/deals", params={"offset": 400}, headers=headers)).json()
    assert beyond["results"] == [] and beyond["has_more"] is False


@pytest.mark.asyncio
async def test_invoices_page_number_paging_per_division() -> None:
    async with client_for(create_sandbox_app()) as client:
        divisions = (await client.get("/accounting/api/divisions", headers=KEY)).json()["divisions"]
        assert [d["code"] for d in divisions] == [101, 102, 103]
        seen: set[str] = set()
        for code in (101, 102, 103):
            first = (
                await client.get(f"/accounting/api/divisions/{code}/invoices", params={"page_size": 200}, headers=KEY)
            ).json()
            assert (first["page"], first["page_size"], first["page_count"], first["total"]) == (1, 200, 3, 500)
            records = await all_invoices(client, code, page_size=200)
            ids = [r["id"] for r in records]
            assert len(ids) == 500 and len(set(ids)) == 500
            assert all(r["division"] == code and r["id"].startswith(f"inv_{code}_") for r in records)
            assert_sorted(records)
            seen |= set(ids)
        assert len(seen) == 1500
        missing = await client.get("/accounting/api/divisions/999/invoices", headers=KEY)
        assert missing.status_code == 404


@pytest.mark.asyncio
async def test_transactions_link_header_paging() -> None:
    async with client_for(create_sandbox_app()) as client:
        first = await client.get("/bank/api/transactions", params={"per_page": 60}, auth=BANK)
        assert first.links["next"]["url"] == "http://testserver/bank/api/transactions?per_page=60&page=2"
        records = await all_transactions(client, per_page=60)
        ids = [r["id"] for r in records]
        assert len(ids) == 200 and set(ids) == {f"t_{i:04d}" for i in range(1, 201)}
        assert_sorted(records)
        last = await client.get("/bank/api/transactions", params={"per_page": 100, "page": 2}, auth=BANK)
        assert "link" not in last.headers and len(last.json()) == 100


@pytest.mark.asyncio
async def test_scale_multiplies_every_fixture_deterministically() -> None:
    app = create_sandbox_app(SandboxOptions.from_env({"BFF_SANDBOX_SCALE": "3"}))
    data = app.state.sandbox.data
    assert (len(data.contacts), len(data.deals), len(data.transactions)) == (3 * 1250, 3 * 300, 3 * 200)
    assert [len(t) for t in data.invoices.values()] == [3 * 500] * 3
    # Every deal points at a contact that exists, and a second instance is identical.
    contact_ids = {r["id"] for r in data.contacts.records}
    assert {r["contact_id"] for r in data.deals.records} <= contact_ids
    again = create_sandbox_app(SandboxOptions(scale=3)).state.sandbox.data
    assert again.transactions.records == data.transactions.records and again.deals.records == data.deals.records
    async with client_for(app) as client:
        assert len(await all_transactions(client, per_page=500)) == 600
    # Scale 1 is the fixtures every test expects.
    plain = create_sandbox_app().state.sandbox.data
    assert plain.contacts.records[-1]["id"] == "c_1250" and plain.transactions.records[-1]["id"] == "t_0200"


@pytest.mark.asyncio
async def test_urls_are_built_from_the_mount_point() -> None:
    outer = Starlette(routes=[Mount("/sandbox", app=create_sandbox_app())])
    async with client_for(outer) as client:
        first = await client.get(
            "/sandbox/bank/api/transactions", params={"updated_after": "2026-01-01T00:00:00Z"}, auth=BANK
        )
        link = first.links["next"]["url"]
        assert link.startswith("http://testserver/sandbox/bank/api/transactions?")
        assert parse_qs(urlsplit(link).query) == {"updated_after": ["2026-01-01T00:00:00Z"], "page": ["2"]}
        page = await client.get("/sandbox/crm/oauth/authorize", params=authorize_params())
        assert scrape(page.text).forms[0]["action"] == "/sandbox/crm/oauth/decision"
        bank = await client.get("/sandbox/bank/refresh")
        assert scrape(bank.text).forms[0]["action"] == "/sandbox/bank/refresh"
        allowed = await decide(client, "Allow", prefix="/sandbox")
        assert allowed.headers["location"].startswith(REDIRECT + "?code=")


@pytest.mark.asyncio
async def test_updated_after_is_exclusive(crm: httpx.AsyncClient) -> None:
    headers = bearer(await tokens(crm))
    after = "2026-01-01T00:10:00Z"  # exactly record 10's updated_at
    contacts = await all_contacts(crm, headers, limit=500, updated_after=after)
    assert contacts[0]["id"] == "c_0011" and len(contacts) == 1240
    deals = (await crm.get("/crm/api/deals", params={"updated_after": after}, headers=headers)).json()
    assert deals["total"] == 290 and deals["results"][0]["id"] == "d_011"
    invoices = (
        await crm.get("/accounting/api/divisions/101/invoices", params={"updated_after": after}, headers=KEY)
    ).json()
    assert invoices["total"] == 490 and invoices["results"][0]["id"] == "inv_101_0011"
    transactions = await all_transactions(crm, updated_after="2026-01-01T00:10:00+00:00")
    assert len(transactions) == 190 and transactions[0]["id"] == "t_0011"
    bad = await crm.get("/crm/api/deals", params={"updated_after": "yesterday"}, headers=headers)
    assert bad.status_code == 400


@pytest.mark.asyncio
async def test_touch_then_incremental_returns_exactly_the_touched_records() -> None:
    async with client_for(create_sandbox_app()) as client:
        headers = bearer(await tokens(client))
        fetchers = {
            "crm.contacts": lambda **p: all_contacts(client, headers, limit=500, **p),
            "crm.deals": lambda **p: all_deals(client, headers, limit=500, **p),
            "accounting.invoices": lambda **p: _all_divisions(client, **p),
            "bank.transactions": lambda **p: all_transactions(client, per_page=500, **p),
        }
        edited = {
            "crm.contacts": "last_name",
            "crm.deals": "name",
            "accounting.invoices": "customer",
            "bank.transactions": "description",
        }
        for resource, fetch in fetchers.items():
            before = await fetch()
            cursor = max(r["updated_at"] for r in before)
            response = await client.post("/_control/touch", json={"resource": resource, "count": 5})
            assert response.status_code == 200
            touched = response.json()["touched"]
            assert touched == [r["id"] for r in before[:5]]
            changed = await fetch(updated_after=cursor)
            assert [r["id"] for r in changed] == touched, resource
            assert all(r[edited[resource]].endswith(" (edited)") for r in changed)
            stamps = [r["updated_at"] for r in changed]
            assert stamps == sorted(set(stamps)) and stamps[0] > cursor
            after = await fetch()
            assert len(after) == len(before) and after[-5:] == changed
            assert_sorted(after)


async def _all_divisions(client: httpx.AsyncClient, **params: Any) -> list[dict]:
    records: list[dict] = []
    for code in (101, 102, 103):
        records += await all_invoices(client, code, page_size=500, **params)
    return sorted(records, key=lambda r: (r["updated_at"], r["id"]))


@pytest.mark.asyncio
async def test_contacts_cursor_survives_touches_between_pages(crm: httpx.AsyncClient) -> None:
    headers = bearer(await tokens(crm))
    first = (await crm.get("/crm/api/contacts", params={"limit": 100}, headers=headers)).json()
    await crm.post("/_control/touch", json={"resource": "crm.contacts", "count": 150})
    rest = await all_contacts(crm, headers, limit=100, after=first["paging"]["next"]["after"])
    rest_ids = [r["id"] for r in rest]
    assert len(rest_ids) == len(set(rest_ids)) == 1250  # 101..1250, then the 150 touched ones
    assert rest_ids[:1] == ["c_0151"] and rest_ids[-150:] == [f"c_{i:04d}" for i in range(1, 151)]


# -- OAuth --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_oauth_happy_path(crm: httpx.AsyncClient) -> None:
    page = await crm.get("/crm/oauth/authorize", params=authorize_params())
    assert page.status_code == 200
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "cross-origin-opener-policy" not in page.headers
    facts = scrape(page.text)
    assert facts.html_lang == "en" and facts.h1 == "Sandbox CRM"
    assert facts.scripts == 0 and facts.external == []
    assert "BFF integrations" in page.text
    assert "Read your contacts" in page.text and "Read your deals" in page.text
    (form,) = facts.forms
    assert form["method"] == "post" and form["action"] == "/crm/oauth/decision"
    assert sorted(b["text"] for b in form["buttons"]) == ["Allow", "Deny"]
    hidden = {i["name"]: i["value"] for i in form["inputs"] if i["type"] == "hidden"}
    assert hidden["state"] == authorize_params()["state"]
    assert hidden["code_challenge"] == challenge_for(VERIFIER)

    allowed = await decide(crm, "Allow")
    assert allowed.status_code == 302
    location = urlsplit(allowed.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT
    query = parse_qs(location.query)
    assert query["state"] == [authorize_params()["state"]]

    response = await exchange(crm, query["code"][0])
    assert response.status_code == 200
    token = response.json()
    assert token["token_type"] == "Bearer" and token["expires_in"] == 3600
    assert token["scope"] == "contacts.read deals.read" and token["refresh_token"]
    assert response.headers["cache-control"] == "no-store"
    me = await crm.get("/crm/api/me", headers=bearer(token))
    assert me.json() == {"id": "user_1", "email": "owner@sandbox-crm.test", "portal": "Sandbox CRM"}
    bad = await crm.get("/crm/api/me", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_token"
    assert (await crm.get("/crm/api/contacts")).status_code == 401


@pytest.mark.asyncio
async def test_client_authentication(crm: httpx.AsyncClient) -> None:
    code = await get_code(crm)
    wrong = await exchange(crm, code, client_secret="wrong")
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_client"
    data = {
        "grant_type": "authorization_code",
        "code": await get_code(crm),
        "redirect_uri": REDIRECT,
        "code_verifier": VERIFIER,
    }
    basic = await crm.post("/crm/oauth/token", data=data, auth=("bff-sandbox", "bff-sandbox-secret"))
    assert basic.status_code == 200
    bad_basic = await crm.post("/crm/oauth/token", data=data, auth=("bff-sandbox", "nope"))
    assert bad_basic.status_code == 401 and bad_basic.json()["error"] == "invalid_client"
    anonymous = await crm.post("/crm/oauth/token", data=data)
    assert anonymous.json()["error"] == "invalid_client"
    unsupported = await crm.post("/crm/oauth/token", data={"grant_type": "password", **CLIENT})
    assert unsupported.json()["error"] == "unsupported_grant_type"
    missing = await crm.post("/crm/oauth/token", data={"grant_type": "authorization_code", **CLIENT})
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_request"


@pytest.mark.asyncio
async def test_wrong_code_verifier_is_invalid_grant(crm: httpx.AsyncClient) -> None:
    response = await exchange(crm, await get_code(crm), code_verifier="y" * 64)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


@pytest.mark.asyncio
async def test_replayed_code_is_invalid_grant(crm: httpx.AsyncClient) -> None:
    code = await get_code(crm)
    first = await exchange(crm, code)
    assert first.status_code == 200
    replay = await exchange(crm, code)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    # RFC 6749 §4.1.2: tokens minted from a replayed code are revoked.
    assert (await crm.get("/crm/api/me", headers=bearer(first.json()))).status_code == 401


@pytest.mark.asyncio
async def test_redirect_uri_must_match_byte_for_byte(crm: httpx.AsyncClient) -> None:
    code = await get_code(crm)
    response = await exchange(crm, code, redirect_uri=REDIRECT + "/")
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


@pytest.mark.asyncio
async def test_expired_code_is_invalid_grant() -> None:
    clock = FakeClock()
    async with client_for(create_sandbox_app(clock=clock)) as client:
        code = await get_code(client)
        clock.now += 61
        response = await exchange(client, code)
        assert response.json()["error"] == "invalid_grant"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"code_challenge_method": "plain"}, "S256"),
        ({"code_challenge_method": None}, "S256"),
        ({"code_challenge": None}, "code_challenge"),
        ({"code_challenge": "short"}, "code_challenge"),
        ({"client_id": "someone-else"}, "client_id"),
        ({"client_id": None}, "client_id"),
        ({"redirect_uri": None}, "redirect_uri"),
        ({"redirect_uri": "javascript:alert(1)"}, "redirect_uri"),
        ({"response_type": "token"}, "response_type"),
    ],
)
async def test_invalid_authorize_request_renders_400_page(
    crm: httpx.AsyncClient, overrides: dict[str, str | None], needle: str
) -> None:
    response = await crm.get("/crm/oauth/authorize", params=authorize_params(**overrides))
    assert response.status_code == 400
    assert "location" not in response.headers
    assert response.headers["content-type"].startswith("text/html")
    assert needle in response.text and "Sandbox CRM" in response.text
    assert scrape(response.text).forms == []


@pytest.mark.asyncio
async def test_redirect_uri_allow_list() -> None:
    app = create_sandbox_app(SandboxOptions(redirect_uris=(REDIRECT,)))
    async with client_for(app) as client:
        assert (await client.get("/crm/oauth/authorize", params=authorize_params())).status_code == 200
        other = await client.get("/crm/oauth/authorize", params=authorize_params(redirect_uri="http://evil.test/cb"))
        assert other.status_code == 400 and "location" not in other.headers


@pytest.mark.asyncio
async def test_tampered_decision_form_is_rejected(crm: httpx.AsyncClient) -> None:
    data = {**authorize_params(code_challenge_method="plain"), "decision": "allow"}
    response = await crm.post("/crm/oauth/decision", data=data)
    assert response.status_code == 400 and "location" not in response.headers


@pytest.mark.asyncio
async def test_deny_redirects_with_access_denied(crm: httpx.AsyncClient) -> None:
    denied = await decide(crm, "Deny")
    assert denied.status_code == 302
    location = urlsplit(denied.headers["location"])
    query = parse_qs(location.query)
    assert query["error"] == ["access_denied"] and "code" not in query
    assert query["state"] == [authorize_params()["state"]]
    assert query["error_description"]


@pytest.mark.asyncio
async def test_refresh_rotates_refresh_tokens(crm: httpx.AsyncClient) -> None:
    first = await tokens(crm)
    rotated = await refresh(crm, first["refresh_token"])
    assert rotated.status_code == 200
    second = rotated.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert (await crm.get("/crm/api/me", headers=bearer(second))).status_code == 200
    reused = await refresh(crm, first["refresh_token"])
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
    assert (await refresh(crm, second["refresh_token"])).status_code == 200


@pytest.mark.asyncio
async def test_expired_access_token_is_401() -> None:
    clock = FakeClock()
    app = create_sandbox_app(SandboxOptions(access_token_ttl=600), clock=clock)
    async with client_for(app) as client:
        token = await tokens(client)
        assert token["expires_in"] == 600
        clock.now += 599
        assert (await client.get("/crm/api/me", headers=bearer(token))).status_code == 200
        clock.now += 2
        expired = await client.get("/crm/api/me", headers=bearer(token))
        assert expired.status_code == 401 and expired.json() == {
            "error": "invalid_token",
            "error_description": expired.json()["error_description"],
        }
        renewed = (await refresh(client, token["refresh_token"])).json()
        assert (await client.get("/crm/api/me", headers=bearer(renewed))).status_code == 200


@pytest.mark.asyncio
async def test_coop_header_only_with_knob() -> None:
    async with client_for(create_sandbox_app(SandboxOptions(coop=True))) as client:
        page = await client.get("/crm/oauth/authorize", params=authorize_params())
        assert page.headers["cross-origin-opener-policy"] == "same-origin"
    async with client_for(create_sandbox_app()) as client:
        page = await client.get("/crm/oauth/authorize", params=authorize_params())
        assert "cross-origin-opener-policy" not in page.headers


# -- knobs -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_rate_limit_knob_answers_429_with_retry_after() -> None:
    app = create_sandbox_app(SandboxOptions(rate_limit_every=3, retry_after=7, controls_open=True))
    async with client_for(app) as client:
        statuses = []
        for _ in range(6):
            response = await client.get("/accounting/api/divisions/101/invoices", headers=KEY)
            statuses.append(response.status_code)
            if response.status_code == 429:
                assert response.headers["retry-after"] == "7"
                assert "results" not in response.json()
        assert statuses == [200, 200, 429, 200, 200, 429]
        # The counter spans the whole instance, across providers.
        assert (await client.get("/bank/api/accounts", auth=BANK)).status_code == 200
        assert (await client.get("/crm/api/me")).status_code == 401
        assert (await client.get("/bank/api/accounts", auth=BANK)).status_code == 429
        stats = (await client.get("/_control/stats")).json()
        assert stats["rate_limited"] == 3
        assert stats["requests"]["accounting.invoices"] == 6
        assert stats["records_served"]["accounting.invoices"] == 400
        assert stats["requests"]["bank.accounts"] == 2 and stats["records_served"]["bank.accounts"] == 1


@pytest.mark.asyncio
async def test_rate_limited_page_does_not_advance() -> None:
    app = create_sandbox_app(SandboxOptions(rate_limit_every=2))
    async with client_for(app) as client:
        first = await client.get("/bank/api/transactions", params={"page": 3}, auth=BANK)
        limited = await client.get("/bank/api/transactions", params={"page": 3}, auth=BANK)
        again = await client.get("/bank/api/transactions", params={"page": 3}, auth=BANK)
        assert limited.status_code == 429
        assert again.json() == first.json() == []  # 200 records, per_page 100: page 3 is empty


@pytest.mark.asyncio
async def test_fail_knob_with_fail_match() -> None:
    app = create_sandbox_app(SandboxOptions(fail_every=2, fail_match="/crm/api/deals", controls_open=True))
    async with client_for(app) as client:
        headers = bearer(await tokens(client))
        statuses = []
        for _ in range(4):
            contacts = await client.get("/crm/api/contacts", headers=headers)
            assert contacts.status_code == 200
            deals = await client.get("/crm/api/deals", headers=headers)
            statuses.append(deals.status_code)
        assert statuses == [200, 500, 200, 500]
        stats = (await client.get("/_control/stats")).json()
        assert stats["failed"] == 2
        assert stats["requests"]["crm.deals"] == 4 and stats["records_served"]["crm.deals"] == 200


@pytest.mark.asyncio
async def test_fail_every_one_fails_every_matching_call() -> None:
    app = create_sandbox_app(SandboxOptions(fail_every=1, fail_match="bank"))
    async with client_for(app) as client:
        for _ in range(3):
            assert (await client.get("/bank/api/accounts", auth=BANK)).status_code == 500
            assert (await client.get("/accounting/api/me", headers=KEY)).status_code == 200


@pytest.mark.asyncio
async def test_latency_knob() -> None:
    async with client_for(create_sandbox_app(SandboxOptions(latency_ms=60))) as client:
        started = time.perf_counter()
        assert (await client.get("/accounting/api/me", headers=KEY)).status_code == 200
        assert time.perf_counter() - started >= 0.06


@pytest.mark.asyncio
async def test_serving_a_full_page_is_fast(crm: httpx.AsyncClient) -> None:
    headers = bearer(await tokens(crm))
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        response = await crm.get("/crm/api/contacts", params={"limit": 500}, headers=headers)
        timings.append(time.perf_counter() - started)
        assert len(response.json()["results"]) == 500
    assert sorted(timings)[2] < 0.05  # generous for slow CI; typically ~3 ms


# -- provider credentials, revoke/restore --------------------------------------


@pytest.mark.asyncio
async def test_accounting_and_bank_credentials() -> None:
    async with client_for(create_sandbox_app()) as client:
        assert (await client.get("/accounting/api/me", headers=KEY)).json() == {
            "company": "Sandbox Accounting BV",
            "user": "api",
        }
        bad_key = await client.get("/accounting/api/me", headers={"X-API-Key": "nope"})
        assert bad_key.status_code == 401 and bad_key.json()["error"] == "invalid_api_key"
        accounts = await client.get("/bank/api/accounts", auth=BANK)
        assert accounts.json()["accounts"][0]["iban"] == "NL00SAND0000000001"
        bad_login = await client.get("/bank/api/accounts", auth=("sandbox", "wrong"))
        assert bad_login.status_code == 401 and bad_login.json()["error"] == "invalid_credentials"


@pytest.mark.asyncio
async def test_revoke_and_restore_each_provider() -> None:
    async with client_for(create_sandbox_app()) as client:
        token = await tokens(client)
        calls = {
            "crm": lambda: client.get("/crm/api/me", headers=bearer(token)),
            "accounting": lambda: client.get("/accounting/api/me", headers=KEY),
            "bank": lambda: client.get("/bank/api/accounts", auth=BANK),
        }
        for provider, call in calls.items():
            assert (await call()).status_code == 200
            revoked = await client.post("/_control/revoke", json={"provider": provider})
            assert revoked.status_code == 200
            assert (await call()).status_code == 401
            others = [p for p in calls if p != provider]
            for other in others:
                assert (await calls[other]()).status_code == 200
            if provider == "crm":
                refused = await refresh(client, token["refresh_token"])
                assert refused.json()["error"] == "invalid_grant"
            await client.post("/_control/restore", json={"provider": provider})
            assert (await call()).status_code == 200
        rotated = await refresh(client, token["refresh_token"])
        assert rotated.status_code == 200


# -- bank refresh page ---------------------------------------------------------


@pytest.mark.asyncio
async def test_bank_refresh_adds_exactly_ten_transactions() -> None:
    async with client_for(create_sandbox_app()) as client:
        before = await all_transactions(client, per_page=500)
        page = await client.get("/bank/refresh")
        facts = scrape(page.text)
        assert page.status_code == 200 and facts.html_lang == "en" and facts.h1 == "Sandbox Bank"
        assert facts.scripts == 0 and facts.external == [] and not facts.status_text
        (form,) = facts.forms
        assert form["method"] == "post" and [b["text"] for b in form["buttons"]] == ["Refresh"]

        hidden = {i["name"]: i["value"] for i in form["inputs"] if i.get("type") == "hidden"}
        done = await client.post(form["action"], data=hidden)
        assert done.status_code == 200
        assert scrape(done.text).status_text == "10 new transactions imported."
        after = await all_transactions(client, per_page=500)
        assert len(after) == 210
        new = after[200:]
        assert [t["id"] for t in new] == [f"t_{i:04d}" for i in range(201, 211)]
        assert min(t["updated_at"] for t in new) > max(t["updated_at"] for t in before)
        incremental = await all_transactions(client, updated_after=before[-1]["updated_at"])
        assert incremental == new


# -- controls ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_stats_count_requests_and_records() -> None:
    async with client_for(create_sandbox_app()) as client:
        headers = bearer(await tokens(client))
        await all_contacts(client, headers, limit=500)
        await client.get("/crm/api/me", headers=headers)
        await client.get("/crm/api/contacts")  # unauthenticated: counted, serves nothing
        await all_transactions(client, per_page=150)
        stats = (await client.get("/_control/stats")).json()
        assert stats["requests"]["crm.contacts"] == 4 and stats["records_served"]["crm.contacts"] == 1250
        assert stats["requests"]["crm.me"] == 1
        assert stats["requests"]["bank.transactions"] == 2
        assert stats["records_served"]["bank.transactions"] == 200
        assert stats["requests"]["crm.deals"] == 0
        assert (stats["rate_limited"], stats["failed"]) == (0, 0)
        reset = await client.post("/_control/reset-stats")
        assert reset.status_code == 204
        cleared = (await client.get("/_control/stats")).json()
        assert set(cleared["requests"].values()) == {0} and set(cleared["records_served"].values()) == {0}


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("path", "body", "code"),
    [
        ("/_control/touch", {"resource": "crm.tickets", "count": 1}, "unknown_resource"),
        ("/_control/touch", {"count": 1}, "unknown_resource"),
        ("/_control/touch", {"resource": "crm.deals", "count": 0}, "invalid_count"),
        ("/_control/touch", {"resource": "crm.deals", "count": "5"}, "invalid_count"),
        ("/_control/touch", {"resource": "crm.deals", "count": True}, "invalid_count"),
        ("/_control/touch", {"resource": "crm.deals", "count": 1.5}, "invalid_count"),
        ("/_control/revoke", {"provider": "erp"}, "unknown_provider"),
        ("/_control/restore", {}, "unknown_provider"),
        ("/_control/touch", "not json", "invalid_json"),
        ("/_control/revoke", ["crm"], "invalid_body"),
    ],
)
async def test_bad_control_input_is_400_with_code(path: str, body: Any, code: str) -> None:
    async with client_for(create_sandbox_app()) as client:
        if isinstance(body, str):
            response = await client.post(path, content=body, headers={"content-type": "application/json"})
        else:
            response = await client.post(path, json=body)
        assert response.status_code == 400
        assert response.json()["code"] == code and response.json()["detail"]


@pytest.mark.asyncio
async def test_instances_do_not_share_state_and_data_is_deterministic() -> None:
    async with client_for(create_sandbox_app()) as one, client_for(create_sandbox_app()) as two:
        await one.post("/_control/touch", json={"resource": "bank.transactions", "count": 3})
        (form,) = scrape((await one.get("/bank/refresh")).text).forms
        await one.post(
            "/bank/refresh", data={i["name"]: i["value"] for i in form["inputs"] if i.get("type") == "hidden"}
        )
        await one.post("/_control/revoke", json={"provider": "accounting"})
        assert len(await all_transactions(two, per_page=500)) == 200
        assert (await two.get("/accounting/api/me", headers=KEY)).status_code == 200
        assert (await two.get("/_control/stats")).json()["requests"]["bank.transactions"] == 1
        fresh = create_sandbox_app()
        async with client_for(fresh) as three:
            first = await three.get("/accounting/api/divisions/102/invoices", headers=KEY)
            second = await two.get("/accounting/api/divisions/102/invoices", headers=KEY)
            assert first.json() == second.json()


# -- options -------------------------------------------------------------------


def test_options_from_env() -> None:
    assert SandboxOptions.from_env({}) == SandboxOptions()
    options = SandboxOptions.from_env(
        {
            "BFF_SANDBOX_429_EVERY": "5",
            "BFF_SANDBOX_RETRY_AFTER": "2",
            "BFF_SANDBOX_FAIL_EVERY": "3",
            "BFF_SANDBOX_FAIL_MATCH": "contacts",
            "BFF_SANDBOX_LATENCY_MS": "25",
            "BFF_SANDBOX_COOP": "true",
        }
    )
    assert options == SandboxOptions(
        rate_limit_every=5, retry_after=2, fail_every=3, fail_match="contacts", latency_ms=25, coop=True
    )
    assert SandboxOptions.from_env({"BFF_SANDBOX_COOP": "0"}).coop is False


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BFF_SANDBOX_429_EVERY", "often"),
        ("BFF_SANDBOX_FAIL_EVERY", "-1"),
        ("BFF_SANDBOX_LATENCY_MS", "1.5"),
        ("BFF_SANDBOX_COOP", "maybe"),
        ("BFF_SANDBOX_SCALE", "0"),
    ],
)
def test_options_from_env_rejects_bad_values(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        SandboxOptions.from_env({name: value})


def test_options_are_frozen_and_validated() -> None:
    options = SandboxOptions(redirect_uris=[REDIRECT])  # type: ignore[arg-type]
    assert options.redirect_uris == (REDIRECT,)
    with pytest.raises(AttributeError):
        options.coop = True  # type: ignore[misc]
    with pytest.raises(ValueError):
        SandboxOptions(rate_limit_every=-1)
    with pytest.raises(TypeError):
        SandboxOptions(3)  # type: ignore[misc]


async def test_accounting_lists_deleted_invoices_and_entity_types(tmp_path: Any) -> None:
    """Seed 003's Exact tables on the sandbox: ``deleted`` (entitykey, division, entitytype, time),
    fed by ``_control/delete`` and by the API's DELETE, and ``entitytypes`` naming their tables."""
    clock = FakeClock(1_800_000_000.0)
    async with client_for(create_sandbox_app(clock=clock, state_dir=tmp_path)) as books:
        types = (await books.get("/accounting/api/entitytypes", headers=KEY)).json()["results"]
        assert types == [{"number": 20, "name": "Invoices"}]
        assert (await books.get("/accounting/api/divisions/101/deleted", headers=KEY)).json()["total"] == 0

        # The first 3 invoices of the resource, in its (updated_at, id) order: division 101's first three.
        deleted = (await books.post("/_control/delete", json={"resource": "accounting.invoices", "count": 3})).json()
        assert deleted == {"deleted": ["inv_101_0001", "inv_101_0002", "inv_101_0003"]}
        clock.now += 60
        assert (await books.delete("/accounting/api/invoices/inv_102_0007", headers=KEY)).status_code == 204
        assert (await books.delete("/accounting/api/invoices/inv_102_0007", headers=KEY)).status_code == 404

        listed = (await books.get("/accounting/api/divisions/101/deleted", headers=KEY)).json()
        assert listed["total"] == 3 and listed["page_count"] == 1
        assert [(r["entitykey"], r["division"], r["entitytype"]) for r in listed["results"]] == [
            ("inv_101_0001", 101, 20),
            ("inv_101_0002", 101, 20),
            ("inv_101_0003", 101, 20),
        ]
        stamps = [r["deleted_at"] for r in listed["results"]]
        assert stamps == sorted(set(stamps)) and stamps[0] == "2027-01-15T08:00:00Z"
        other = (await books.get("/accounting/api/divisions/102/deleted", headers=KEY)).json()["results"]
        assert [(r["entitykey"], r["deleted_at"]) for r in other] == [("inv_102_0007", "2027-01-15T08:01:00Z")]
        assert (await books.get("/accounting/api/divisions/103/deleted", headers=KEY)).json()["results"] == []
        # Incremental, exclusive, like updated_after; paged like the invoices.
        later = await books.get(
            "/accounting/api/divisions/101/deleted", params={"deleted_after": stamps[0], "page_size": 1}, headers=KEY
        )
        assert [r["entitykey"] for r in later.json()["results"]] == ["inv_101_0002"] and later.json()["total"] == 2
        gone = (
            await books.get("/accounting/api/divisions/101/invoices", params={"page_size": 500}, headers=KEY)
        ).json()
        assert gone["total"] == 497 and "inv_101_0001" not in {r["id"] for r in gone["results"]}
        assert (await books.get("/accounting/api/divisions/999/deleted", headers=KEY)).status_code == 404
        assert (await books.get("/accounting/api/entitytypes")).status_code == 401
        bad = await books.get("/accounting/api/divisions/101/deleted", params={"deleted_after": "x"}, headers=KEY)
        assert bad.status_code == 400

    # Kept across a restart on the same data directory.
    async with client_for(create_sandbox_app(clock=clock, state_dir=tmp_path)) as books:
        again = (await books.get("/accounting/api/divisions/101/deleted", headers=KEY)).json()["results"]
        assert [r["deleted_at"] for r in again] == stamps
        assert (await books.get("/accounting/api/invoices/inv_101_0001", headers=KEY)).status_code == 404
