from __future__ import annotations

import asyncio
import json

import pytest
from conftest import BFF, FakeClock, auth, running_bff

from bff.settings import Secret

SUB_ACCOUNT = {
    "first_name": "John",
    "last_name": "Doe",
    "email": "john@woodsolutions.com",
    "language": "en",
    "company_name": "Wood Solutions Ltd",
    "external_id": "wood_123",
}


@pytest.mark.parametrize(
    "path", ["/api/partner/sub-account/", "/api/partner/sub-account", "/api/sub-account/", "/api/sub-account"]
)
async def test_create_sub_account_and_conflict(bff: BFF, path: str) -> None:
    _, token = await bff.partner()
    created = await bff.client.post(path, json=SUB_ACCOUNT, headers=auth(token, "JWT"))
    assert created.status_code == 201, created.text
    body = created.json()
    assert {k: body[k] for k in SUB_ACCOUNT} == SUB_ACCOUNT
    again = await bff.client.post(path, json=SUB_ACCOUNT, headers=auth(token))
    assert again.status_code == 409
    assert again.json()["code"] == "external_id_taken" and again.json()["id"] == body["id"]


async def test_create_sub_account_validation(bff: BFF) -> None:
    _, token = await bff.partner()
    response = await bff.client.post(
        "/api/partner/sub-account/",
        json={"first_name": 12, "email": "not-an-email", "language": "english please"},
        headers=auth(token),
    )
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "validation_error"
    assert set(body["errors"]) == {"external_id", "first_name", "email", "language"}
    listed = await bff.client.get("/api/partner/sub-accounts", headers=auth(token))
    assert listed.json()["count"] == 0  # nothing half-written


async def test_integer_external_id_is_accepted_as_string(bff: BFF) -> None:
    _, token = await bff.partner()
    response = await bff.client.post("/api/partner/sub-account/", json={"external_id": 42}, headers=auth(token))
    assert response.status_code == 201 and response.json()["external_id"] == "42"
    bad = await bff.client.post("/api/partner/sub-account/", json={"external_id": True}, headers=auth(token))
    assert bad.status_code == 400 and "external_id" in bad.json()["errors"]


@pytest.mark.parametrize(
    "path", ["/api/partner/sub-accounts", "/api/partner/sub-accounts/", "/api/sub-accounts", "/api/sub-accounts/"]
)
async def test_list_sub_accounts_pages(bff: BFF, path: str) -> None:
    _, token = await bff.partner()
    for i in range(5):
        await bff.client.post("/api/sub-account/", json={"external_id": f"c{i}"}, headers=auth(token))
    first = (await bff.client.get(path, params={"page_size": 2}, headers=auth(token))).json()
    assert first["count"] == 5 and [a["external_id"] for a in first["results"]] == ["c0", "c1"]
    assert first["previous"] is None and "page=2" in first["next"]
    last = (await bff.client.get(path, params={"page_size": 2, "page": 3}, headers=auth(token))).json()
    assert [a["external_id"] for a in last["results"]] == ["c4"] and last["next"] is None
    bad = await bff.client.get(path, params={"page_size": "many"}, headers=auth(token))
    assert bad.status_code == 400 and bad.json()["errors"] == {"page_size": "Must be an integer."}
    too_big = await bff.client.get(path, params={"page_size": 100000}, headers=auth(token))
    assert too_big.status_code == 400 and too_big.json()["code"] == "validation_error"


