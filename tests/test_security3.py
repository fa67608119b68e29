"""Issue 26, security round three: one test (at least) per numbered item, each failing on the old code."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import secrets
import string
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import BFF, auth, running_bff

from bff.settings import Settings, SettingsError, check_secret_key, generate_encryption_key, generate_secret_key
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
    account = await bff.services.store.sub_accounts.create(partner_id, "cust-1", {})
    tokens = bff.services.tokens
    legacy = tokens._mint["identity", False].dumps(
        {"kind": "identity", "pid": partner_id, "sid": account.id, "gen": account.token_generation}
    )
    assert tokens.verify(legacy, accept=("identity",)).partner_generation == 0
    assert (await bff.client.get("/api/servers", headers=auth(legacy))).status_code == 200
    await bff.client.post("/api/partner/rotate-token", headers=auth(partner_token))
    assert (await bff.client.get("/api/servers", headers=auth(legacy))).json()["code"] == "token_revoked"


async def test_rotate_token_from_the_cli_keeps_customer_tokens_only_when_asked(
    settings_factory: Callable[..., Settings], database_url: str, tmp_path: Path
) -> None:
    from test_cli import run_bff

    settings = settings_factory()
    env = {
        "BFF_SECRET_KEYS": ",".join(key.reveal() for key in settings.secret_keys),
        "BFF_ENCRYPTION_KEY": settings.encryption_key.reveal(),
        "BFF_DATABASE_URL": database_url,
    }
    cli = ("--data-dir", str(tmp_path / "cli"))
    async with running_bff(settings) as bff:
        partner_id, partner_token = await bff.partner()
        minted = await customer_tokens(bff, partner_token)
        kept = await asyncio.to_thread(
            run_bff, "partner", "rotate-token", str(partner_id), "--keep-customer-tokens", *cli, env=env
        )
        assert kept.returncode == 0, kept.stderr
        assert "token" in json.loads(kept.stdout)
        assert set((await statuses(bff, minted)).values()) == {200}
        rotated = await asyncio.to_thread(run_bff, "partner", "rotate-token", str(partner_id), *cli, env=env)
        assert rotated.returncode == 0, rotated.stderr
        assert set((await statuses(bff, minted)).values()) == {"token_revoked"}
    bad = await asyncio.to_thread(
        run_bff, "partner", "revoke", str(partner_id), "--keep-customer-tokens", *cli, env=env
    )
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


# -- 3. external_id: nothing invisible, no fillers or blanks, no mark without a base -----------------------------------


@pytest.mark.parametrize(
    "external_id",
    [
        "acme_7\u034f",  # combining grapheme joiner
        "acme_7\ufe00",  # variation selector 1
        "acme_7\ufe0f",
        "acme_7\U000e0100",  # variation selector 17
        "acme_7\U000e01ef",
        "acme_7\u3164",  # Hangul filler
        "acme_7\u115f",  # Hangul choseong filler
        "acme_7\u1160",  # Hangul jungseong filler
        "acme_7\uffa0",  # halfwidth Hangul filler
        "acme_7\u2800",  # braille pattern blank
        "acme_7\u00ad",  # soft hyphen
        "acme_7\u180b",  # Mongolian free variation selector
        "acme_7\u17b4",
        "acme\u00a07",  # a space that is not a space
        "acme\u30007",
        "\u0301",  # a lone combining mark
        "\u0301acme_7",
    ],
)
async def test_external_id_refuses_look_alikes_naming_the_field(bff: BFF, external_id: str) -> None:
    _, partner_token = await bff.partner()
    await bff.integrate(partner_token, "acme_7")
    for path in ("/api/partner/sub-account/", "/api/partner/sub-account/integrate/"):
        answer = await bff.client.post(path, json={"external_id": external_id}, headers=auth(partner_token))
        assert answer.status_code == 400, (path, external_id, answer.text)
        body = answer.json()
        assert body["code"] == "validation_error" and set(body["errors"]) == {"external_id"}
        named = [char for char in external_id if f"U+{ord(char):04X}" in body["errors"]["external_id"]]
        assert named and not named[0].isascii(), body
    found = await bff.client.get(
        "/api/partner/sub-account/identity/", params={"external_id": external_id}, headers=auth(partner_token)
    )
    assert found.status_code == 400 and found.json()["code"] == "validation_error"
    listed = await bff.client.get("/api/partner/sub-accounts", headers=auth(partner_token))
    assert listed.json()["count"] == 1


async def test_external_ids_in_any_script_still_work(bff: BFF) -> None:
    _, partner_token = await bff.partner()
    for external_id in ("acme 7", "café", "cafe\u0301", "한국-1", "Ωμέγα", "客户-42", "x\u0301y", "ṩ"):
        answer = await bff.client.post(
            "/api/partner/sub-account/integrate/", json={"external_id": external_id}, headers=auth(partner_token)
        )
        assert answer.status_code == 200, (external_id, answer.text)


# -- 5. weak keys: keyboard walks, sequences and repeats are refused; generated keys pass ---------------------


WALKS_AND_SEQUENCES = [
    "qwertyuiopasdfghjklzxcvbnm123456",
    "QWERTYUIOPasdfghjkl;zxcvbnm,./12",
    "1qaz2wsx3edc4rfv",
    "zaq12wsxcde34rfvbgt56yhn",
    "poiuytrewqlkjhgfdsamnbvcxz",
    "!@#$%^&*()qwertyuiopasdf",
    "abcdefghijklmnopqrstuvwxyz012345",
    "0246810121416182022242628",
    "asdfasdfqwerqwer12341234",
]


@pytest.mark.parametrize("key", WALKS_AND_SEQUENCES)
def test_keyboard_walks_and_sequences_are_refused_as_signing_keys(tmp_path: Path, key: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(
            {"BFF_DATA_DIR": str(tmp_path), "BFF_SECRET_KEYS": key, "BFF_ENCRYPTION_KEY": generate_encryption_key()}
        )
    message = str(info.value)
    assert "BFF_SECRET_KEYS" in message and "predictable" in message and key not in message and "\n" not in message


@pytest.mark.parametrize(
    "raw",
    [
        bytes(range(32)),
        bytes(range(31, -1, -1)),
        bytes(range(100, 132)),
        bytes(range(0, 224, 7)),
        b"qwertyuiopasdfghjklzxcvbnm123456",
        b"0123456789abcdefghijklmnopqrstuv",
        b"Sup3rS3cr3t!Sup3rS3cr3t!Sup3rS3c",
    ],
)
def test_sequences_and_walks_are_refused_as_encryption_keys(tmp_path: Path, raw: bytes) -> None:
    key = base64.urlsafe_b64encode(raw).decode()
    with pytest.raises(SettingsError) as info:
        Settings.from_env(
            {"BFF_DATA_DIR": str(tmp_path), "BFF_SECRET_KEYS": generate_secret_key(), "BFF_ENCRYPTION_KEY": key}
        )
    assert "BFF_ENCRYPTION_KEY" in str(info.value) and "predictable" in str(info.value)


def test_generated_and_random_keys_still_pass(tmp_path: Path) -> None:
    from conftest import SECRET_KEY

    for _ in range(300):
        Settings.from_env(
            {
                "BFF_DATA_DIR": str(tmp_path),
                "BFF_SECRET_KEYS": f"{SECRET_KEY},{generate_secret_key()},{secrets.token_hex(16)}",
                "BFF_ENCRYPTION_KEY": generate_encryption_key(),
            }
        )
    # Random keys of the shortest length allowed, from the usual alphabets, keep their bits.
    for alphabet in (
        string.ascii_letters + string.digits,
        string.ascii_letters + string.digits + "-_",
        string.printable[:94],
    ):
        for _ in range(2000):
            key = "".join(secrets.choice(alphabet) for _ in range(16))
            check_secret_key(key)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BFF_SECRET_KEYS", "qwertyuiopasdfghjklzxcvbnm123456"),
        ("BFF_ENCRYPTION_KEY", base64.urlsafe_b64encode(bytes(range(32))).decode()),
    ],
)
def test_bff_serve_refuses_walks_and_sequences_in_one_line(tmp_path: Path, variable: str, value: str) -> None:
    from test_cli import run_bff

    env = {"BFF_SECRET_KEYS": generate_secret_key(), "BFF_ENCRYPTION_KEY": generate_encryption_key(), variable: value}
    result = run_bff("serve", "--data-dir", str(tmp_path), env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and variable in result.stderr and value not in result.stderr


# -- 6. header count and size are capped; `.` and `..` are no record ids -------------------------------------------


async def test_too_many_or_too_large_headers_are_431(bff: BFF) -> None:
    _, partner_token = await bff.partner()
    ok = await bff.client.get("/api/partner", headers={**auth(partner_token), **{f"x-h{i}": "1" for i in range(80)}})
    assert ok.status_code == 200
    for headers in (
        {f"x-h{i}": "1" for i in range(3000)},
        {f"x-h{i}": "1" for i in range(101)},
        {"x-big": "a" * (17 * 1024)},
        {f"x-h{i}": "b" * 1000 for i in range(20)},
    ):
        answer = await bff.client.get("/api/partner", headers={**auth(partner_token), **headers})
        assert answer.status_code == 431, len(headers)
        body = answer.json()
        assert body["code"] == "headers_too_large" and set(body) == {"detail", "code"}
        assert answer.headers["x-content-type-options"] == "nosniff"


async def test_the_access_log_names_method_path_and_status_never_the_query_or_a_token(
    bff: BFF, caplog: pytest.LogCaptureFixture
) -> None:
    """With ``bff.access`` at INFO, one line per request (preflights and refusals too), through the one
    middleware layer that also adds the security and CORS headers; nothing of the query string (it may
    hold OAuth codes) and no token."""
    import logging
    import re

    _, partner_token = await bff.partner(origins=("http://localhost:8001",))
    origin = {"Origin": "http://localhost:8001"}
    with caplog.at_level(logging.INFO, logger="bff.access"):
        ok = await bff.client.get("/api/partner?code=oauth-code-123", headers={**auth(partner_token), **origin})
        preflight = await bff.client.options("/api/partner", headers={**origin, "Access-Control-Request-Method": "GET"})
        refused = await bff.client.get("/api/partner", headers={**auth(partner_token), "x-big": "a" * (17 * 1024)})
    assert (ok.status_code, preflight.status_code, refused.status_code) == (200, 204, 431)
    lines = [record.getMessage() for record in caplog.records if record.name == "bff.access"]
    assert len(lines) == 3, lines
    expected_lines = ("GET /api/partner 200", "OPTIONS /api/partner 204", "GET /api/partner 431")
    for line, expected in zip(lines, expected_lines, strict=True):
        assert re.fullmatch(re.escape(expected) + r" \d+\.\dms", line), line
    assert "oauth-code-123" not in caplog.text and partner_token not in caplog.text
    for answer in (ok, preflight, refused):
        assert answer.headers["x-content-type-options"] == "nosniff" and answer.headers["cache-control"] == "no-store"
    assert (
        ok.headers["access-control-allow-origin"]
        == preflight.headers["access-control-allow-origin"]
        == origin["Origin"]
    )


async def test_dot_and_dot_dot_are_refused_as_record_ids(settings_factory: Callable[..., Settings]) -> None:
    from records_helpers import crm, customer

    async with running_bff(settings_factory(sandbox_enabled=True)) as sbff:
        who = await customer(sbff)
        cid = await crm(sbff, who)
        base = f"/api/server/{cid}/records/contact"
        created = await sbff.client.post(base, json={"email": "a@b.example", "last_name": "A"}, headers=who.headers)
        assert created.status_code == 201, created.text
        for raw in ("%2E", "%2E%2E", ".%2E", "%20", "%2E%2E%5C"):
            for method in ("GET", "PATCH", "DELETE"):
                answer = await sbff.client.request(
                    method, f"{base}/{raw}", json={"company": "X"} if method == "PATCH" else None, headers=who.headers
                )
                assert answer.status_code == 400, (raw, method, answer.text)
                assert answer.json()["code"] == "validation_error" and "record_id" in answer.json()["errors"]
        fine = await sbff.client.get(f"{base}/{created.json()['id']}", headers=who.headers)
        assert fine.status_code == 200
