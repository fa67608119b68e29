"""Connector definitions and the engine, against MockTransport providers.

The sandbox half fakes docs/sandbox-api.md with small fixtures and a low page
cap (the server answers at most 3 rows whatever `limit` we ask), so every
paging kind runs over several pages. The real-connector half fakes each
provider exactly as its public documentation shows it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import random
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from bff.connectors import (
    ConfigRequired,
    ConnectorSession,
    CredentialsRejected,
    OAuthClient,
    OAuthError,
    OAuthTokens,
    ProviderError,
    RetriesExhausted,
    RetryPolicy,
    build_authorize_url,
    exchange_code,
    load_connectors,
    new_pkce_pair,
    refresh_tokens,
)
from bff.connectors.definitions import DEFINITIONS_DIR, LOGO_DIR, parse_connector

SANDBOX = "http://bff.test/sandbox"
CONTEXT = {"sandbox": SANDBOX}
T0 = datetime(2026, 1, 1, tzinfo=UTC)
CRM_CLIENT = OAuthClient(
    client_id="bff-sandbox", client_secret="bff-sandbox-secret", redirect_uri="http://bff.test/oauth/callback"
)


def ts(minutes: int) -> str:
    return (T0 + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")


def q(request: httpx.Request) -> dict[str, str]:
    return dict(request.url.params)


def form(request: httpx.Request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(request.content.decode(), keep_blank_values=True).items()}


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Recorder:
    """Fake sleep (records delays, never sleeps) and log sink."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self.logs: list[tuple[str, str]] = []

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)

    def log(self, level: str, message: str) -> None:
        self.logs.append((level, message))


# =========================================================================== fake sandbox


