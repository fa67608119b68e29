from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import BFF, auth, running_bff
from psycopg import sql
from sandbox_flows import authorize, connect_accounting, connect_bank, connect_crm, consent_form, start_sign_in

from bff.settings import Settings


@pytest.fixture
async def sbff(settings_factory: Callable[..., Settings]) -> AsyncIterator[BFF]:
    async with running_bff(settings_factory(sandbox_enabled=True)) as instance:
        yield instance


async def customer(bff: BFF, external_id: str = "cust-1") -> str:
    _, partner_token = await bff.partner(f"partner-{external_id}")
    return str((await bff.integrate(partner_token, external_id))["token"])


async def connection_count(bff: BFF, token: str) -> int:
    return int((await bff.client.get("/api/servers", headers=auth(token))).json()["count"])


async def test_catalogue_lists_sandbox_connectors_with_connect_forms(sbff: BFF) -> None:
    token = await customer(sbff)
    catalogue = (await sbff.client.get("/api/servertypes", headers=auth(token))).json()
    by_name = {item["name"]: item for item in catalogue["results"]}
    assert {"sandbox_crm", "sandbox_accounting", "sandbox_bank"} <= set(by_name)
    bank = by_name["sandbox_bank"]
    assert bank["display_name"] == "Sandbox Bank" and bank["auth_type"] == "basic"
    fields = {f["name"]: f for f in bank["connect_form"]["fields"]}
    assert fields["login"]["label"] == "Login" and fields["password"]["secret"] is True
    assert by_name["sandbox_accounting"]["connect_form"]["fields"][0]["label"] == "API key"
    logo = await sbff.client.get(urlsplit(bank["logo_url"]).path)
    assert logo.status_code == 200 and logo.headers["content-type"] == "image/svg+xml"
    # A partner token may read the catalogue too (DESIGN §3).
    _, partner_token = await sbff.partner("reader")
    assert (await sbff.client.get("/api/servertypes/", headers=auth(partner_token))).status_code == 200


async def test_oauth_connectors_without_an_app_are_not_offered(sbff: BFF) -> None:
    token = await customer(sbff)
    names = {i["name"] for i in (await sbff.client.get("/api/servertypes", headers=auth(token))).json()["results"]}
    assert "hubspot" not in names and "pipedrive" in names


async def test_catalogue_without_sandbox(settings_factory: Callable[..., Settings]) -> None:
    async with running_bff(settings_factory(sandbox_enabled=False)) as bff:
        token = await customer(bff)
        names = {i["name"] for i in (await bff.client.get("/api/servertypes", headers=auth(token))).json()["results"]}
        assert not any(name.startswith("sandbox_") for name in names)
        assert (await bff.client.get("/sandbox/_control/stats")).status_code == 404


async def test_api_key_connect_wrong_then_right(sbff: BFF) -> None:
    token = await customer(sbff)
    wrong = await sbff.client.post("/api/servers", json={"servertype_id": 2, "api_key": "wrong"}, headers=auth(token))
    assert wrong.status_code == 422 and wrong.json()["code"] == "credentials_rejected"
    assert await connection_count(sbff, token) == 0  # no row for rejected credentials
    missing = await sbff.client.post("/api/servers", json={"servertype_id": 2}, headers=auth(token))
    assert missing.status_code == 400 and missing.json()["errors"] == {"api_key": "API key is required."}
    right = await sbff.client.post(
        "/api/servers", json={"servertype_id": 2, "api_key": "sandbox-valid-key", "name": "Books"}, headers=auth(token)
    )
    assert right.status_code == 201
    body = right.json()
    assert body["health_status"] == "CONFIG_SELECT" and body["name"] == "Books" and body["servertype_id"] == 2
    options = (await sbff.client.get(f"/api/server/{body['id']}/config-options", headers=auth(token))).json()
    assert [o["value"] for o in options["options"]] == ["101", "102", "103"] and options["multiple"] is True
    bad = await sbff.client.post(f"/api/server/{body['id']}/config", json={"divisions": ["999"]}, headers=auth(token))
    assert bad.status_code == 400 and "divisions" in bad.json()["errors"]
    empty = await sbff.client.post(f"/api/server/{body['id']}/config", json={"divisions": []}, headers=auth(token))
    assert empty.status_code == 400
    chosen = await sbff.client.post(
        f"/api/server/{body['id']}/config", json={"divisions": ["101", "103"]}, headers=auth(token)
    )
    assert chosen.status_code == 200 and chosen.json()["health_status"] == "OK"
    assert chosen.json()["config"] == {"divisions": ["101", "103"]}