@pytest.mark.parametrize("path", ["/api/partner/sub-account/integrate/", "/api/partner/sub-account/integrate"])
async def test_integrate_provisions_on_first_use(bff: BFF, path: str) -> None:
    _, token = await bff.partner()
    first = await bff.client.post(path, json=SUB_ACCOUNT, headers=auth(token, "JWT"))
    assert first.status_code == 200
    body = first.json()
    assert set(body) == {"token", "expires_in", "expires_at", "account_id", "external_id"}
    assert body["expires_in"] == 1800 and body["external_id"] == "wood_123"
    assert first.headers["cache-control"] == "no-store"
    second = (await bff.client.post(path, json={"external_id": "wood_123"}, headers=auth(token))).json()
    assert second["account_id"] == body["account_id"]
    # The minted token works on a sub-account endpoint.
    me = await bff.client.get("/api/partner/sub-account/identity/?external_id=wood_123", headers=auth(body["token"]))
    assert me.json()["code"] == "token_wrong_kind"
    missing = await bff.client.post(path, json={"first_name": "x"}, headers=auth(token))
    assert missing.status_code == 400 and "external_id" in missing.json()["errors"]


@pytest.mark.parametrize("path", ["/api/sub-account/integrate/", "/api/sub-account/integrate"])
async def test_integrate_existing_by_account_or_external_id(bff: BFF, path: str) -> None:
    _, token = await bff.partner()
    account = (await bff.client.post("/api/sub-account/", json=SUB_ACCOUNT, headers=auth(token))).json()
    by_id = await bff.client.post(f"{path}?account_id={account['id']}", headers=auth(token))
    by_ext = await bff.client.post(f"{path}?external_id=wood_123", headers=auth(token))
    assert by_id.status_code == by_ext.status_code == 200
    assert by_id.json()["account_id"] == by_ext.json()["account_id"] == account["id"]
    unknown = await bff.client.post(f"{path}?external_id=nobody", headers=auth(token))
    assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"
    neither = await bff.client.post(path, headers=auth(token))
    assert neither.status_code == 400 and neither.json()["code"] == "validation_error"
    bad_id = await bff.client.post(f"{path}?account_id=abc", headers=auth(token))
    assert bad_id.status_code == 400


@pytest.mark.parametrize(
    "path",
    [
        "/api/partner/sub-account/identity/",
        "/api/partner/sub-account/identity",
        "/api/sub-account/identity",
        "/api/sub-account/identity/",
    ],
)
async def test_identity_tokens(bff: BFF, path: str) -> None:
    _, token = await bff.partner()
    await bff.client.post("/api/sub-account/", json=SUB_ACCOUNT, headers=auth(token))
    expiring = (await bff.client.get(f"{path}?external_id=wood_123", headers=auth(token))).json()
    assert expiring["expires_at"] > 0 and expiring["external_id"] == "wood_123"
    forever = (await bff.client.get(f"{path}?external_id=wood_123&expire=false", headers=auth(token))).json()
    assert forever["expires_at"] is None
    bad = await bff.client.get(f"{path}?external_id=wood_123&expire=maybe", headers=auth(token))
    assert bad.status_code == 400 and bad.json()["errors"] == {"expire": "Must be true or false."}
    assert (await bff.client.get(f"{path}?account_id=999", headers=auth(token))).status_code == 404


@pytest.mark.parametrize("prefix", ["/api/partner/sub-account", "/api/sub-account"])
async def test_revoke_tokens_kills_identity_tokens(bff: BFF, prefix: str) -> None:
    _, token = await bff.partner()
    account = (await bff.client.post("/api/sub-account/", json=SUB_ACCOUNT, headers=auth(token))).json()
    identity = (
        await bff.client.get("/api/sub-account/identity?external_id=wood_123&expire=false", headers=auth(token))
    ).json()
    integrate = (await bff.client.post("/api/sub-account/integrate/?external_id=wood_123", headers=auth(token))).json()
    from bff.auth import authenticate  # the same check every sub-account route uses

    class _Req:
        def __init__(self, t: str) -> None:
            self.headers = {"authorization": f"Bearer {t}"}
            self.app = bff.app

    caller = await authenticate(_Req(identity["token"]), ("identity", "integrate"))  # type: ignore[arg-type]
    assert caller.sub_account is not None and caller.sub_account.id == account["id"]
    revoked = await bff.client.post(f"{prefix}/{account['id']}/revoke-tokens", headers=auth(token))
    assert revoked.status_code == 200 and revoked.json()["revoked"] is True
    for stale in (identity["token"], integrate["token"]):
        with pytest.raises(Exception) as info:
            await authenticate(_Req(stale), ("identity", "integrate"))  # type: ignore[arg-type]
        assert getattr(info.value, "code", None) == "token_revoked"
    fresh = (await bff.client.get("/api/sub-account/identity?external_id=wood_123", headers=auth(token))).json()
    assert (await authenticate(_Req(fresh["token"]), ("identity",))).sub_account is not None  # type: ignore[arg-type]
    assert (await bff.client.post(f"{prefix}/999/revoke-tokens", headers=auth(token))).status_code == 404