class FakeSandbox:
    """The docs/sandbox-api.md wire contract, with small fixtures and a page cap."""

    def __init__(
        self, *, contacts: int = 7, deals: int = 5, invoices: int = 4, transactions: int = 6, page_cap: int = 3
    ) -> None:
        self.page_cap = page_cap
        self.contacts = [
            {
                "id": f"c_{i:04d}",
                "email": f"p{i}@example.test",
                "first_name": f"First{i}",
                "last_name": f"Last{i}",
                "company": "Acme",
                "created_at": ts(i),
                "updated_at": ts(i),
            }
            for i in range(1, contacts + 1)
        ]
        self.deals = [
            {
                "id": f"d_{i:03d}",
                "name": f"Deal {i}",
                "amount": 1000 + i,
                "stage": "won",
                "contact_id": "c_0001",
                "created_at": ts(i),
                "updated_at": ts(i),
            }
            for i in range(1, deals + 1)
        ]
        self.divisions = [
            {"code": 101, "name": "Acme Holding"},
            {"code": 102, "name": "Acme Retail"},
            {"code": 103, "name": "Acme Services"},
        ]
        self.invoices = {
            d["code"]: [
                {
                    "id": f"inv_{d['code']}_{i:04d}",
                    "division": d["code"],
                    "number": f"{d['code']}-{i}",
                    "customer": "Cust",
                    "amount": 100.5 + i,
                    "currency": "EUR",
                    "status": "open",
                    "issued_on": "2026-01-02",
                    "updated_at": ts(i),
                }
                for i in range(1, invoices + 1)
            ]
            for d in self.divisions
        }
        self.transactions = [
            {
                "id": f"t_{i:04d}",
                "account_id": "acc_1",
                "amount": -10.0 * i,
                "currency": "EUR",
                "description": f"Payment {i}",
                "made_on": "2026-01-03",
                "updated_at": ts(i),
            }
            for i in range(1, transactions + 1)
        ]
        self.access_tokens: set[str] = {"at-1"}
        self.refresh_tokens: set[str] = {"rt-1"}
        self.codes: dict[str, tuple[str, str]] = {}
        self.issued = 1
        self.revoked = False
        self.api_calls: list[httpx.Request] = []
        self.token_calls: list[dict[str, str]] = []
        # data-API call number (1-based) → response (or exception) to answer instead
        self.plan: dict[int, Callable[[httpx.Request], Any]] = {}

    # -- helpers for tests
    def issue_code(self, challenge: str, redirect_uri: str = CRM_CLIENT.redirect_uri) -> str:
        code = f"code-{len(self.codes) + 1}"
        self.codes[code] = (challenge, redirect_uri)
        return code

    def touch(self, records: list[dict[str, Any]], count: int) -> list[str]:
        latest = max(r["updated_at"] for r in records)
        base = datetime.strptime(latest, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        touched = []
        for i, r in enumerate(records[:count], start=1):
            r["updated_at"] = (base + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%SZ")
            touched.append(r["id"])
        return touched

    # -- transport
    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/sandbox/crm/oauth/token":
            return self._token(request)
        if "/api/" in path:
            self.api_calls.append(request)
            planned = self.plan.get(len(self.api_calls))
            if planned is not None:
                result = planned(request)
                if isinstance(result, Exception):
                    raise result
                return result
        if path.startswith("/sandbox/crm/api/"):
            return self._crm(request, path.removeprefix("/sandbox/crm/api"))
        if path.startswith("/sandbox/accounting/api/"):
            return self._accounting(request, path.removeprefix("/sandbox/accounting/api"))
        if path.startswith("/sandbox/bank/api/"):
            return self._bank(request, path.removeprefix("/sandbox/bank/api"))
        return httpx.Response(404, json={"error": "not_found"})

    def _token(self, request: httpx.Request) -> httpx.Response:
        data = form(request)
        self.token_calls.append(data)
        client_id, secret = data.get("client_id"), data.get("client_secret")
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            client_id, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
        if (client_id, secret) != ("bff-sandbox", "bff-sandbox-secret"):
            return httpx.Response(400, json={"error": "invalid_client", "error_description": "unknown client"})
        grant = data.get("grant_type")
        if grant == "authorization_code":
            entry = self.codes.pop(data.get("code", ""), None)
            if entry is None:
                return httpx.Response(400, json={"error": "invalid_grant", "error_description": "code unknown or used"})
            challenge, redirect_uri = entry
            verifier = data.get("code_verifier", "")
            expected = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            if expected != challenge or redirect_uri != data.get("redirect_uri"):
                return httpx.Response(
                    400, json={"error": "invalid_grant", "error_description": "PKCE or redirect_uri mismatch"}
                )
        elif grant == "refresh_token":
            rt = data.get("refresh_token", "")
            if self.revoked or rt not in self.refresh_tokens:
                return httpx.Response(
                    400, json={"error": "invalid_grant", "error_description": "refresh token revoked"}
                )
            self.refresh_tokens.discard(rt)  # rotation
        else:
            return httpx.Response(400, json={"error": "unsupported_grant_type"})
        self.issued += 1
        at, rt = f"at-{self.issued}", f"rt-{self.issued}"
        self.access_tokens.add(at)
        self.refresh_tokens.add(rt)
        return httpx.Response(
            200,
            json={
                "access_token": at,
                "refresh_token": rt,
                "token_type": "Bearer",
                "expires_in": 3600,
                "scope": "contacts.read deals.read",
            },
        )

    def _filtered(self, request: httpx.Request, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        after = request.url.params.get("updated_after")
        rows = sorted(records, key=lambda r: (r["updated_at"], r["id"]))
        return [r for r in rows if after is None or r["updated_at"] > after]

    def _size(self, request: httpx.Request, name: str, default: int = 100) -> int:
        return min(int(request.url.params.get(name, default)), 500, self.page_cap)

    def _crm(self, request: httpx.Request, path: str) -> httpx.Response:
        auth = request.headers.get("Authorization", "")
        if self.revoked or not auth.startswith("Bearer ") or auth[7:] not in self.access_tokens:
            return httpx.Response(401, json={"error": "invalid_token"})
        if path == "/me":
            return httpx.Response(
                200, json={"id": "user_1", "email": "owner@sandbox-crm.test", "portal": "Sandbox CRM"}
            )
        if path == "/contacts":
            rows = self._filtered(request, self.contacts)
            limit = self._size(request, "limit")
            after = request.url.params.get("after")
            start = int(base64.b64decode(after).decode()) if after else 0
            body: dict[str, Any] = {"results": rows[start : start + limit]}
            if start + limit < len(rows):
                body["paging"] = {"next": {"after": base64.b64encode(str(start + limit).encode()).decode()}}
            return httpx.Response(200, json=body)
        if path == "/deals":
            rows = self._filtered(request, self.deals)
            limit = self._size(request, "limit")
            offset = int(request.url.params.get("offset", 0))
            page = rows[offset : offset + limit]
            return httpx.Response(
                200,
                json={
                    "results": page,
                    "total": len(rows),
                    "offset": offset,
                    "limit": limit,
                    "has_more": offset + len(page) < len(rows),
                },
            )
        return httpx.Response(404, json={"error": "not_found"})

    def _accounting(self, request: httpx.Request, path: str) -> httpx.Response:
        if self.revoked or request.headers.get("X-API-Key") != "sandbox-valid-key":
            return httpx.Response(401, json={"error": "invalid_api_key"})
        if path == "/me":
            return httpx.Response(200, json={"company": "Sandbox Accounting BV", "user": "api"})
        if path == "/divisions":
            return httpx.Response(200, json={"divisions": self.divisions})
        parts = path.strip("/").split("/")
        if len(parts) == 3 and parts[0] == "divisions" and parts[2] == "invoices":
            code = int(parts[1]) if parts[1].isdigit() else None
            if code not in self.invoices:
                return httpx.Response(404, json={"error": "unknown_division"})
            rows = self._filtered(request, self.invoices[code])
            size = self._size(request, "page_size")
            page = int(request.url.params.get("page", 1))
            return httpx.Response(
                200,
                json={
                    "results": rows[(page - 1) * size : page * size],
                    "page": page,
                    "page_size": size,
                    "page_count": math.ceil(len(rows) / size),
                    "total": len(rows),
                },
            )
        return httpx.Response(404, json={"error": "not_found"})

    def _bank(self, request: httpx.Request, path: str) -> httpx.Response:
        auth = request.headers.get("Authorization", "")
        if self.revoked or auth != "Basic " + base64.b64encode(b"sandbox:sandbox").decode():
            return httpx.Response(401, json={"error": "invalid_credentials"})
        if path == "/accounts":
            return httpx.Response(
                200,
                json={
                    "accounts": [
                        {"id": "acc_1", "name": "Current account", "iban": "NL00SAND0000000001", "currency": "EUR"}
                    ]
                },
            )
        if path == "/transactions":
            rows = self._filtered(request, self.transactions)
            size = self._size(request, "per_page")
            page = int(request.url.params.get("page", 1))
            headers = {}
            if page * size < len(rows):
                headers["Link"] = f'<{request.url.copy_set_param("page", str(page + 1))}>; rel="next"'
            return httpx.Response(200, json=rows[(page - 1) * size : page * size], headers=headers)
        return httpx.Response(404, json={"error": "not_found"})


@pytest.fixture
def connectors():
    return load_connectors()


@pytest.fixture
def sandbox() -> FakeSandbox:
    return FakeSandbox()


@pytest.fixture
async def http(sandbox: FakeSandbox):
    async with httpx.AsyncClient(transport=httpx.MockTransport(sandbox.handler)) as client:
        yield client


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


def session(connectors, name, http, rec, **kw) -> ConnectorSession:
    defaults: dict[str, Any] = {"credentials": {}, "config": {}, "context": CONTEXT, "sleep": rec.sleep, "log": rec.log}
    defaults.update(kw)
    return ConnectorSession(connectors[name], http=http, **defaults)


async def collect(sess: ConnectorSession, stream: str, state=None):
    return [page async for page in sess.read(stream, state)]


def crm_tokens(clock: Clock, access: str = "at-1", refresh: str | None = "rt-1", ttl: float = 3600) -> OAuthTokens:
    return OAuthTokens(access_token=access, refresh_token=refresh, expires_at=clock() + ttl, scope="contacts.read")


# =========================================================================== definitions


async def test_definitions_load_and_validate(connectors):
    assert set(connectors) == {
        "sandbox_crm",
        "sandbox_accounting",
        "sandbox_bank",
        "hubspot",
        "pipedrive",
        "exact_online",
        "stripe",
        "slack",
        "sandbox_chat",
    }
    ids = [c.id for c in connectors.values()]
    assert len(set(ids)) == len(ids)
    assert load_connectors() == connectors  # cached and stable
    for c in connectors.values():
        assert (LOGO_DIR / c.logo).is_file()
        assert c.docs, f"{c.name} should cite the docs it was shaped from"
        svg = (LOGO_DIR / c.logo).read_text()
        assert svg.startswith("<svg") and "<rect" in svg and "rx=" in svg

    crm, acc, bank = connectors["sandbox_crm"], connectors["sandbox_accounting"], connectors["sandbox_bank"]
    assert (crm.display_name, crm.auth_type, crm.oauth.pkce) == ("Sandbox CRM", "oauth2", True)
    assert crm.stream_names == ("contacts", "deals")
    assert (acc.display_name, acc.auth_type) == ("Sandbox Accounting", "api_key")
    assert [(f.name, f.label, f.secret) for f in acc.connect_form] == [("api_key", "API key", True)]
    assert acc.config_select.field == "divisions" and acc.config_select.multiple and acc.partition_by == "divisions"
    assert (bank.display_name, bank.auth_type) == ("Sandbox Bank", "basic")
    assert [(f.name, f.label) for f in bank.connect_form] == [("login", "Login"), ("password", "Password")]
    assert bank.manual_refresh_url(CONTEXT) == "http://bff.test/sandbox/bank/refresh"
    for c in (crm, acc, bank):  # the largest page size the sandbox allows
        assert all(s.paging.limit == 500 for s in c.streams if s.paging.kind != "none")


async def test_public_dict_is_the_servertypes_shape_without_secrets(connectors):
    item = connectors["sandbox_accounting"].public_dict("https://bff.test/embed/v1/logos/")
    assert item["id"] == 2 and item["name"] == "sandbox_accounting" and item["display_name"] == "Sandbox Accounting"
    assert item["category"] == "accounting" and item["auth_type"] == "api_key"
    assert item["logo_url"] == "https://bff.test/embed/v1/logos/sandbox_accounting.svg"
    assert item["connect_form"]["fields"] == [
        {
            "name": "api_key",
            "label": "API key",
            "type": "password",
            "required": True,
            "secret": True,
            "help": "Use sandbox-valid-key; any other key is rejected.",
            "options": [],
        }
    ]
    assert "config_select" in item["capabilities"]
    for c in connectors.values():
        text = json.dumps(c.public_dict("/logos"))
        for needle in ("token_url", "authorize_url", "client_secret", "base_url", "X-API-Key"):
            assert needle not in text


def _write_variant(tmp_path: Path, name: str, mutate: Callable[[dict], None]) -> Path:
    shutil.copytree(DEFINITIONS_DIR / "logos", tmp_path / "logos")
    data = json.loads((DEFINITIONS_DIR / f"{name}.json").read_text())
    mutate(data)
    (tmp_path / f"{name}.json").write_text(json.dumps(data))
    return tmp_path


@pytest.mark.parametrize(
    ("mutate", "field", "words"),
    [
        (lambda d: d["streams"][0]["paging"].update(kind="pages"), "streams[0].paging.kind", "must be one of"),
        (lambda d: d["streams"][0].update(incremantal={}), "streams[0].incremantal", "not a known field"),
        (lambda d: d["streams"][0].update(primary_key=["nope"]), "streams[0].primary_key", "not a declared field"),
        (lambda d: d.pop("display_name"), "display_name", "is required"),
        (lambda d: d["streams"][0]["fields"][1].update(type="money"), "streams[0].fields[1].type", "must be one of"),
        (lambda d: d.update(base_url="{sandbx}/bank/api"), "base_url", "unknown placeholder"),
        (lambda d: d["auth"].update(password_field="pin"), "auth", "not in connect_form"),
    ],
)
async def test_broken_definition_names_file_and_field(tmp_path, mutate, field, words):
    directory = _write_variant(tmp_path, "sandbox_bank", mutate)
    with pytest.raises(ValueError) as info:
        load_connectors(directory)
    message = str(info.value)
    assert "sandbox_bank.json" in message
    assert f"'{field}'" in message
    assert words in message


async def test_broken_json_and_partition_misuse(tmp_path):
    (tmp_path / "logos").mkdir()
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"x\.json: not valid JSON"):
        load_connectors(tmp_path)
    data = json.loads((DEFINITIONS_DIR / "sandbox_accounting.json").read_text())
    data.pop("partition_by")
    with pytest.raises(ValueError, match=r"'streams\[0\]\.path' uses \{partition\}"):
        parse_connector(data, "sandbox_accounting.json")


# =========================================================================== OAuth helpers


async def test_pkce_pair_is_s256_of_the_verifier():
    verifier, challenge = new_pkce_pair()
    assert 43 <= len(verifier) <= 128
    assert set(verifier) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
    expected = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()
    assert challenge == expected and "=" not in challenge
    assert new_pkce_pair()[0] != verifier


async def test_authorize_url_has_every_required_parameter(connectors):
    verifier, challenge = new_pkce_pair()
    url = build_authorize_url(
        connectors["sandbox_crm"], client=CRM_CLIENT, state="st-123", code_challenge=challenge, context=CONTEXT
    )
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == "http://bff.test/sandbox/crm/oauth/authorize"
    params = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert params == {
        "response_type": "code",
        "client_id": "bff-sandbox",
        "redirect_uri": "http://bff.test/oauth/callback",
        "state": "st-123",
        "scope": "contacts.read deals.read",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    assert "scope=contacts.read%20deals.read" in url  # %20, not '+'
    assert "bff-sandbox-secret" not in url
    with pytest.raises(ValueError, match="PKCE"):
        build_authorize_url(
            connectors["sandbox_crm"], client=CRM_CLIENT, state="s", code_challenge=None, context=CONTEXT
        )


async def test_exchange_code_with_pkce(connectors, sandbox, http):
    clock = Clock()
    verifier, challenge = new_pkce_pair()
    code = sandbox.issue_code(challenge)
    tokens = await exchange_code(
        connectors["sandbox_crm"],
        http=http,
        client=CRM_CLIENT,
        code=code,
        code_verifier=verifier,
        context=CONTEXT,
        clock=clock,
    )
    assert tokens.access_token in sandbox.access_tokens and tokens.refresh_token in sandbox.refresh_tokens
    assert tokens.expires_at == clock() + 3600 and tokens.scope == "contacts.read deals.read"
    sent = sandbox.token_calls[-1]
    assert sent == {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": CRM_CLIENT.redirect_uri,
        "code_verifier": verifier,
        "client_id": "bff-sandbox",
        "client_secret": "bff-sandbox-secret",
    }
    # a reused code (or a wrong verifier) is invalid_grant → CredentialsRejected, without secrets in the text
    with pytest.raises(CredentialsRejected) as info:
        await exchange_code(
            connectors["sandbox_crm"], http=http, client=CRM_CLIENT, code=code, code_verifier=verifier, context=CONTEXT
        )
    assert "invalid_grant" in str(info.value) and verifier not in str(info.value)
    code2 = sandbox.issue_code(challenge)
    with pytest.raises(CredentialsRejected):
        await exchange_code(
            connectors["sandbox_crm"], http=http, client=CRM_CLIENT, code=code2, code_verifier="x" * 50, context=CONTEXT
        )
    bad_client = OAuthClient("bff-sandbox", "wrong-secret", CRM_CLIENT.redirect_uri)
    with pytest.raises(OAuthError) as info:
        await exchange_code(
            connectors["sandbox_crm"],
            http=http,
            client=bad_client,
            code=sandbox.issue_code(challenge),
            code_verifier=verifier,
            context=CONTEXT,
        )
    assert "invalid_client" in str(info.value) and "wrong-secret" not in str(info.value)


async def test_refresh_tokens_rotates(connectors, sandbox, http):
    new = await refresh_tokens(
        connectors["sandbox_crm"], http=http, client=CRM_CLIENT, refresh_token="rt-1", context=CONTEXT
    )
    assert new.refresh_token != "rt-1" and "rt-1" not in sandbox.refresh_tokens
    with pytest.raises(CredentialsRejected):
        await refresh_tokens(
            connectors["sandbox_crm"], http=http, client=CRM_CLIENT, refresh_token="rt-1", context=CONTEXT
        )


async def test_token_and_client_reprs_mask_secrets():
    tokens = OAuthTokens("at-secret", "rt-secret", 123.0, "s", {"team_id": "T1"})
    assert "at-secret" not in repr(tokens) and "rt-secret" not in repr(tokens)
    assert OAuthTokens.from_dict(json.loads(json.dumps(tokens.to_dict()))) == tokens
    assert "bff-sandbox-secret" not in repr(CRM_CLIENT) and "bff-sandbox" in repr(CRM_CLIENT)


# =========================================================================== sandbox CRM


async def test_crm_contacts_cursor_paging_and_incremental_state(connectors, sandbox, http, rec):
    clock = Clock()
    sess = session(connectors, "sandbox_crm", http, rec, oauth_client=CRM_CLIENT, tokens=crm_tokens(clock), clock=clock)
    await sess.test()
    sandbox.api_calls.clear()
    pages = await collect(sess, "contacts")
    assert [len(p.records) for p in pages] == [3, 3, 1]
    ids = [r["id"] for p in pages for r in p.records]
    assert ids == [f"c_{i:04d}" for i in range(1, 8)]  # every record once, in order
    assert pages[0].records[0] == {
        "id": "c_0001",
        "email": "p1@example.test",
        "first_name": "First1",
        "last_name": "Last1",
        "company": "Acme",
        "created_at": ts(1),
        "updated_at": ts(1),
    }
    # the state after each page is the highest updated_at delivered so far
    assert [p.state for p in pages] == [{"cursor": ts(3)}, {"cursor": ts(6)}, {"cursor": ts(7)}]
    assert all(p.partition is None and p.stream == "contacts" for p in pages)
    first, second = sandbox.api_calls[0], sandbox.api_calls[1]
    assert q(first) == {"limit": "500"}
    assert q(second)["after"] and "updated_after" not in q(second)
    assert first.headers["Authorization"] == "Bearer at-1"

    # incremental: only records changed after the saved cursor, sent as updated_after
    touched = sandbox.touch(sandbox.contacts, 2)
    sandbox.api_calls.clear()
    pages = await collect(sess, "contacts", pages[-1].state)
    assert [r["id"] for p in pages for r in p.records] == touched
    assert q(sandbox.api_calls[0]) == {"limit": "500", "updated_after": ts(7)}
    assert pages[-1].state["cursor"] > ts(7)
    # nothing new: one empty page, state unchanged
    again = await collect(sess, "contacts", pages[-1].state)
    assert [len(p.records) for p in again] == [0] and again[0].state == pages[-1].state


async def test_crm_deals_offset_paging_ends_without_duplicates(connectors, sandbox, http, rec):
    clock = Clock()
    sess = session(connectors, "sandbox_crm", http, rec, oauth_client=CRM_CLIENT, tokens=crm_tokens(clock), clock=clock)
    pages = await collect(sess, "deals")
    assert [r["id"] for p in pages for r in p.records] == [f"d_{i:03d}" for i in range(1, 6)]
    assert [q(r)["offset"] for r in sandbox.api_calls] == ["0", "3"]
    assert pages[0].records[0]["amount"] == 1001
    assert pages[-1].state == {"cursor": ts(5)}


async def test_crm_401_refreshes_once_and_retries(connectors, sandbox, http, rec):
    clock = Clock()
    seen: list[OAuthTokens] = []

    async def on_tokens(tokens: OAuthTokens) -> None:
        seen.append(tokens)

    stale = crm_tokens(clock, access="at-stale")  # not expired by the clock, but unknown to the provider
    sess = session(
        connectors, "sandbox_crm", http, rec, oauth_client=CRM_CLIENT, tokens=stale, on_tokens=on_tokens, clock=clock
    )
    pages = await collect(sess, "deals")
    assert sum(len(p.records) for p in pages) == 5
    assert len(sandbox.token_calls) == 1 and sandbox.token_calls[0]["grant_type"] == "refresh_token"
    assert len(seen) == 1 and sess.tokens == seen[0] and seen[0].access_token in sandbox.access_tokens
    assert [c.headers["Authorization"] for c in sandbox.api_calls[:2]] == [
        "Bearer at-stale",
        f"Bearer {seen[0].access_token}",
    ]


async def test_crm_401_after_refresh_is_credentials_rejected(connectors, sandbox, http, rec):
    clock = Clock()
    sess = session(
        connectors,
        "sandbox_crm",
        http,
        rec,
        oauth_client=CRM_CLIENT,
        tokens=crm_tokens(clock, access="at-stale"),
        clock=clock,
    )
    sandbox.access_tokens.clear()  # the API rejects every token, even fresh ones
    original = sandbox._token

    def token_without_activation(request):
        response = original(request)
        sandbox.access_tokens.clear()
        return response

    sandbox._token = token_without_activation  # type: ignore[method-assign]
    with pytest.raises(CredentialsRejected) as info:
        await sess.test()
    assert len(sandbox.token_calls) == 1  # exactly one refresh
    assert len(sandbox.api_calls) == 2  # the call and its single repeat
    assert "reconnect" in str(info.value) and "at-" not in str(info.value)


async def test_crm_revoked_refresh_token_is_credentials_rejected(connectors, sandbox, http, rec):
    clock = Clock()
    sandbox.revoked = True
    sess = session(connectors, "sandbox_crm", http, rec, oauth_client=CRM_CLIENT, tokens=crm_tokens(clock), clock=clock)
    with pytest.raises(CredentialsRejected) as info:
        await collect(sess, "contacts")
    assert "no longer accepts this authorisation" in str(info.value)
    assert "rt-1" not in str(info.value)


async def test_expired_token_is_refreshed_proactively_once(connectors, sandbox, http, rec):
    clock = Clock()
    seen: list[OAuthTokens] = []

    async def on_tokens(tokens: OAuthTokens) -> None:
        seen.append(tokens)

    # expires in 30 s: inside the 60 s margin, so it is refreshed before any API call
    sess = session(
        connectors,
        "sandbox_crm",
        http,
        rec,
        oauth_client=CRM_CLIENT,
        tokens=crm_tokens(clock, ttl=30),
        on_tokens=on_tokens,
        clock=clock,
    )
    contacts, deals = await asyncio.gather(collect(sess, "contacts"), collect(sess, "deals"))
    assert sum(len(p.records) for p in contacts) == 7 and sum(len(p.records) for p in deals) == 5
    assert len(sandbox.token_calls) == 1 and len(seen) == 1  # serialised by the session's lock
    assert all(r.headers["Authorization"] == f"Bearer {seen[0].access_token}" for r in sandbox.api_calls)
    assert seen[0].expires_at == clock() + 3600
    # time passes: the next call refreshes again, with the rotated refresh token
    clock.now += 3600
    await sess.test()
    assert len(seen) == 2 and sandbox.token_calls[-1]["refresh_token"] == seen[0].refresh_token


async def test_429_with_retry_after_is_retried(connectors, sandbox, http, rec):
    clock = Clock()
    sandbox.plan[2] = lambda r: httpx.Response(429, headers={"Retry-After": "2"}, json={"error": "rate_limited"})
    sandbox.plan[3] = lambda r: httpx.Response(429, headers={"Retry-After": "Thu, 01 Jan 2026 00:00:05 GMT"})
    clock.now = T0.timestamp()  # the HTTP-date is 5 s after the fake now
    sess = session(connectors, "sandbox_crm", http, rec, oauth_client=CRM_CLIENT, tokens=crm_tokens(clock), clock=clock)
    pages = await collect(sess, "contacts")
    assert [r["id"] for p in pages for r in p.records] == [f"c_{i:04d}" for i in range(1, 8)]
    assert rec.sleeps == [2.0, 5.0]
    warnings = [m for level, m in rec.logs if level == "warning"]
    assert len(warnings) == 2
    assert all(
        m.startswith("contacts: HTTP 429 (rate limited): retry") and "[GET /sandbox/crm/api/contacts]" in m
        for m in warnings
    )
    assert not any("?" in m or "at-1" in m or "after=" in m for _, m in rec.logs)


async def test_5xx_gives_up_with_the_policy_reason(connectors, sandbox, http, rec):
    fail = lambda r: httpx.Response(500, json={"error": "boom"})  # noqa: E731
    for n in range(1, 10):
        sandbox.plan[n] = fail
    sess = session(
        connectors,
        "sandbox_accounting",
        http,
        rec,
        credentials={"api_key": "sandbox-valid-key"},
        policy=RetryPolicy.default(rng=random.Random(0)),
    )
    with pytest.raises(RetriesExhausted) as info:
        await sess.test()
    assert info.value.reason == "gave up after 2 retries on server errors (HTTP 5xx) within 30 s"
    assert (
        str(info.value)
        == "Sandbox Accounting kept failing: gave up after 2 retries on server errors (HTTP 5xx) within 30 s."
    )
    assert isinstance(info.value, ProviderError) and info.value.code == "retries_exhausted"
    assert len(sandbox.api_calls) == 3 and len(rec.sleeps) == 2
    assert "sandbox-valid-key" not in str(info.value) + repr(rec.logs)


async def test_timeouts_and_connection_errors_are_retried(connectors, sandbox, http, rec):
    sandbox.plan[1] = lambda r: httpx.ReadTimeout("slow", request=r)
    sandbox.plan[2] = lambda r: httpx.RemoteProtocolError("incomplete chunked read", request=r)
    sess = session(
        connectors,
        "sandbox_bank",
        http,
        rec,
        credentials={"login": "sandbox", "password": "sandbox"},
        policy=RetryPolicy.default(rng=random.Random(1)),
    )
    await sess.test()
    assert len(sandbox.api_calls) == 3 and len(rec.sleeps) == 2
    assert "timeouts" in rec.logs[0][1] and "connection errors" in rec.logs[1][1]
    # the short mode does not retry a connection error
    sandbox.plan[4] = lambda r: httpx.ConnectError("refused", request=r)
    short = session(
        connectors,
        "sandbox_bank",
        http,
        rec,
        credentials={"login": "sandbox", "password": "sandbox"},
        policy=RetryPolicy.short(),
    )
    with pytest.raises(RetriesExhausted, match="does not retry"):
        await short.test()


# =========================================================================== sandbox accounting


async def test_accounting_key_config_options_and_partitions(connectors, sandbox, http, rec):
    bad = session(connectors, "sandbox_accounting", http, rec, credentials={"api_key": "wrong-key-123"})
    with pytest.raises(CredentialsRejected) as info:
        await bad.test()
    assert "wrong-key-123" not in str(info.value) and "rejected the credentials" in str(info.value)

    good = session(connectors, "sandbox_accounting", http, rec, credentials={"api_key": "sandbox-valid-key"})
    await good.test()
    assert await good.config_options() == [
        {"value": "101", "label": "Acme Holding"},
        {"value": "102", "label": "Acme Retail"},
        {"value": "103", "label": "Acme Services"},
    ]
    with pytest.raises(ConfigRequired, match="Choose divisions"):
        await collect(good, "invoices")

    sandbox.api_calls.clear()
    sess = session(
        connectors,
        "sandbox_accounting",
        http,
        rec,
        credentials={"api_key": "sandbox-valid-key"},
        config={"divisions": ["101", "103"]},
    )
    pages = await collect(sess, "invoices")
    assert [(p.partition, len(p.records)) for p in pages] == [("101", 3), ("101", 1), ("103", 3), ("103", 1)]
    ids = [r["id"] for p in pages for r in p.records]
    assert len(ids) == len(set(ids)) == 8
    assert [(r.url.path, q(r)) for r in sandbox.api_calls] == [
        ("/sandbox/accounting/api/divisions/101/invoices", {"page_size": "500", "page": "1"}),
        ("/sandbox/accounting/api/divisions/101/invoices", {"page_size": "500", "page": "2"}),
        ("/sandbox/accounting/api/divisions/103/invoices", {"page_size": "500", "page": "1"}),
        ("/sandbox/accounting/api/divisions/103/invoices", {"page_size": "500", "page": "2"}),
    ]
    assert all(r.headers["X-API-Key"] == "sandbox-valid-key" for r in sandbox.api_calls)
    assert pages[0].records[0]["division"] == 101 and pages[0].records[0]["amount"] == 101.5
    assert [p.state for p in pages] == [
        {"partitions": {"101": {"cursor": ts(3)}}},
        {"partitions": {"101": {"cursor": ts(4)}}},
        {"partitions": {"101": {"cursor": ts(4)}, "103": {"cursor": ts(3)}}},
        {"partitions": {"101": {"cursor": ts(4)}, "103": {"cursor": ts(4)}}},
    ]

    # resume: 101 has a cursor, 102 is new (full read); state keeps every partition
    sandbox.api_calls.clear()
    sandbox.touch(sandbox.invoices[101], 1)
    sess = session(
        connectors,
        "sandbox_accounting",
        http,
        rec,
        credentials={"api_key": "sandbox-valid-key"},
        config={"divisions": ["101", "102"]},
    )
    pages = await collect(sess, "invoices", pages[-1].state)
    assert [(p.partition, [r["id"] for r in p.records]) for p in pages] == [
        ("101", ["inv_101_0001"]),
        ("102", ["inv_102_0001", "inv_102_0002", "inv_102_0003"]),
        ("102", ["inv_102_0004"]),
    ]
    assert q(sandbox.api_calls[0])["updated_after"] == ts(4)
    assert "updated_after" not in q(sandbox.api_calls[1])
    assert set(pages[-1].state["partitions"]) == {"101", "102", "103"}


# =========================================================================== sandbox bank


async def test_bank_link_header_paging_and_incremental(connectors, sandbox, http, rec):
    bad = session(connectors, "sandbox_bank", http, rec, credentials={"login": "sandbox", "password": "nope"})
    with pytest.raises(CredentialsRejected):
        await bad.test()
    sess = session(connectors, "sandbox_bank", http, rec, credentials={"login": "sandbox", "password": "sandbox"})
    await sess.test()
    sandbox.api_calls.clear()
    pages = await collect(sess, "transactions")
    assert [r["id"] for p in pages for r in p.records] == [f"t_{i:04d}" for i in range(1, 7)]
    assert [q(r) for r in sandbox.api_calls] == [{"per_page": "500"}, {"per_page": "500", "page": "2"}]
    assert pages[-1].state == {"cursor": ts(6)}
    assert pages[0].records[1] == {
        "id": "t_0002",
        "account_id": "acc_1",
        "amount": -20.0,
        "currency": "EUR",
        "description": "Payment 2",
        "made_on": "2026-01-03",
        "updated_at": ts(2),
    }
    sandbox.transactions.append(
        {
            "id": "t_0007",
            "account_id": "acc_1",
            "amount": 5.0,
            "currency": "EUR",
            "description": "Refresh",
            "made_on": "2026-01-04",
            "updated_at": ts(100),
        }
    )
    pages = await collect(sess, "transactions", pages[-1].state)
    assert [r["id"] for p in pages for r in p.records] == ["t_0007"]


async def test_next_link_to_another_host_is_refused(connectors, rec):
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, json=[{"id": "t_1"}], headers={"Link": '<https://evil.test/steal?page=2>; rel="next"'}
        )

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        sess = session(connectors, "sandbox_bank", client, rec, credentials={"login": "sandbox", "password": "sandbox"})
        with pytest.raises(ProviderError, match="another host"):
            await collect(sess, "transactions")


def _three_bank_pages(asked: list[int], *, stall: asyncio.Event | None = None, failing: int | None = None):
    """Three linked pages of one record each; ``asked`` gets each page number as it is requested.
    ``stall``: page 2 waits for it; ``failing``: that page answers 404."""

    async def handler(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params.get("page", 1))
        asked.append(page)
        if stall is not None and page == 2:
            await stall.wait()
        if page == failing:
            return httpx.Response(404, json={"message": "gone"})
        headers = {"Link": f'<{request.url.copy_set_param("page", str(page + 1))}>; rel="next"'} if page < 3 else {}
        return httpx.Response(200, json=[{"id": f"t_{page}", "updated_at": ts(page)}], headers=headers)

    return handler


async def test_the_next_linked_page_is_asked_for_while_this_one_is_read(connectors, rec):
    """A Link header names the next page before the body is decoded: that request is already sent
    when the page reaches the reader (the provider prepares it meanwhile), one at a time, and
    never past the last page."""
    asked: list[int] = []
    async with httpx.AsyncClient(transport=httpx.MockTransport(_three_bank_pages(asked))) as client:
        sess = session(connectors, "sandbox_bank", client, rec, credentials={"login": "sandbox", "password": "sandbox"})
        seen = []
        async for page in sess.read("transactions"):
            seen.append((page.records[0]["id"], list(asked)))
    assert seen == [("t_1", [1, 2]), ("t_2", [1, 2, 3]), ("t_3", [1, 2, 3])]


async def test_a_next_page_that_fails_fails_after_the_page_before_is_read(connectors, rec):
    asked: list[int] = []
    async with httpx.AsyncClient(transport=httpx.MockTransport(_three_bank_pages(asked, failing=2))) as client:
        sess = session(connectors, "sandbox_bank", client, rec, credentials={"login": "sandbox", "password": "sandbox"})
        seen = []
        with pytest.raises(ProviderError, match="HTTP 404"):
            async for page in sess.read("transactions"):
                seen.append(page.records[0]["id"])
    assert seen == ["t_1"]


async def test_a_reader_that_stops_early_cancels_the_page_asked_for_ahead(connectors, rec):
    asked: list[int] = []
    stall = asyncio.Event()
    async with httpx.AsyncClient(transport=httpx.MockTransport(_three_bank_pages(asked, stall=stall))) as client:
        sess = session(connectors, "sandbox_bank", client, rec, credentials={"login": "sandbox", "password": "sandbox"})
        reading = sess.read("transactions")
        first = await anext(reading)
        assert first.records[0]["id"] == "t_1" and asked == [1, 2]
        pending = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
        assert pending, "page 2 is being fetched"
        await reading.aclose()
        await asyncio.sleep(0)
        assert all(t.done() for t in pending)
        assert all(t.cancelled() for t in pending)
    assert asked == [1, 2]


async def test_throughput_of_read_and_normalise(connectors, rec):
    """20,000 records through the engine (MockTransport, 500 per page) well within a second or two."""
    rows = [
        {
            "id": f"t_{i:05d}",
            "account_id": "acc_1",
            "amount": i / 10,
            "currency": "EUR",
            "description": "x",
            "made_on": "2026-01-03",
            "updated_at": ts(i),
        }
        for i in range(20_000)
    ]
    bodies = [json.dumps(rows[i : i + 500]).encode() for i in range(0, len(rows), 500)]
    async with httpx.AsyncClient(transport=httpx.MockTransport(_bank_pages(*bodies))) as client:
        sess = session(connectors, "sandbox_bank", client, rec, credentials={"login": "sandbox", "password": "sandbox"})
        started = time.perf_counter()
        count = sum([len(p.records) async for p in sess.read("transactions")])
        elapsed = time.perf_counter() - started
    assert count == 20_000
    assert elapsed < 2.0, f"{count / elapsed:.0f} records/s"


# =========================================================================== real connectors


class Provider:
    """A MockTransport handler built from (method, url-prefix) routes; records every request."""

    def __init__(self, routes: dict[tuple[str, str], Callable[[httpx.Request], httpx.Response]]) -> None:
        self.routes = routes
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        url = f"{request.url.scheme}://{request.url.host}{request.url.path}"
        handler = self.routes.get((request.method, url))
        if handler is None:
            return httpx.Response(404, json={"message": f"no route for {request.method} {url}"})
        return handler(request)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self))