async def test_stored_credentials_rejected_on_config_options_is_the_writeback_answer(sbff: BFF) -> None:
    """One event, one answer (bff.lifecycle): stored credentials the provider rejects move the
    connection to ERROR and answer 409 connection_unauthorised, as in a writeback or a sync."""
    token = await customer(sbff)
    created = await sbff.client.post(
        "/api/servers", json={"servertype_id": 2, "api_key": "sandbox-valid-key"}, headers=auth(token)
    )
    cid = created.json()["id"]
    assert (await sbff.client.post("/sandbox/_control/revoke", json={"provider": "accounting"})).status_code == 200
    refused = await sbff.client.get(f"/api/server/{cid}/config-options", headers=auth(token))
    assert refused.status_code == 409 and refused.json()["code"] == "connection_unauthorised"
    server = (await sbff.client.get(f"/api/server/{cid}", headers=auth(token))).json()
    assert server["health_status"] == "ERROR" and "Re-authorise" in server["detail"]
    logs = (await sbff.client.get(f"/api/server/{cid}/logs", headers=auth(token))).json()["results"]
    assert logs[0]["level"] == "warning" and "Re-authorise" in logs[0]["message"]
    # New credentials bring it back to its configuration step (no choice was saved yet).
    assert (await sbff.client.post("/sandbox/_control/restore", json={"provider": "accounting"})).status_code == 200
    again = await sbff.client.post(
        f"/api/server/{cid}/reauthorise", json={"api_key": "sandbox-valid-key"}, headers=auth(token)
    )
    assert again.status_code == 200 and again.json()["health_status"] == "CONFIG_SELECT"


async def test_login_password_connect(sbff: BFF) -> None:
    token = await customer(sbff)
    wrong = await sbff.client.post(
        "/api/servers",
        json={"servertype_id": "sandbox_bank", "login": "sandbox", "password": "nope"},
        headers=auth(token),
    )
    assert wrong.status_code == 422 and await connection_count(sbff, token) == 0
    created = await connect_bank(sbff.client, token)
    assert created["health_status"] == "OK" and created["connector"] == "sandbox_bank"
    refresh = await sbff.client.post(f"/api/server/{created['id']}/manual-refresh", headers=auth(token))
    assert refresh.json()["refresh_url"] == "http://testserver/sandbox/bank/refresh"
    page = await sbff.client.get(urlsplit(refresh.json()["refresh_url"]).path)
    assert page.status_code == 200 and "Refresh" in page.text


async def test_oauth_connect_with_pkce(sbff: BFF) -> None:
    token = await customer(sbff)
    created = await sbff.client.post("/api/servers", json={"servertype_id": "sandbox_crm"}, headers=auth(token))
    assert created.status_code == 201
    body = created.json()
    assert body["health_status"] == "AUTHORIZING"
    assert body["oauth_url"].startswith("http://testserver/oauth/start?link=") and len(body["oauth_nonce"]) >= 32
    assert body["oauth_nonce"] not in body["oauth_url"]  # the nonce never travels in a URL
    provider_url = await start_sign_in(sbff.client, body)  # what the start page does in the browser
    query = parse_qs(urlsplit(provider_url).query)
    assert query["redirect_uri"] == ["http://testserver/oauth/callback"]  # byte-equal to the registered one
    assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) == 43
    assert len(query["state"][0]) >= 32 and token not in provider_url
    assert body["oauth_nonce"] not in provider_url  # the state the provider sees is not the nonce
    second = (await sbff.client.post("/api/servers", json={"servertype_id": "sandbox_crm"}, headers=auth(token))).json()
    second_query = parse_qs(urlsplit(await start_sign_in(sbff.client, second)).query)
    assert second_query["state"] != query["state"] and second_query["code_challenge"] != query["code_challenge"]

    callback = await authorize(sbff.client, provider_url)
    assert callback.status_code == 200
    status = (await sbff.client.get(f"/api/server/{body['id']}", headers=auth(token))).json()
    assert status["health_status"] == "OK"
    logs = (await sbff.client.get(f"/api/server/{body['id']}/logs", headers=auth(token))).json()
    assert any("Authorised" in line["message"] for line in logs["results"])