async def test_partner_endpoints_reject_other_token_kinds(bff: BFF) -> None:
    _, token = await bff.partner()
    minted = await bff.integrate(token, "cust-1")
    identity = (await bff.client.get("/api/sub-account/identity?external_id=cust-1", headers=auth(token))).json()
    for other in (minted["token"], identity["token"]):
        for method, path in [
            ("GET", "/api/partner/sub-accounts"),
            ("POST", "/api/partner/sub-account/"),
            ("POST", "/api/partner/sub-account/integrate/"),
            ("GET", "/api/partner/sub-account/identity/?external_id=cust-1"),
            ("POST", "/api/partner/sub-account/1/revoke-tokens"),
        ]:
            response = await bff.client.request(method, path, json={"external_id": "x"}, headers=auth(other))
            assert response.status_code == 401 and response.json()["code"] == "token_wrong_kind", (path, response.text)


async def test_missing_tampered_and_unknown_partner_tokens(bff: BFF) -> None:
    _, token = await bff.partner()
    none = await bff.client.get("/api/partner/sub-accounts")
    assert none.status_code == 401 and none.json()["code"] == "token_missing"
    assert none.headers["www-authenticate"].startswith("Bearer")
    tampered = await bff.client.get("/api/partner/sub-accounts", headers=auth(token[:-3] + "xyz"))
    assert tampered.json()["code"] == "token_invalid"
    ghost = bff.services.tokens.mint_partner_token(partner_id=999, generation=1).token
    assert (await bff.client.get("/api/partner/sub-accounts", headers=auth(ghost))).json()["code"] == "token_invalid"
    scheme = await bff.client.get("/api/partner/sub-accounts", headers={"Authorization": f"Basic {token}"})
    assert scheme.json()["code"] == "token_invalid"


async def test_rotated_partner_token_is_revoked(bff: BFF) -> None:
    partner_id, token = await bff.partner()
    await bff.services.store.partners.bump_generation(partner_id)
    response = await bff.client.get("/api/partner/sub-accounts", headers=auth(token))
    assert response.status_code == 401 and response.json()["code"] == "token_revoked"


async def test_minting_with_a_rotated_partner_token_is_refused_at_once(bff: BFF) -> None:
    """The mint's one-query path (partner and sub-account together) still sees a rotation immediately."""
    partner_id, token = await bff.partner()
    assert (await bff.integrate(token, "cust-rot"))["account_id"]
    await bff.services.store.partners.bump_generation(partner_id)
    for body in ({"external_id": "cust-rot"}, {"external_id": "someone-new"}, {"external_id": ""}):
        response = await bff.client.post("/api/partner/sub-account/integrate/", json=body, headers=auth(token))
        assert response.status_code == 401 and response.json()["code"] == "token_revoked", body


async def test_expired_integrate_token_over_http(settings_factory) -> None:  # type: ignore[no-untyped-def]
    clock = FakeClock()
    async with running_bff(settings_factory(), clock=clock) as bff:
        _, token = await bff.partner()
        minted = await bff.integrate(token)
        clock.advance(1801)
        from bff.auth import authenticate

        class _Req:
            headers = {"authorization": f"JWT {minted['token']}"}
            app = bff.app

        with pytest.raises(Exception) as info:
            await authenticate(_Req(), ("integrate",))  # type: ignore[arg-type]
        assert getattr(info.value, "code", None) == "token_expired"