REDIRECT = "https://bff.example/oauth/callback"


async def test_hubspot(connectors, rec):
    hubspot = connectors["hubspot"]
    client = OAuthClient("hs-client-id", "hs-client-secret", REDIRECT)
    verifier, challenge = new_pkce_pair()  # HubSpot documents PKCE (code_verifier on POST /oauth/v1/token)
    url = build_authorize_url(hubspot, client=client, state="s1", code_challenge=challenge, context={})
    assert url.startswith("https://app.hubspot.com/oauth/authorize?")
    params = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert params == {
        "response_type": "code",
        "client_id": "hs-client-id",
        "redirect_uri": REDIRECT,
        "state": "s1",
        "scope": "oauth crm.objects.contacts.read crm.objects.contacts.write crm.objects.deals.read",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }

    def contact(i: int) -> dict[str, Any]:
        # the documented CRM v3 object shape: id, properties{…}, createdAt, updatedAt, archived
        return {
            "id": str(i),
            "properties": {
                "email": f"c{i}@example.com",
                "firstname": f"F{i}",
                "lastname": f"L{i}",
                "company": "HubSpot Test",
                "phone": None,
                "createdate": "2024-01-01T00:00:00.000Z",
                "lastmodifieddate": "2024-02-01T00:00:00.000Z",
                "hs_object_id": str(i),
            },
            "createdAt": "2024-01-01T00:00:00.000Z",
            "updatedAt": "2024-02-01T00:00:00.000Z",
            "archived": False,
        }

    def contacts(request: httpx.Request) -> httpx.Response:
        after = request.url.params.get("after")
        if after is None:
            return httpx.Response(
                200,
                json={
                    "results": [contact(1), contact(2)],
                    "paging": {
                        "next": {"after": "3", "link": "https://api.hubapi.com/crm/v3/objects/contacts?after=3"}
                    },
                },
            )
        assert after == "3"
        return httpx.Response(200, json={"results": [contact(3)]})

    def token(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, json={"token_type": "bearer", "refresh_token": "hs-rt", "access_token": "hs-at", "expires_in": 1800}
        )

    provider = Provider(
        {
            ("POST", "https://api.hubapi.com/oauth/v1/token"): token,
            ("GET", "https://api.hubapi.com/crm/v3/objects/contacts"): contacts,
        }
    )
    clock = Clock()
    async with provider.client() as http:
        tokens = await exchange_code(
            hubspot, http=http, client=client, code="hs-code", code_verifier=verifier, context={}, clock=clock
        )
        assert (tokens.access_token, tokens.refresh_token, tokens.expires_at) == ("hs-at", "hs-rt", clock() + 1800)
        assert form(provider.requests[0]) == {
            "grant_type": "authorization_code",
            "code": "hs-code",
            "redirect_uri": REDIRECT,
            "client_id": "hs-client-id",
            "client_secret": "hs-client-secret",
            "code_verifier": verifier,
        }
        sess = session(connectors, "hubspot", http, rec, context={}, oauth_client=client, tokens=tokens, clock=clock)
        await sess.test()
        assert q(provider.requests[1]) == {"limit": "1"}
        pages = await collect(sess, "contacts")
    reads = provider.requests[2:]
    assert all(r.headers["Authorization"] == "Bearer hs-at" for r in provider.requests[1:])
    props = "email,firstname,lastname,company,phone,createdate,lastmodifieddate"
    assert [q(r) for r in reads] == [
        {"properties": props, "archived": "false", "limit": "100"},
        {"properties": props, "archived": "false", "limit": "100", "after": "3"},
    ]
    records = [r for p in pages for r in p.records]
    assert [r["id"] for r in records] == ["1", "2", "3"]
    assert records[0] == {
        "id": "1",
        "email": "c1@example.com",
        "first_name": "F1",
        "last_name": "L1",
        "company": "HubSpot Test",
        "phone": None,
        "archived": False,
        "created_at": "2024-01-01T00:00:00.000Z",
        "updated_at": "2024-02-01T00:00:00.000Z",
    }
    assert all(p.state == {} for p in pages)  # full-read stream