async def test_oauth_deny_marks_the_connection_error(sbff: BFF) -> None:
    token = await customer(sbff)
    created = (
        await sbff.client.post("/api/servers", json={"servertype_id": "sandbox_crm"}, headers=auth(token))
    ).json()
    callback = await authorize(sbff.client, created, decision="deny")
    assert callback.status_code == 200 and "denied" in callback.text
    status = (await sbff.client.get(f"/api/server/{created['id']}", headers=auth(token))).json()
    assert status["health_status"] == "ERROR" and "denied" in status["detail"]


async def test_callback_state_missing_tampered_or_replayed(sbff: BFF) -> None:
    token = await customer(sbff)
    created = (
        await sbff.client.post("/api/servers", json={"servertype_id": "sandbox_crm"}, headers=auth(token))
    ).json()
    page = await sbff.client.get(await start_sign_in(sbff.client, created))
    decision = await sbff.client.post(
        "/sandbox/crm/oauth/decision", data={**consent_form(page.text), "decision": "allow"}
    )
    location = urlsplit(decision.headers["location"])
    params = parse_qs(location.query)
    code, state = params["code"][0], params["state"][0]

    missing = await sbff.client.get("/oauth/callback", params={"code": code})
    tampered = await sbff.client.get("/oauth/callback", params={"code": code, "state": state[:-2] + "xx"})
    for response in (missing, tampered):
        assert response.status_code == 400 and response.headers["referrer-policy"] == "no-referrer"
    still = (await sbff.client.get(f"/api/server/{created['id']}", headers=auth(token))).json()
    assert still["health_status"] == "AUTHORIZING"  # nothing changed

    good = await sbff.client.get("/oauth/callback", params={"code": code, "state": state})
    assert good.status_code == 200
    replayed = await sbff.client.get("/oauth/callback", params={"code": code, "state": state})
    assert replayed.status_code == 400 and "already used" in replayed.text
    assert await connection_count(sbff, token) == 1


async def test_wrong_pkce_challenge_fails_at_the_sandbox_token_endpoint(sbff: BFF) -> None:
    token = await customer(sbff)
    created = (
        await sbff.client.post("/api/servers", json={"servertype_id": "sandbox_crm"}, headers=auth(token))
    ).json()
    # Swap the challenge for another valid-looking one: the verifier we hold no longer matches.
    provider_url = await start_sign_in(sbff.client, created)
    query = parse_qs(urlsplit(provider_url).query)
    forged_challenge = "A" * 43
    forged = provider_url.replace(query["code_challenge"][0], forged_challenge)
    callback = await authorize(sbff.client, forged)
    assert "Could not complete authorisation" in callback.text
    status = (await sbff.client.get(f"/api/server/{created['id']}", headers=auth(token))).json()
    assert status["health_status"] == "ERROR" and "invalid_grant" in status["detail"]