async def test_partners_never_see_each_others_sub_accounts(bff: BFF) -> None:
    _, acme = await bff.partner("acme")
    _, globex = await bff.partner("globex", ("http://globex.test",))
    account = (await bff.client.post("/api/sub-account/", json=SUB_ACCOUNT, headers=auth(acme))).json()
    assert (await bff.client.get("/api/partner/sub-accounts", headers=auth(globex))).json()["count"] == 0
    for method, path in [
        ("GET", f"/api/partner/sub-account/identity/?account_id={account['id']}"),
        ("GET", "/api/partner/sub-account/identity/?external_id=wood_123"),
        ("POST", f"/api/sub-account/integrate/?account_id={account['id']}"),
        ("POST", "/api/sub-account/integrate/?external_id=wood_123"),
        ("POST", f"/api/partner/sub-account/{account['id']}/revoke-tokens"),
    ]:
        response = await bff.client.request(method, path, headers=auth(globex))
        assert response.status_code == 404, path
        assert response.json() == {"detail": "No such sub-account.", "code": "not_found"}
    # The same external_id under another partner is a different customer.
    other = await bff.client.post("/api/sub-account/", json=SUB_ACCOUNT, headers=auth(globex))
    assert other.status_code == 201 and other.json()["id"] != account["id"]


async def test_fifty_concurrent_first_integrates_create_one_sub_account(bff: BFF) -> None:
    _, token = await bff.partner()
    responses = await asyncio.gather(
        *(
            bff.client.post("/api/partner/sub-account/integrate/", json={"external_id": "race-1"}, headers=auth(token))
            for _ in range(50)
        )
    )
    assert {r.status_code for r in responses} == {200}
    assert len({r.json()["account_id"] for r in responses}) == 1
    listed = (await bff.client.get("/api/partner/sub-accounts", headers=auth(token))).json()
    assert listed["count"] == 1


async def test_fifty_concurrent_first_integrates_over_real_http(settings_factory) -> None:  # type: ignore[no-untyped-def]
    import httpx
    from conftest import serve_in_thread

    from bff.cli import create_partner

    settings = settings_factory()
    with serve_in_thread(settings) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            assert (await client.get("/healthz")).status_code == 200
            token = (await create_partner(settings, "acme", ["http://localhost:8001"]))["token"]
            responses = await asyncio.gather(
                *(
                    client.post(
                        "/api/partner/sub-account/integrate/", json={"external_id": "race-2"}, headers=auth(token)
                    )
                    for _ in range(50)
                )
            )
            assert {r.status_code for r in responses} == {200}, {r.text for r in responses if r.status_code != 200}
            assert len({r.json()["account_id"] for r in responses}) == 1
            listed = (await client.get("/api/partner/sub-accounts", headers=auth(token))).json()
            assert listed["count"] == 1