async def test_pipedrive(connectors, rec):
    def person(i: int) -> dict[str, Any]:
        return {
            "id": i,
            "name": f"Person {i}",
            "first_name": "Person",
            "last_name": str(i),
            "active_flag": True,
            "email": [{"label": "work", "value": f"p{i}@example.com", "primary": True}],
            "phone": [{"label": "work", "value": "12345", "primary": True}],
            "org_id": {"name": "Acme", "value": 5},
            "org_name": "Acme",
            "owner_id": {"id": 777, "name": "James Bond", "email": "jb@example.com"},
            "add_time": "2023-01-08 05:30:20",
            "update_time": "2023-02-08 05:30:20",
        }

    def persons(request: httpx.Request) -> httpx.Response:
        start = int(request.url.params["start"])
        if start == 0:  # the server caps the page below our limit and says there is more
            return httpx.Response(
                200,
                json={
                    "success": True,
                    "data": [person(1), person(2)],
                    "additional_data": {
                        "pagination": {"start": 0, "limit": 2, "more_items_in_collection": True, "next_start": 2}
                    },
                },
            )
        assert start == 2
        return httpx.Response(
            200,
            json={
                "success": True,
                "data": [person(3)],
                "additional_data": {"pagination": {"start": 2, "limit": 2, "more_items_in_collection": False}},
            },
        )

    def me(request: httpx.Request) -> httpx.Response:
        if request.headers.get("x-api-token") != "pd-token-123":
            return httpx.Response(401, json={"success": False, "error": "unauthorized access", "errorCode": 401})
        return httpx.Response(
            200,
            json={
                "success": True,
                "data": {"id": 777, "name": "James Bond", "company_id": 1, "company_domain": "acme"},
            },
        )

    provider = Provider(
        {
            ("GET", "https://acme.pipedrive.com/api/v1/users/me"): me,
            ("GET", "https://acme.pipedrive.com/api/v1/persons"): persons,
        }
    )
    async with provider.client() as http:
        bad = session(
            connectors, "pipedrive", http, rec, credentials={"company_domain": "acme", "api_token": "wrong-token-456"}
        )
        with pytest.raises(CredentialsRejected) as info:
            await bad.test()
        assert "wrong-token-456" not in str(info.value)
        sess = session(
            connectors, "pipedrive", http, rec, credentials={"company_domain": "acme", "api_token": "pd-token-123"}
        )
        await sess.test()
        pages = await collect(sess, "persons")
    reads = provider.requests[2:]
    assert [str(r.url) for r in reads] == [
        "https://acme.pipedrive.com/api/v1/persons?limit=500&start=0",
        "https://acme.pipedrive.com/api/v1/persons?limit=500&start=2",
    ]
    assert all(r.headers["x-api-token"] == "pd-token-123" and "api_token" not in str(r.url) for r in reads)
    records = [r for p in pages for r in p.records]
    assert [r["id"] for r in records] == [1, 2, 3]
    assert records[0] == {
        "id": 1,
        "name": "Person 1",
        "first_name": "Person",
        "last_name": "1",
        "email": [{"label": "work", "value": "p1@example.com", "primary": True}],
        "phone": [{"label": "work", "value": "12345", "primary": True}],
        "org_id": 5,
        "org_name": "Acme",
        "owner_id": 777,
        "active_flag": True,
        "add_time": "2023-01-08 05:30:20",
        "update_time": "2023-02-08 05:30:20",
    }