async def test_reauthorise_oauth_and_key_connectors(sbff: BFF) -> None:
    token = await customer(sbff)
    crm = await connect_crm(sbff.client, token)
    reauth = await sbff.client.post(f"/api/server/{crm['id']}/reauthorise", headers=auth(token))
    assert reauth.status_code == 200 and "auth_uri" in reauth.json()
    assert (await sbff.client.get(f"/api/server/{crm['id']}", headers=auth(token))).json()[
        "health_status"
    ] == "RE_AUTHORISING"
    await authorize(sbff.client, reauth.json())
    assert (await sbff.client.get(f"/api/server/{crm['id']}", headers=auth(token))).json()[
        "health_status"
    ] == "RE_AUTHORISED"

    bank = await connect_bank(sbff.client, token)
    form = (await sbff.client.post(f"/api/server/{bank['id']}/reauthorise", headers=auth(token))).json()
    assert [f["name"] for f in form["form"]["fields"]] == ["login", "password"]
    rejected = await sbff.client.post(
        f"/api/server/{bank['id']}/reauthorise", json={"login": "sandbox", "password": "bad"}, headers=auth(token)
    )
    assert rejected.status_code == 422
    ok = await sbff.client.post(
        f"/api/server/{bank['id']}/reauthorise", json={"login": "sandbox", "password": "sandbox"}, headers=auth(token)
    )
    assert ok.status_code == 200 and ok.json()["health_status"] == "RE_AUTHORISED"
    none = await sbff.client.post(f"/api/server/{crm['id']}/manual-refresh", headers=auth(token))
    assert none.status_code == 400 and none.json()["code"] == "manual_refresh_not_supported"


async def test_delete_connection(sbff: BFF) -> None:
    token = await customer(sbff)
    bank = await connect_bank(sbff.client, token)
    assert (await sbff.client.delete(f"/api/server/{bank['id']}", headers=auth(token))).status_code == 204
    assert (await sbff.client.get(f"/api/server/{bank['id']}", headers=auth(token))).status_code == 404
    assert (await sbff.client.delete(f"/api/server/{bank['id']}/", headers=auth(token))).status_code == 404


async def test_sub_accounts_never_reach_each_others_connections(sbff: BFF) -> None:
    alice = await customer(sbff, "alice")
    bob = await customer(sbff, "bob")
    theirs = await connect_bank(sbff.client, alice)
    crm = await connect_crm(sbff.client, alice)
    mine = await connect_bank(sbff.client, bob)
    for connection_id in (theirs["id"], crm["id"]):
        for method, path in [
            ("GET", f"/api/server/{connection_id}"),
            ("DELETE", f"/api/server/{connection_id}"),
            ("GET", f"/api/server/{connection_id}/logs"),
            ("GET", f"/api/server/{connection_id}/config-options"),
            ("POST", f"/api/server/{connection_id}/config"),
            ("POST", f"/api/server/{connection_id}/reauthorise"),
            ("POST", f"/api/server/{connection_id}/manual-refresh"),
            ("POST", f"/api/server/{connection_id}/sync"),
            ("GET", f"/api/server/{connection_id}/health"),
            ("GET", f"/api/server/{connection_id}/sync-status"),
            ("GET", f"/api/server/{connection_id}/runs"),
        ]:
            response = await sbff.client.request(method, path, json={"login": "x", "password": "y"}, headers=auth(bob))
            assert response.status_code == 404, (method, path, response.status_code)
            assert response.json() == {"detail": "No such connection.", "code": "not_found"}
        # Ids in the query or body never select another tenant's connection either.
        listed = await sbff.client.get("/api/servers", params={"id": connection_id}, headers=auth(bob))
        assert [c["id"] for c in listed.json()["results"]] == [mine["id"]]
        sync = await sbff.client.post(f"/api/server/{mine['id']}/config", json={"id": connection_id}, headers=auth(bob))
        assert sync.status_code == 400 and sync.json()["code"] == "no_config_step"
    # Alice's connection is untouched.
    assert (await sbff.client.get(f"/api/server/{theirs['id']}", headers=auth(alice))).status_code == 200


