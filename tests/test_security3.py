"""Issue 26, security round three: one test (at least) per numbered item, each failing on the old code."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import BFF, auth, running_bff

from bff.settings import Settings
from bff.webhooks import UnsafeTarget, _public, resolve_target, validate_url

# -- 1. a partner rotate or revoke ends the customer tokens minted under the old partner token ----------------


async def customer_tokens(bff: BFF, partner_token: str, external_id: str = "cust-1") -> dict[str, str]:
    """Every kind of sub-account token, minted with ``partner_token``."""
    minted = {"integrate": str((await bff.integrate(partner_token, external_id))["token"])}
    for name, expire in (("identity", "true"), ("identity-forever", "false")):
        answer = await bff.client.get(
            "/api/partner/sub-account/identity/",
            params={"external_id": external_id, "expire": expire},
            headers=auth(partner_token),
        )
        assert answer.status_code == 200, answer.text
        minted[name] = answer.json()["token"]
    return minted


async def statuses(bff: BFF, tokens: dict[str, str]) -> dict[str, object]:
    found: dict[str, object] = {}
    for name, token in tokens.items():
        answer = await bff.client.get("/api/servers", headers=auth(token))
        found[name] = answer.status_code if answer.status_code == 200 else answer.json()["code"]
    return found


async def test_rotating_or_revoking_a_partner_token_ends_the_customer_tokens_minted_with_it(bff: BFF) -> None:
    _, leaked = await bff.partner()
    before = await customer_tokens(bff, leaked)
    assert set((await statuses(bff, before)).values()) == {200}
    rotated = await bff.client.post("/api/partner/rotate-token", headers=auth(leaked))
    assert rotated.status_code == 200
    new = rotated.json()["token"]
    assert set((await statuses(bff, before)).values()) == {"token_revoked"}
    after = await customer_tokens(bff, new)
    assert set((await statuses(bff, after)).values()) == {200}  # the sub-account itself was not revoked
    assert (await bff.client.post("/api/partner/revoke", headers=auth(new))).status_code == 200
    assert set((await statuses(bff, {**before, **{f"new {k}": v for k, v in after.items()}})).values()) == {
        "token_revoked"
    }


async def test_a_partner_may_rotate_without_logging_its_customers_out(bff: BFF) -> None:
    _, old = await bff.partner()
    minted = await customer_tokens(bff, old)
    for bad in ({"keep_customer_tokens": "yes"}, {"keep": True}):
        refused = await bff.client.post("/api/partner/rotate-token", json=bad, headers=auth(old))
        assert refused.status_code == 400 and refused.json()["code"] == "validation_error", bad
        assert set(refused.json()["errors"]) == set(bad)
    assert (await bff.client.get("/api/partner", headers=auth(old))).status_code == 200  # nothing rotated
    kept = await bff.client.post("/api/partner/rotate-token", json={"keep_customer_tokens": True}, headers=auth(old))
    assert kept.status_code == 200
    new = kept.json()["token"]
    assert (await bff.client.get("/api/partner", headers=auth(old))).json()["code"] == "token_revoked"
    assert set((await statuses(bff, minted)).values()) == {200}
    # A plain rotate later ends them (and those minted after the kept rotate).
    later = await customer_tokens(bff, new, "cust-2")
    again = await bff.client.post("/api/partner/rotate-token", json={"keep_customer_tokens": False}, headers=auth(new))
    assert again.status_code == 200
    assert set((await statuses(bff, {**minted, **later})).values()) == {"token_revoked"}


async def test_tokens_minted_before_the_partner_generation_was_carried_end_at_the_next_rotate(bff: BFF) -> None:
    partner_id, partner_token = await bff.partner()
    account = await bff.services.store.create_sub_account(partner_id, "cust-1", {})
    tokens = bff.services.tokens
    legacy = tokens._mint["identity", False].dumps(
        {"kind": "identity", "pid": partner_id, "sid": account.id, "gen": account.token_generation}
    )
    assert tokens.verify(legacy, accept=("identity",)).partner_generation == 0
    assert (await bff.client.get("/api/servers", headers=auth(legacy))).status_code == 200
    await bff.client.post("/api/partner/rotate-token", headers=auth(partner_token))
    assert (await bff.client.get("/api/servers", headers=auth(legacy))).json()["code"] == "token_revoked"


def test_rotate_token_from_the_cli_keeps_customer_tokens_only_when_asked(
    settings_factory: Callable[..., Settings], database_url: str, tmp_path: Path
) -> None:
    import asyncio

    from test_cli import run_bff

    settings = settings_factory()
    env = {
        "BFF_SECRET_KEYS": ",".join(key.reveal() for key in settings.secret_keys),
        "BFF_ENCRYPTION_KEY": settings.encryption_key.reveal(),
        "BFF_DATABASE_URL": database_url,
    }

    async def mint() -> tuple[int, dict[str, str]]:
        async with running_bff(settings) as bff:
            partner_id, partner_token = await bff.partner()
            return partner_id, await customer_tokens(bff, partner_token)

    async def check(minted: dict[str, str]) -> set[object]:
        async with running_bff(settings) as bff:
            return set((await statuses(bff, minted)).values())

    partner_id, minted = asyncio.run(mint())
    cli = ("--data-dir", str(tmp_path / "cli"))
    kept = run_bff("partner", "rotate-token", str(partner_id), "--keep-customer-tokens", *cli, env=env)
    assert kept.returncode == 0, kept.stderr
    assert "token" in json.loads(kept.stdout)
    assert asyncio.run(check(minted)) == {200}
    assert run_bff("partner", "rotate-token", str(partner_id), *cli, env=env).returncode == 0
    assert asyncio.run(check(minted)) == {"token_revoked"}
    bad = run_bff("partner", "revoke", str(partner_id), "--keep-customer-tokens", *cli, env=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr  # revoke never keeps them


# -- 2. the webhook SSRF guard: only globally reachable addresses, IPv4 inside IPv6 included ------------------

NOT_PUBLIC = [
    # Named in the issue.
    "100.64.0.1",
    "100.100.100.200",  # a cloud metadata address (shared address space, RFC 6598)
    "100.127.255.254",
    "::ffff:100.100.100.200",
    "fec0::1",
    "feff:ffff::1",
    "192.88.99.1",
    "2001:20::1",
    "2001:2f:ffff::1",
    # The usual suspects.
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "127.0.0.1",
    "127.255.255.254",
    "169.254.169.254",
    "0.0.0.0",
    "0.1.2.3",
    "192.0.0.8",
    "192.0.2.1",
    "198.18.0.1",
    "198.51.100.7",
    "203.0.113.9",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "::",
    "::1",
    "fe80::1",
    "fc00::1",
    "fd12:3456::1",
    "ff02::1",
    "ff0e::1",
    "2001:db8::1",
    "100::1",
    "3fff::1",
    "5f00::1",
    "64:ff9b:1::a00:1",
    # IPv4 inside IPv6: mapped, translated, compatible, 6to4, NAT64, Teredo.
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "::ffff:0:10.0.0.1",
    "::10.0.0.1",
    "::169.254.169.254",
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "2002:6464:64c8::1",  # 6to4 of 100.100.100.200
    "2002:7f00:1::1",
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "64:ff9b::6464:64c8",  # NAT64 of 100.100.100.200
    "64:ff9b::7f00:1",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
]

PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.215.14",
    "100.63.255.255",  # just below 100.64.0.0/10
    "100.128.0.1",  # just above
    "192.88.98.1",
    "2001:4860:4860::8888",
    "2606:4700:4700::1111",
    "2a00:1450:4001:81c::200e",
    "::ffff:8.8.8.8",
    "2002:808:808::1",  # 6to4 of 8.8.8.8
    "64:ff9b::808:808",  # NAT64 of 8.8.8.8
]


@pytest.mark.parametrize("literal", NOT_PUBLIC)
def test_webhook_guard_refuses_every_address_that_is_not_global(literal: str) -> None:
    assert not _public(ipaddress.ip_address(literal)), literal


@pytest.mark.parametrize("literal", PUBLIC)
def test_webhook_guard_still_lets_public_addresses_through(literal: str) -> None:
    assert _public(ipaddress.ip_address(literal)), literal


@pytest.mark.parametrize(
    "literal", ["100.100.100.200", "::ffff:100.100.100.200", "fec0::1", "192.88.99.1", "2001:20::1"]
)
async def test_sending_to_a_non_global_literal_is_refused(literal: str) -> None:
    host = f"[{literal}]" if ":" in literal else literal
    with pytest.raises(UnsafeTarget, match="not public"):
        await resolve_target(f"http://{host}/hook", allow_private=False)
    address, port = await resolve_target(f"http://{host}/hook", allow_private=True)
    assert ipaddress.ip_address(address) == ipaddress.ip_address(literal) and port == 80


# -- 4. webhook URLs: a malformed one is a 400 with a code, never a 500; nothing that splits a request line -------


@pytest.mark.parametrize(
    "url",
    [
        " http://[::1",
        "http://[::1",
        "http://[example.com]/",
        "http://example.com:99999/",
        "https://example.com/a\r\nX-Injected: 1",
        "https://example.com/a\nb",
        "https://example.com/\x7f",
        "https://example.com/a b",
        "https://example.com/\u2028",
        " https://example.com/hook",
        "https://example.com/hook ",
        "https://example.com/hook\t",
    ],
)
async def test_malformed_or_control_character_webhook_urls_are_400(bff: BFF, url: str) -> None:
    _, partner_token = await bff.partner()
    answer = await bff.client.put("/api/partner/webhook", json={"url": url}, headers=auth(partner_token))
    assert answer.status_code == 400, (url, answer.text)
    assert answer.json()["code"] == "validation_error" and "url" in answer.json()["errors"]
    with pytest.raises(UnsafeTarget):
        validate_url(url)
    assert (await bff.client.get("/api/partner/webhook", headers=auth(partner_token))).status_code == 404


def test_a_clean_webhook_url_is_kept_as_sent() -> None:
    for url in ("https://example.com/\x00", "https://example.com/\u200b", "https://example.com/\x85"):
        with pytest.raises(UnsafeTarget):  # (the JSON reader refuses NUL before this is reached)
            validate_url(url)
    assert validate_url("https://hooks.example.com:8443/in?x=1") == "https://hooks.example.com:8443/in?x=1"