NL_FORM = {"country": "nl", "starting_year": "2020"}  # Exact Online's connect form


async def test_exact_online(connectors, rec):
    exact = connectors["exact_online"]
    client = OAuthClient("eo-client-id", "eo-client-secret", REDIRECT)
    url = build_authorize_url(exact, client=client, state="s2", code_challenge=None, context={"credentials": NL_FORM})
    assert url.startswith("https://start.exactonline.nl/api/oauth2/auth?")
    assert {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()} == {
        "response_type": "code",
        "client_id": "eo-client-id",
        "redirect_uri": REDIRECT,
        "state": "s2",
        "force_login": "0",
    }

    base = "https://start.exactonline.nl/api/v1"
    ms = lambda day: f"/Date({int(datetime(2026, 2, day, 9, 30, tzinfo=UTC).timestamp() * 1000)})/"  # noqa: E731

    def account(i: int, day: int) -> dict[str, Any]:
        return {
            "__metadata": {"uri": f"{base}/7095/crm/Accounts(guid'{i}')", "type": "Exact.Web.Api.Models.Account"},
            "ID": f"00000000-0000-0000-0000-00000000000{i}",
            "Division": 7095,
            "Code": f"{i:>18}",
            "Name": f"Account {i}",
            "Email": None,
            "Phone": None,
            "City": "Delft",
            "Country": "NL",
            "VATNumber": None,
            "Status": "C",
            "IsSupplier": False,
            "Created": ms(1),
            "Modified": ms(day),
        }

    def token(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, json={"access_token": "eo-at", "token_type": "bearer", "expires_in": "600", "refresh_token": "eo-rt"}
        )

    def me(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, json={"d": {"results": [{"__metadata": {}, "CurrentDivision": 7095, "UserName": "jan"}]}}
        )

    def divisions(request: httpx.Request) -> httpx.Response:
        if "$skiptoken" not in request.url.params:
            return httpx.Response(
                200,
                json={
                    "d": {
                        "results": [{"Code": 7095, "Description": "Main BV"}],
                        "__next": f"{base}/7095/system/Divisions?$select=Code,Description&$skiptoken=7095",
                    }
                },
            )
        return httpx.Response(200, json={"d": {"results": [{"Code": 8000, "Description": "Second BV"}]}})

    def accounts(request: httpx.Request) -> httpx.Response:
        if "$skiptoken" not in request.url.params:
            return httpx.Response(
                200,
                json={
                    "d": {
                        "results": [account(1, 5), account(2, 3)],
                        "__next": f"{base}/7095/crm/Accounts?$select=ID&$skiptoken=guid'2'",
                    }
                },
            )
        return httpx.Response(200, json={"d": {"results": [account(3, 4)]}})

    provider = Provider(
        {
            ("POST", "https://start.exactonline.nl/api/oauth2/token"): token,
            ("GET", f"{base}/current/Me"): me,
            ("GET", f"{base}/7095/system/Divisions"): divisions,
            ("GET", f"{base}/7095/crm/Accounts"): accounts,
        }
    )
    clock = Clock()
    async with provider.client() as http:
        tokens = await exchange_code(
            exact,
            http=http,
            client=client,
            code="eo-code",
            code_verifier=None,
            context={"credentials": NL_FORM},
            clock=clock,
        )
        assert tokens.expires_at == clock() + 600  # Exact sends expires_in as a string
        sess = session(
            connectors,
            "exact_online",
            http,
            rec,
            context={},
            credentials=NL_FORM,
            oauth_client=client,
            tokens=tokens,
            clock=clock,
            config={"divisions": [7095]},
        )
        await sess.test()
        assert await sess.config_options() == [
            {"value": "7095", "label": "Main BV"},
            {"value": "8000", "label": "Second BV"},
        ]
        start = len(provider.requests)
        pages = await collect(sess, "accounts")
        reads = provider.requests[start:]
        state = pages[-1].state
        provider.requests.clear()
        await collect(sess, "accounts", state)
        incremental = provider.requests[0]

    me_calls = [r for r in provider.requests if r.url.path.endswith("/Me")]
    assert not me_calls  # the current division lookup is cached per session
    assert all(
        r.headers["Accept"] == "application/json" and r.headers["Authorization"] == "Bearer eo-at" for r in reads
    )
    assert [str(r.url) for r in reads] == [
        f"{base}/7095/crm/Accounts?%24select=ID%2CDivision%2CCode%2CName%2CEmail%2CPhone%2CCity%2CCountry%2CVATNumber%2CStatus%2CIsSupplier%2CCreated%2CModified"
        "&%24filter=Modified+gt+datetime%272020-01-01T00%3A00%3A00%27",  # the starting year: the first cursor
        f"{base}/7095/crm/Accounts?$select=ID&$skiptoken=guid'2'",
    ]
    records = [r for p in pages for r in p.records]
    assert [r["id"] for r in records] == [f"00000000-0000-0000-0000-00000000000{i}" for i in (1, 2, 3)]
    assert (
        records[0]["modified"] == "2026-02-05T09:30:00"
        and records[0]["division"] == 7095
        and records[0]["is_supplier"] is False
    )
    # Exact does not promise an order: the cursor is committed only after the division's last page
    # (the first page keeps the cursor it started from: the starting year)
    assert [p.state for p in pages] == [
        {"partitions": {"7095": {"cursor": "2020-01-01T00:00:00"}}},
        {"partitions": {"7095": {"cursor": "2026-02-05T09:30:00"}}},
    ]
    assert incremental.url.params["$filter"] == "Modified gt datetime'2026-02-05T09:30:00'"