async def test_callback_page_headers_and_target_origin(sbff: BFF) -> None:
    token = await customer(sbff)
    created = (
        await sbff.client.post("/api/servers", json={"servertype_id": "sandbox_crm"}, headers=auth(token))
    ).json()
    callback = await authorize(sbff.client, created)
    assert callback.headers["referrer-policy"] == "no-referrer"
    csp = callback.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'nonce-" in csp and "frame-ancestors 'none'" in csp
    assert "http" not in csp.replace("https:", "")  # nothing third-party allowed
    payload = json.loads(callback.text.split('id="oauth-result">')[1].split("</script>")[0])
    assert payload == {
        "source": "peliqan-oauth",
        "type": "oauth_result",
        "connection_id": created["id"],
        "ok": True,
        "error": None,
        "target_origin": "http://testserver",
    }
    assert "postMessage(result, target)" in callback.text and "BroadcastChannel" in callback.text
    assert "'*'" not in callback.text and '"*"' not in callback.text
    assert "<script src" not in callback.text and "<link" not in callback.text


async def test_embed_session_checks_the_parent_origin(sbff: BFF) -> None:
    token = await customer(sbff)  # its partner registered http://localhost:8001
    ok = await sbff.client.post(
        "/api/embed/session", json={"parent_origin": "http://localhost:8001"}, headers=auth(token)
    )
    assert ok.status_code == 200 and ok.json()["expires_at"] > 0 and ok.json()["external_id"] == "cust-1"
    evil = await sbff.client.post(
        "/api/embed/session", json={"parent_origin": "https://evil.test"}, headers=auth(token)
    )
    assert evil.status_code == 403 and evil.json()["code"] == "origin_not_allowed"


async def test_bad_connection_requests_get_clear_errors(sbff: BFF) -> None:
    token = await customer(sbff)
    for body, field in [
        ({}, "servertype_id"),
        ({"servertype_id": 999}, "servertype_id"),
        ({"servertype_id": True}, "servertype_id"),
        ({"servertype_id": 3, "login": ["x"], "password": "y"}, "login"),
        ({"servertype_id": 3, "login": "a", "password": "b", "name": 5}, "name"),
    ]:
        response = await sbff.client.post("/api/servers", json=body, headers=auth(token))
        assert response.status_code == 400 and field in response.json()["errors"], (body, response.text)
    assert (
        await sbff.client.post(
            "/api/servers", content=b"{", headers={**auth(token), "content-type": "application/json"}
        )
    ).json()["code"] == "invalid_json"
    _, partner_token = await sbff.partner("p2")
    wrong_kind = await sbff.client.get("/api/servers", headers=auth(partner_token))
    assert wrong_kind.status_code == 401 and wrong_kind.json()["code"] == "token_wrong_kind"
    assert await connection_count(sbff, token) == 0


async def test_secrets_never_leave_the_vault(
    sbff: BFF, caplog: pytest.LogCaptureFixture, settings_factory: Callable[..., Settings]
) -> None:
    caplog.set_level(logging.DEBUG)
    token = await customer(sbff)
    bodies: list[str] = []
    bank = await connect_bank(sbff.client, token)
    accounting = await connect_accounting(sbff.client, token)
    crm = await connect_crm(sbff.client, token)
    for connection in (bank, accounting, crm):
        for path in ("", "/logs", "/health", "/runs"):
            bodies.append((await sbff.client.get(f"/api/server/{connection['id']}{path}", headers=auth(token))).text)
    bodies.append((await sbff.client.get("/api/servers", headers=auth(token))).text)
    # The CRM's live tokens, read through the vault (the only way to see them).
    from bff.connections import open_secrets

    stored = await sbff.services.store.connections.get_by_id(crm["id"])
    tokens = open_secrets(sbff.services, stored).tokens
    assert tokens is not None and tokens.access_token and tokens.refresh_token
    secrets = ["sandbox-valid-key", tokens.access_token, tokens.refresh_token]
    bank_secrets = open_secrets(sbff.services, await sbff.services.store.connections.get_by_id(bank["id"])).credentials
    assert bank_secrets == {"login": "sandbox", "password": "sandbox"}
    for secret in secrets:
        for body in bodies:
            assert secret not in body
        assert secret not in caplog.text
        raw = b"".join(p.read_bytes() for p in Path(sbff.services.settings.data_dir).rglob("*") if p.is_file())
        assert secret.encode() not in raw, secret


