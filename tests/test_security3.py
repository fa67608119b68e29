"""Issue 26, security round three: one test (at least) per numbered item, each failing on the old code."""

from __future__ import annotations

import ipaddress

import pytest
from conftest import BFF, auth

from bff.webhooks import UnsafeTarget, _public, resolve_target, validate_url

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