async def test_exact_online_sync_api_streams(connectors, rec):
    """Transaction lines and deleted records through Exact's Sync API, as its documentation and
    the shapes its API answers show: `Timestamp gt N` filters, up to 1,000 rows a page with the
    next page's absolute URL in d.__next, dates as /Date(ms)/, the highest Timestamp kept."""
    base = "https://start.exactonline.nl/api/v1"
    day = lambda d: f"/Date({int(datetime(2026, 3, d, 8, 0, tzinfo=UTC).timestamp() * 1000)})/"  # noqa: E731

    def line(i: int) -> dict[str, Any]:
        return {
            "__metadata": {"uri": f"{base}/7095/sync/Financial/TransactionLines(guid'{i}')"},
            "ID": f"10000000-0000-0000-0000-00000000000{i}",
            "Division": 7095,
            "Date": day(i),
            "FinancialYear": 2026,
            "FinancialPeriod": 3,
            "EntryNumber": 26000000 + i,
            "JournalCode": "70",
            "GLAccountCode": "8000",
            "GLAccountDescription": "Revenue",
            "Account": "00000000-0000-0000-0000-000000000001",
            "AccountName": "Account 1",
            "Description": f"Line {i}",
            "AmountDC": -121.5 * i,
            "Currency": "EUR",
            "InvoiceNumber": 26000 + i,
            "Type": 20,
            "Created": day(i),
            "Modified": day(i),
            "Timestamp": 1000 * i,
        }

    def lines(request: httpx.Request) -> httpx.Response:
        if "$skiptoken" not in request.url.params:
            assert request.url.params["$filter"] in ("Timestamp gt 1", "Timestamp gt 3000")
            if request.url.params["$filter"] == "Timestamp gt 3000":
                return httpx.Response(200, json={"d": {"results": [line(4)]}})
            return httpx.Response(
                200,
                json={
                    "d": {
                        "results": [line(1), line(2)],
                        "__next": f"{base}/7095/sync/Financial/TransactionLines?$skiptoken=guid'2'",
                    }
                },
            )
        return httpx.Response(200, json={"d": {"results": [line(3)]}})

    def deleted(request: httpx.Request) -> httpx.Response:
        assert request.url.params["$filter"] == "Timestamp gt 1"
        return httpx.Response(
            200,
            json={
                "d": {
                    "results": [
                        {
                            "ID": "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa",
                            "EntityKey": "10000000-0000-0000-0000-000000000002",
                            "EntityType": 1,
                            "Division": 7095,
                            "DeletedBy": "bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb",
                            "DeletedDate": day(5),
                            "Timestamp": 99999,
                        }
                    ]
                }
            },
        )

    provider = Provider(
        {
            ("GET", f"{base}/7095/sync/Financial/TransactionLines"): lines,
            ("GET", f"{base}/7095/sync/Deleted"): deleted,
        }
    )
    clock = Clock()
    async with provider.client() as http:
        sess = session(
            connectors,
            "exact_online",
            http,
            rec,
            credentials=NL_FORM,
            oauth_client=OAuthClient("eo-client-id", "eo-client-secret", REDIRECT),
            tokens=OAuthTokens(access_token="eo-at", refresh_token="eo-rt", expires_at=clock() + 600, scope=""),
            clock=clock,
            config={"divisions": [7095]},
        )
        pages = await collect(sess, "transaction_lines")
        again = await collect(sess, "transaction_lines", pages[-1].state)
        gone = await collect(sess, "deleted")
        called = len(provider.requests)
        kinds = await collect(sess, "entitytype")
    # The entity types come from the definition (Exact serves them from no endpoint): nothing is called.
    assert len(provider.requests) == called and len(kinds) == 1 and kinds[0].state == {}
    names = {r["number"]: r["name"] for r in kinds[0].records}
    assert len(names) == 14 and names[1] == "TransactionLines" and names[13] == "SalesInvoices"
    records = [r for p in pages for r in p.records]
    assert [r["entry_number"] for r in records] == [26000001, 26000002, 26000003]
    assert records[0]["date"] == "2026-03-01T08:00:00" and records[0]["amount"] == -121.5
    assert records[0]["gl_account_code"] == "8000" and records[0]["timestamp"] == 1000
    # Ordered by Timestamp: the cursor moves with every page and the next sync asks for what is newer.
    assert pages[-1].state == {"partitions": {"7095": {"cursor": 3000}}}
    assert [r["id"] for p in again for r in p.records] == ["10000000-0000-0000-0000-000000000004"]
    row = gone[0].records[0]
    assert (row["entitykey"], row["entitytype"], row["division"]) == ("10000000-0000-0000-0000-000000000002", 1, 7095)
    assert names[row["entitytype"]] == "TransactionLines"  # the seed's JOIN of deleted with entitytype
    assert row["deleted_date"] == "2026-03-05T08:00:00"
    first = provider.requests[0]
    assert first.url.params["$select"].startswith("ID,Division,Date,") and first.headers["Accept"] == "application/json"