async def test_reauthorise_never_skips_the_config_step_and_keeps_a_saved_choice(sbff: BFF) -> None:
    token = await customer(sbff)
    headers = auth(token)
    key = {"api_key": "sandbox-valid-key"}
    created = (
        await sbff.client.post("/api/servers", json={"servertype_id": "sandbox_accounting", **key}, headers=headers)
    ).json()
    assert created["health_status"] == "CONFIG_SELECT"
    # No divisions chosen yet: new credentials leave it at the choice, not RE_AUTHORISED (a sync would fail).
    again = await sbff.client.post(f"/api/server/{created['id']}/reauthorise", json=key, headers=headers)
    assert again.status_code == 200 and again.json()["health_status"] == "CONFIG_SELECT"
    sync = await sbff.client.post(f"/api/server/{created['id']}/sync", headers=headers)
    assert sync.status_code == 409 and sync.json()["code"] == "connection_not_ready"
    # With a saved choice, re-authorising keeps it and does not ask again.
    chosen = await connect_accounting(sbff.client, token, divisions=("102",))
    again = await sbff.client.post(f"/api/server/{chosen['id']}/reauthorise", json=key, headers=headers)
    assert again.json()["health_status"] == "RE_AUTHORISED" and again.json()["config"] == {"divisions": ["102"]}


async def test_reauthorise_a_connection_still_authorizing_finishes_it_as_a_first_connect(sbff: BFF) -> None:
    token = await customer(sbff)
    created = (
        await sbff.client.post("/api/servers", json={"servertype_id": "sandbox_crm"}, headers=auth(token))
    ).json()
    resumed = await sbff.client.post(f"/api/server/{created['id']}/reauthorise", headers=auth(token))
    assert resumed.status_code == 200
    assert (await sbff.client.get(f"/api/server/{created['id']}", headers=auth(token))).json()[
        "health_status"
    ] == "AUTHORIZING"
    await authorize(sbff.client, resumed.json())
    assert (await sbff.client.get(f"/api/server/{created['id']}", headers=auth(token))).json()["health_status"] == "OK"