@pytest.mark.parametrize(
    ("content", "headers", "status", "code"),
    [
        (b"{not json", {"content-type": "application/json"}, 400, "invalid_json"),
        (b"[1, 2]", {"content-type": "application/json"}, 400, "invalid_json"),
        (b"\xff\xfe", {"content-type": "application/json"}, 400, "invalid_json"),
        (b"external_id=1", {"content-type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
        (b"", {"content-type": "application/json"}, 400, "invalid_json"),
        (json.dumps({"external_id": ["a"]}).encode(), {"content-type": "application/json"}, 400, "validation_error"),
        (
            json.dumps({"external_id": "x", "email": {"a": 1}}).encode(),
            {"content-type": "application/json"},
            400,
            "validation_error",
        ),
    ],
)
async def test_bad_bodies_get_clear_errors(
    bff: BFF, content: bytes, headers: dict[str, str], status: int, code: str
) -> None:
    _, token = await bff.partner()
    response = await bff.client.post("/api/partner/sub-account/", content=content, headers={**headers, **auth(token)})
    assert response.status_code == status and response.json()["code"] == code


async def test_huge_body_is_rejected_with_413(settings_factory) -> None:  # type: ignore[no-untyped-def]
    async with running_bff(settings_factory(max_body_bytes=4096)) as bff:
        _, token = await bff.partner()
        huge = json.dumps({"external_id": "x", "first_name": "a" * 10_000}).encode()
        response = await bff.client.post(
            "/api/partner/sub-account/", content=huge, headers={"content-type": "application/json", **auth(token)}
        )
        assert response.status_code == 413 and response.json()["code"] == "payload_too_large"

        async def chunks():  # no Content-Length: the limit applies while streaming
            for _ in range(10):
                yield b"x" * 1000

        streamed = await bff.client.post(
            "/api/partner/sub-account/", content=chunks(), headers={"content-type": "application/json", **auth(token)}
        )
        assert streamed.status_code == 413 and streamed.json()["code"] == "payload_too_large"
        assert (await bff.client.get("/api/partner/sub-accounts", headers=auth(token))).json()["count"] == 0


async def test_unknown_paths_and_methods_use_the_error_shape(bff: BFF) -> None:
    for method, path, status, code in [
        ("GET", "/nope", 404, "not_found"),
        ("GET", "/api/partner/sub-account/abc/revoke-tokens", 404, "not_found"),
        ("DELETE", "/api/partner/sub-accounts", 405, "method_not_allowed"),
        ("PUT", "/healthz", 405, "method_not_allowed"),
    ]:
        response = await bff.client.request(method, path)
        assert response.status_code == status
        assert response.json()["code"] == code and response.json()["detail"]


async def test_cors_only_for_registered_origins(bff: BFF) -> None:
    await bff.partner("acme", ("http://localhost:8001",))
    preflight = await bff.client.options(
        "/api/servers",
        headers={
            "Origin": "http://localhost:8001",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "http://localhost:8001"
    assert int(preflight.headers["access-control-max-age"]) >= 600
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    simple = await bff.client.get("/healthz", headers={"Origin": "http://localhost:8001"})
    assert simple.headers["access-control-allow-origin"] == "http://localhost:8001"
    assert "etag" in simple.headers["access-control-expose-headers"].lower()

    evil_preflight = await bff.client.options(
        "/api/servers", headers={"Origin": "https://evil.test", "Access-Control-Request-Method": "POST"}
    )
    assert evil_preflight.status_code == 403
    assert not any(h.startswith("access-control-") for h in evil_preflight.headers)
    evil = await bff.client.get("/healthz", headers={"Origin": "https://evil.test"})
    assert evil.status_code == 200 and not any(h.startswith("access-control-") for h in evil.headers)


async def test_origin_registered_later_is_picked_up(bff: BFF) -> None:
    await bff.client.get("/healthz", headers={"Origin": "http://late.test"})
    await bff.services.store.partners.create("late", ["http://late.test"])
    response = await bff.client.get("/healthz", headers={"Origin": "http://late.test"})
    assert response.headers.get("access-control-allow-origin") == "http://late.test"


async def test_healthz_and_openapi_cover_every_route(bff: BFF) -> None:
    assert (await bff.client.get("/healthz")).json() == {"status": "ok"}
    spec = (await bff.client.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.1")
    from bff.openapi import _walk

    for path, route in _walk(bff.app.routes):
        normalised = path.replace(":int}", "}").replace(":path}", "}")
        assert normalised in spec["paths"], normalised
        for method in route.methods - {"HEAD"}:
            assert method.lower() in spec["paths"][normalised]


async def test_settings_repr_masks_secrets(settings_factory) -> None:  # type: ignore[no-untyped-def]
    settings = settings_factory()
    text = repr(settings)
    assert settings.secret_keys[0].reveal() not in text
    assert settings.encryption_key.reveal() not in text
    assert "Secret('**********')" in text
    assert repr(Secret("hunter2hunter2")) == "Secret('**********')"