async def test_exact_online_country_and_starting_year(connectors, rec):
    """Seed 003's connect form: the country picks Exact's host for the sign-in and every call (Belgian
    accounts live on start.exactonline.be), the starting year is where Modified-filtered reads begin;
    streams read by Timestamp (the Sync API) are not limited by it."""
    exact = connectors["exact_online"]
    form = {"country": "be", "starting_year": "2025"}
    client = OAuthClient("eo-client-id", "eo-client-secret", REDIRECT)
    url = build_authorize_url(exact, client=client, state="s", code_challenge=None, context={"credentials": form})
    assert url.startswith("https://start.exactonline.be/api/oauth2/auth?")
    base = "https://start.exactonline.be/api/v1"

    def token(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"access_token": "be-at", "expires_in": "600", "refresh_token": "be-rt"})

    def empty(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"d": {"results": []}})

    provider = Provider(
        {
            ("POST", "https://start.exactonline.be/api/oauth2/token"): token,
            ("GET", f"{base}/7095/crm/Accounts"): empty,
            ("GET", f"{base}/7095/salesinvoice/SalesInvoices"): empty,
            ("GET", f"{base}/7095/sync/Financial/TransactionLines"): empty,
        }
    )
    clock = Clock()
    async with provider.client() as http:
        tokens = await exchange_code(
            exact, http=http, client=client, code="c", code_verifier=None, context={"credentials": form}, clock=clock
        )
        expired = OAuthTokens(access_token="old", refresh_token=tokens.refresh_token, expires_at=clock() - 1, scope="")
        sess = session(
            connectors,
            "exact_online",
            http,
            rec,
            credentials=form,
            oauth_client=client,
            tokens=expired,  # refreshed first: the token URL is the Belgian one too
            clock=clock,
            config={"divisions": [7095]},
        )
        for stream in ("accounts", "sales_invoices", "transaction_lines"):
            await collect(sess, stream)
    hosts = {r.url.host for r in provider.requests}
    assert hosts == {"start.exactonline.be"} and len(provider.requests) == 5
    filters = {r.url.path.rsplit("/", 1)[1]: r.url.params.get("$filter") for r in provider.requests}
    assert filters["Accounts"] == filters["SalesInvoices"] == "Modified gt datetime'2025-01-01T00:00:00'"
    assert filters["TransactionLines"] == "Timestamp gt 1"


async def test_stripe(connectors, rec):
    def customer(i: int) -> dict[str, Any]:
        return {
            "id": f"cus_{i}",
            "object": "customer",
            "email": f"c{i}@example.com",
            "name": f"Customer {i}",
            "phone": None,
            "description": None,
            "currency": "eur",
            "balance": 0,
            "delinquent": False,
            "livemode": False,
            "metadata": {"plan": "pro"},
            "created": 1_700_000_000 + i,
        }

    def customers(request: httpx.Request) -> httpx.Response:
        after = request.url.params.get("starting_after")
        if after is None:  # newest first, as Stripe lists
            return httpx.Response(
                200,
                json={"object": "list", "url": "/v1/customers", "has_more": True, "data": [customer(3), customer(2)]},
            )
        assert after == "cus_2"
        return httpx.Response(
            200, json={"object": "list", "url": "/v1/customers", "has_more": False, "data": [customer(1)]}
        )

    def balance(request: httpx.Request) -> httpx.Response:
        if request.headers.get("Authorization") != "Bearer sk_test_abc123":
            return httpx.Response(
                401,
                json={"error": {"message": "Invalid API Key provided: sk_test_***", "type": "invalid_request_error"}},
            )
        return httpx.Response(
            200, json={"object": "balance", "available": [{"amount": 0, "currency": "eur"}], "livemode": False}
        )

    provider = Provider(
        {
            ("GET", "https://api.stripe.com/v1/balance"): balance,
            ("GET", "https://api.stripe.com/v1/customers"): customers,
        }
    )
    async with provider.client() as http:
        with pytest.raises(CredentialsRejected):
            await session(connectors, "stripe", http, rec, credentials={"secret_key": "sk_test_wrong"}).test()
        sess = session(connectors, "stripe", http, rec, credentials={"secret_key": "sk_test_abc123"})
        await sess.test()
        provider.requests.clear()
        pages = await collect(sess, "customers")
        reads = list(provider.requests)
        provider.requests.clear()
        await collect(sess, "customers", pages[-1].state)
    assert [q(r) for r in reads] == [{"limit": "100"}, {"limit": "100", "starting_after": "cus_2"}]
    assert all(r.headers["Authorization"] == "Bearer sk_test_abc123" for r in reads)
    records = [r for p in pages for r in p.records]
    assert [r["id"] for r in records] == ["cus_3", "cus_2", "cus_1"]
    # created is a datetime field: epoch seconds become an ISO time (a timestamptz column)
    assert records[0]["metadata"] == {"plan": "pro"} and records[0]["created"] == "2023-11-14T22:13:23Z"
    # newest-first lists: the cursor only moves after the last page; it is sent as unix seconds
    assert [p.state for p in pages] == [{}, {"cursor": "2023-11-14T22:13:23Z"}]
    assert q(provider.requests[0]) == {"limit": "100", "created[gt]": "1700000003"}