async def test_a_page_of_connections_reads_the_last_runs_in_one_query(
    sbff: BFF, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = await customer(sbff)
    ids = [(await connect_bank(sbff.client, token))["id"] for _ in range(3)]
    for cid in ids[:2]:
        started = await sbff.client.post(f"/api/server/{cid}/sync", headers=auth(token))
        assert started.status_code == 202, started.text
        await sbff.services.sync.wait(cid)
    store = sbff.services.store
    runs = store.runs
    calls: list[list[int]] = []
    batched, single = runs.last_of, runs.last

    async def one_query(connection_ids: list[int]) -> object:
        calls.append(list(connection_ids))
        return await batched(connection_ids)

    async def per_connection(connection_id: int) -> None:
        raise AssertionError("one last_run query per connection")

    monkeypatch.setattr(runs, "last_of", one_query)
    monkeypatch.setattr(runs, "last", per_connection)
    # The rows each connection holds (the panel's "Records"): one count for the whole page too.
    warehouse = sbff.services.warehouse
    counted: list[list[int]] = []
    count_all = warehouse.live_counts

    async def one_count(account_id: int, connection_ids: list[int]) -> dict[int, int]:
        counted.append(list(connection_ids))
        return await count_all(account_id, connection_ids)

    monkeypatch.setattr(warehouse, "live_counts", one_count)
    listed = (await sbff.client.get("/api/servers", headers=auth(token))).json()["results"]
    # (The third connection was counted when it was created and has not run since: not counted again.)
    assert calls == [ids] and counted == [ids[:2]]
    assert [c["last_run"]["status"] if c["last_run"] else None for c in listed] == ["succeeded", "succeeded", None]
    held = {}
    for table, _ in await warehouse.list_tables(listed[0]["account_id"]):
        async with warehouse.servers.connection(table.placement) as conn:
            cur = await conn.execute(sql.SQL("SELECT COUNT(*) AS n FROM {}").format(table.identifier))
            held[table.connection_id] = held.get(table.connection_id, 0) + (await cur.fetchone())["n"]
    assert held[ids[0]] > 0 and [c["live_count"] for c in listed] == [held[ids[0]], held[ids[1]], 0]
    # A panel polling the list does not count again while the last runs are the same (within seconds).
    again = (await sbff.client.get("/api/servers", headers=auth(token))).json()["results"]
    assert counted == [ids[:2]] and [c["live_count"] for c in again] == [c["live_count"] for c in listed]
    # A finished run is a new count at once, for that connection only.
    monkeypatch.setattr(runs, "last", single)  # the sync itself reads its connection's last run
    started = await sbff.client.post(f"/api/server/{ids[1]}/sync", headers=auth(token))
    assert started.status_code == 202, started.text
    await sbff.services.sync.wait(ids[1])
    monkeypatch.setattr(runs, "last", per_connection)
    listed = (await sbff.client.get("/api/servers", headers=auth(token))).json()["results"]
    assert counted == [ids[:2], [ids[1]]] and listed[1]["live_count"] == held[ids[1]]


async def test_servers_and_servertypes_take_page_and_page_size(sbff: BFF) -> None:
    token = await customer(sbff)
    ids = [(await connect_bank(sbff.client, token))["id"] for _ in range(3)]
    first = (await sbff.client.get("/api/servers?page=1&page_size=2", headers=auth(token))).json()
    assert first["count"] == 3 and [c["id"] for c in first["results"]] == ids[:2]
    assert first["previous"] is None and "page=2" in first["next"] and "page_size=2" in first["next"]
    second = (
        await sbff.client.get(urlsplit(first["next"]).path + "?" + urlsplit(first["next"]).query, headers=auth(token))
    ).json()
    assert [c["id"] for c in second["results"]] == ids[2:] and second["next"] is None and "page=1" in second["previous"]
    everything = (await sbff.client.get("/api/servertypes", headers=auth(token))).json()
    types = (await sbff.client.get("/api/servertypes?page=2&page_size=2", headers=auth(token))).json()
    assert types["count"] == everything["count"] and types["results"] == everything["results"][2:4]
    assert "page=1" in types["previous"]
    for path in ("/api/servers?page=0", "/api/servertypes?page_size=501", "/api/servers?page_size=x"):
        bad = await sbff.client.get(path, headers=auth(token))
        assert bad.status_code == 400 and bad.json()["code"] == "validation_error", path


async def test_connector_text_follows_the_locale_parameter(sbff: BFF) -> None:
    token = await customer(sbff)

    async def bank_fields(query: str) -> dict[str, dict[str, object]]:
        items = (await sbff.client.get(f"/api/servertypes{query}", headers=auth(token))).json()["results"]
        bank = next(i for i in items if i["name"] == "sandbox_bank")
        return {f["name"]: f for f in bank["connect_form"]["fields"]}

    assert (await bank_fields(""))["login"]["label"] == "Login"
    nl = await bank_fields("?locale=nl")
    assert nl["login"]["label"] == "Gebruikersnaam" and nl["login"]["help"] == "Gebruik sandbox."
    assert (await bank_fields("?locale=de-AT"))["password"]["label"] == "Passwort"
    bad = await sbff.client.get("/api/servertypes?locale=es", headers=auth(token))
    assert bad.status_code == 400 and bad.json()["code"] == "validation_error" and "locale" in bad.json()["errors"]

    accounting = (
        await sbff.client.post(
            "/api/servers",
            json={"servertype_id": "sandbox_accounting", "api_key": "sandbox-valid-key"},
            headers=auth(token),
        )
    ).json()
    step = (
        await sbff.client.get(f"/api/server/{accounting['id']}/config-options?locale=fr", headers=auth(token))
    ).json()
    assert step["label"] == "Divisions" and step["help"].startswith("Choisissez")
    bank = await connect_bank(sbff.client, token)
    form = (await sbff.client.post(f"/api/server/{bank['id']}/reauthorise?locale=nl", headers=auth(token))).json()[
        "form"
    ]
    assert [f["label"] for f in form["fields"]] == ["Gebruikersnaam", "Wachtwoord"]