async def test_slack(connectors, rec):
    slack = connectors["slack"]
    client = OAuthClient("111.222", "slack-secret", REDIRECT)
    verifier, challenge = new_pkce_pair()  # Slack documents PKCE (code_verifier on oauth.v2.access)
    url = build_authorize_url(slack, client=client, state="s3", code_challenge=challenge, context={})
    assert url.startswith("https://slack.com/oauth/v2/authorize?")
    assert {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()} == {
        "response_type": "code",
        "client_id": "111.222",
        "redirect_uri": REDIRECT,
        "state": "s3",
        "scope": "channels:read,users:read,users:read.email,chat:write",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }

    def access(request: httpx.Request) -> httpx.Response:
        data = form(request)
        if data.get("code") != "good-code":
            return httpx.Response(200, json={"ok": False, "error": "invalid_code"})
        return httpx.Response(
            200,
            json={
                "ok": True,
                "access_token": "xoxb-17653672481",
                "token_type": "bot",
                "scope": "channels:read,users:read",
                "bot_user_id": "U0KRQLJ9H",
                "app_id": "A0KRD7HC3",
                "team": {"name": "Slack Softball Team", "id": "T9TK3CUKW"},
                "enterprise": None,
                "authed_user": {"id": "U1234", "scope": "", "access_token": "xoxp-1234", "token_type": "user"},
            },
        )

    def auth_test(request: httpx.Request) -> httpx.Response:
        if request.headers.get("Authorization") != "Bearer xoxb-17653672481":
            return httpx.Response(200, json={"ok": False, "error": "invalid_auth"})
        return httpx.Response(
            200,
            json={
                "ok": True,
                "url": "https://softball.slack.com/",
                "team": "Slack Softball Team",
                "user": "bot",
                "team_id": "T9TK3CUKW",
                "user_id": "U0KRQLJ9H",
            },
        )

    def channel(i: int) -> dict[str, Any]:
        return {
            "id": f"C0{i}",
            "name": f"channel-{i}",
            "is_channel": True,
            "is_private": False,
            "is_archived": False,
            "is_general": i == 1,
            "num_members": 4,
            "created": 1449252889,
            "creator": "U061F7AUR",
            "topic": {"value": "Topic", "creator": "", "last_set": 0},
            "purpose": {"value": "Purpose", "creator": "", "last_set": 0},
        }

    def conversations(request: httpx.Request) -> httpx.Response:
        cursor = request.url.params.get("cursor")
        if cursor is None:
            return httpx.Response(
                200,
                json={
                    "ok": True,
                    "channels": [channel(1), channel(2)],
                    "response_metadata": {"next_cursor": "dGVhbTpDMDYxRkE1UEI="},
                },
            )
        assert cursor == "dGVhbTpDMDYxRkE1UEI="
        return httpx.Response(
            200, json={"ok": True, "channels": [channel(3)], "response_metadata": {"next_cursor": ""}}
        )

    provider = Provider(
        {
            ("POST", "https://slack.com/api/oauth.v2.access"): access,
            ("GET", "https://slack.com/api/auth.test"): auth_test,
            ("GET", "https://slack.com/api/conversations.list"): conversations,
        }
    )
    async with provider.client() as http:
        with pytest.raises(CredentialsRejected, match="invalid_code"):
            await exchange_code(slack, http=http, client=client, code="bad", code_verifier=verifier, context={})
        tokens = await exchange_code(
            slack, http=http, client=client, code="good-code", code_verifier=verifier, context={}
        )
        exchange = provider.requests[-1]
        assert form(exchange)["code_verifier"] == verifier
        assert exchange.headers["Authorization"] == "Basic " + base64.b64encode(b"111.222:slack-secret").decode()
        assert "client_secret" not in form(exchange)
        assert tokens.access_token == "xoxb-17653672481" and tokens.refresh_token is None and tokens.expires_at is None
        assert tokens.extra["team_id"] == "T9TK3CUKW" and tokens.extra["authed_user_id"] == "U1234"
        assert "xoxp-1234" not in json.dumps(tokens.to_dict())  # the user token is not kept

        sess = session(connectors, "slack", http, rec, context={}, oauth_client=client, tokens=tokens)
        await sess.test()
        provider.requests.clear()
        pages = await collect(sess, "channels")
        reads = list(provider.requests)

        revoked = session(
            connectors,
            "slack",
            http,
            rec,
            context={},
            oauth_client=client,
            tokens=OAuthTokens("xoxb-revoked", None, None),
        )
        with pytest.raises(CredentialsRejected) as info:
            await revoked.test()
        assert "xoxb-revoked" not in str(info.value)
    assert [q(r) for r in reads] == [
        {"types": "public_channel", "exclude_archived": "false", "limit": "200"},
        {"types": "public_channel", "exclude_archived": "false", "limit": "200", "cursor": "dGVhbTpDMDYxRkE1UEI="},
    ]
    records = [r for p in pages for r in p.records]
    assert [r["id"] for r in records] == ["C01", "C02", "C03"]
    assert records[0]["topic"] == "Topic" and records[0]["is_general"] is True
    assert records[0]["created"] == "2015-12-04T18:14:49Z"


def test_cursor_comparison_numbers_by_value_strings_as_text() -> None:
    from bff.connectors.records import cursor_gt

    assert cursor_gt("2026-01-02T00:00:00Z", "2026-01-01T23:59:59Z")
    assert not cursor_gt("2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z")
    assert cursor_gt(10, 9) and cursor_gt(2.5, 2) and not cursor_gt(9, 10)
    assert not cursor_gt("10", "9")  # opaque text cursors are never parsed as numbers
    assert cursor_gt("b", 1) == ("b" > "1")


# =========================================================================== the sync's read path (issue 27)


def _bank_pages(*bodies: bytes) -> Callable[[httpx.Request], httpx.Response]:
    """A bank provider answering ``bodies`` as its pages, linked by ``Link: rel="next"``."""

    def handler(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params.get("page", 1))
        headers = {"Content-Type": "application/json"}
        if page < len(bodies):
            headers["Link"] = f'<{request.url.copy_set_param("page", str(page + 1))}>; rel="next"'
        return httpx.Response(200, content=bodies[page - 1], headers=headers)

    return handler


async def test_row_maker_gives_the_normalisers_values_in_field_order(connectors):
    """A sync reads rows (tuples) instead of dicts: for every stream of every built-in connector,
    each field's value is the one the dict normaliser gives, at the field's position."""
    from bff.connectors.records import compile_normaliser, compile_row_maker

    samples = ["12", 3, 4.5, True, None, "2026-01-01T00:00:00Z", {"a": [1]}, "/Date(1700000000000)/", " 7.10 ", ""]
    checked = 0
    for connector in connectors.values():
        for stream in connector.streams:
            normalise, make_row = compile_normaliser(stream.fields), compile_row_maker(stream.fields)
            for shift in range(len(samples)):
                record: dict[str, Any] = {}
                for i, field in enumerate(stream.fields):
                    value = samples[(i + shift) % len(samples)]
                    target = record
                    for step in field.path[:-1]:
                        target = target.setdefault(str(step), {}) if isinstance(target, dict) else {}
                    if isinstance(target, dict) and isinstance(field.path[-1], str):
                        target[field.path[-1]] = value
                assert make_row(record) == tuple(normalise(record).values()), (connector.name, stream.name)
                assert list(normalise(record)) == [f.name for f in stream.fields]
                checked += 1
    assert checked > 100


def test_provider_json_keeps_big_integers_exact_and_takes_what_json_takes() -> None:
    from bff.connectors.records import decode_json

    assert decode_json(b'{"id": 123456789012345678901234567890}') == {"id": 123456789012345678901234567890}
    assert math.isnan(decode_json(b"[NaN]")[0]) and decode_json(b"[1e400]") == [math.inf]
    assert decode_json(b'[1.5, -0.0, 0.1, "\\u00e9\\t"]') == json.loads(b'[1.5, -0.0, 0.1, "\\u00e9\\t"]')
    # What the fast parser refuses, json decodes (a byte-order mark, UTF-16), or refuses too.
    assert decode_json(b"\xef\xbb\xbf[1]") == [1]
    assert decode_json('[{"a": "b"}]'.encode("utf-16")) == [{"a": "b"}]
    for bad in (b'["a\tb"]', b"[1,", b""):
        with pytest.raises(ValueError):
            decode_json(bad)


async def test_a_page_is_plain_only_when_its_json_has_no_backslash(connectors, rec):
    """``Page.plain`` lets the warehouse write COPY text without escaping: a page whose strings
    hold a tab, newline or backslash (escaped in its JSON) must never be flagged plain."""
    record = {"id": "t_1", "account_id": "a", "amount": 1, "currency": "EUR", "made_on": "2026-01-01"}
    plain = json.dumps([{**record, "description": "Coffee"}]).encode()
    tricky = json.dumps([{**record, "id": "t_2", "description": "a\tb\\c\nd\re"}]).encode()
    big = b'[{"id": 123456789012345678901234567890, "amount": "1.10"}]'
    async with httpx.AsyncClient(transport=httpx.MockTransport(_bank_pages(plain, tricky, big))) as client:
        sess = session(connectors, "sandbox_bank", client, rec, credentials={"login": "sandbox", "password": "sandbox"})
        pages = [page async for page in sess.read("transactions", rows=True)]
    assert [page.plain for page in pages] == [True, False, True]
    fields = [f.name for f in connectors["sandbox_bank"].stream("transactions").fields]
    assert pages[0].records == [tuple({**record, "description": "Coffee", "updated_at": None}[f] for f in fields)]
    assert pages[1].records[0][fields.index("description")] == "a\tb\\c\nd\re"
    assert pages[2].records[0][:3] == ("123456789012345678901234567890", None, "1.10")


def test_a_pages_cursor_is_the_greatest_value_as_cursor_gt_orders_them() -> None:
    from bff.connectors.records import cursor_gt, page_cursor

    def one_by_one(values: list[Any], best: Any) -> Any:
        for value in values:
            if value is not None and (best is None or cursor_gt(value, best)):
                best = value
        return best

    cases: list[tuple[list[Any], Any]] = [
        (["2026-01-02T00:00:00Z", None, "2026-01-03T00:00:00Z", "2026-01-01T00:00:00Z"], None),
        (["2026-01-02", "2026-01-01"], "2026-01-05"),
        ([None, None], "kept"),
        ([], None),
        ([3, 10, 2.5, None], 4),
        ([3, "10", 2], None),  # mixed: compared as text, as before
        (["b", "a"], 7),
        ([1_700_000_000, 1_700_000_500], "1700000100"),
    ]
    for values, best in cases:
        assert page_cursor(values, best) == one_by_one(values, best), (values, best)
