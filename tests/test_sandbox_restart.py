"""The sandbox keeps its sign-ins and written records in the data directory: a restart changes nothing."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from conftest import free_port, running_bff
from records_helpers import crm, customer
from sandbox_flows import consent_form
from sync_helpers import all_rows, health, sync, tables

from bff.sandbox import SandboxOptions, create_sandbox_app
from bff.settings import Settings


async def test_a_restarted_bff_keeps_the_crm_sign_in_and_the_written_contact(
    settings_factory: Callable[..., Settings],
) -> None:
    # Access tokens live 1 s: after the restart the BFF refreshes with the refresh token kept on disk.
    settings = settings_factory(sandbox_enabled=True, sandbox_env={"BFF_SANDBOX_ACCESS_TOKEN_TTL": "1"})
    async with running_bff(settings) as bff:
        who = await customer(bff)
        cid = await crm(bff, who)
        assert (await sync(bff, who.identity, cid))["status"] == "succeeded"
        added = await bff.client.post(
            f"/api/server/{cid}/records/contact",
            json={"email": "kept@acme.test", "first_name": "Kept"},
            headers=who.headers,
        )
        assert added.status_code == 201, added.text
        assert added.json()["id"] == "c_1251"
        gone = await bff.client.delete(f"/api/server/{cid}/records/contact/c_0002", headers=who.headers)
        assert gone.status_code == 204, gone.text
    assert (settings.data_dir / "sandbox.sqlite3").stat().st_mode & 0o777 == 0o600

    await asyncio.sleep(1.1)  # the access token has expired
    async with running_bff(settings) as bff:
        run = await sync(bff, who.identity, cid)
        assert run["status"] == "succeeded", run
        assert (await health(bff, who.identity, cid))["health_status"] == "HEALTHY"
        contacts = await all_rows(bff.client, who.identity, (await tables(bff.client, who.identity))["contacts"]["id"])
        assert contacts[-1]["id"] == "c_1251" and contacts[-1]["email"] == "kept@acme.test"
        assert len(contacts) == 1251  # a deleted row stays in the warehouse, marked
        missing = await bff.client.get(f"/api/server/{cid}/records/contact/c_0002", headers=who.headers)
        # Deleted before the restart, still deleted.
        assert missing.status_code == 422 and "There is no contact c_0002." in missing.text, missing.text
        got = await bff.client.get(f"/api/server/{cid}/records/contact/c_1251", headers=who.headers)
        assert got.status_code == 200 and got.json()["record"]["first_name"] == "Kept", got.text
        # Record ids carry on where they were: nothing written before the restart is overwritten.
        again = await bff.client.post(
            f"/api/server/{cid}/records/contact", json={"email": "next@acme.test"}, headers=who.headers
        )
        assert again.status_code == 201 and again.json()["id"] == "c_1252", again.text

        # A provider that stops accepting the sign-in: the remedy is said once.
        await bff.client.post("/sandbox/_control/revoke", json={"provider": "crm"})
        await asyncio.sleep(1.1)
        assert (await sync(bff, who.identity, cid))["status"] == "failed"
        detail = (await health(bff, who.identity, cid))["detail"]
        assert detail == (
            "Sandbox CRM no longer accepts this authorisation (invalid_grant: Access to Sandbox CRM has been"
            " revoked). Re-authorise this connection to resume syncing."
        ), detail

    # The revocation is kept too.
    async with running_bff(settings) as bff:
        assert (await sync(bff, who.identity, cid))["status"] == "failed"


async def test_the_sandbox_app_keeps_tokens_records_and_revocations_in_its_state_dir(tmp_path: Path) -> None:
    options = SandboxOptions(controls_open=True, redirect_uris=("http://client.test/cb",))

    def client(app: object) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sandbox.test")  # type: ignore[arg-type]

    verifier = "v" * 43
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    first = create_sandbox_app(options, state_dir=tmp_path)
    async with client(first) as sandbox:
        params = {
            "response_type": "code",
            "client_id": "bff-sandbox",
            "redirect_uri": "http://client.test/cb",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        page = await sandbox.get("/crm/oauth/authorize", params=params)
        decided = await sandbox.post("/crm/oauth/decision", data={**consent_form(page.text), "decision": "allow"})
        code = parse_qs(urlsplit(decided.headers["location"]).query)["code"][0]
        tokens = (
            await sandbox.post(
                "/crm/oauth/token",
                data={
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": "http://client.test/cb",
                    "code_verifier": verifier,
                },
                auth=("bff-sandbox", "bff-sandbox-secret"),
            )
        ).json()
        bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
        deal = await sandbox.post("/crm/api/deals", json={"name": "Kept deal", "amount": 5}, headers=bearer)
        assert deal.status_code == 201 and deal.json()["id"] == "d_301"
        invoice = await sandbox.post(
            "/accounting/api/divisions/102/invoices",
            json={"customer": "Kept BV", "amount": 10},
            headers={"X-API-Key": "sandbox-valid-key"},
        )
        assert invoice.status_code == 201 and invoice.json()["id"] == "inv_102_0501"
        touched = (await sandbox.post("/_control/touch", json={"resource": "crm.contacts", "count": 3})).json()
        deleted = (await sandbox.post("/_control/delete", json={"resource": "crm.contacts", "count": 2})).json()
        message = await sandbox.post(
            "/chat/api/messages",
            json={"channel": "general", "text": "kept"},
            headers={"Authorization": "Bearer sandbox-chat-key"},
        )
        assert message.status_code == 201, message.text
        await sandbox.post("/_control/revoke", json={"provider": "bank"})
        before = (await sandbox.get("/crm/api/contacts", params={"limit": 500}, headers=bearer)).json()

    # Neither a token nor a record is kept as sent: tokens by hash only.
    raw = (tmp_path / "sandbox.sqlite3").read_bytes() + b"".join(p.read_bytes() for p in tmp_path.glob("*-wal"))
    assert tokens["access_token"].encode() not in raw and tokens["refresh_token"].encode() not in raw

    second = create_sandbox_app(options, state_dir=tmp_path)
    async with client(second) as sandbox:
        assert (await sandbox.get("/crm/api/me", headers=bearer)).status_code == 200
        after = (await sandbox.get("/crm/api/contacts", params={"limit": 500}, headers=bearer)).json()
        assert after == before
        # Touched after the last fixture (2026-01-01T20:50:00Z), marked as edited.
        recent = await sandbox.get(
            "/crm/api/contacts", params={"updated_after": "2026-01-01T20:50:00Z"}, headers=bearer
        )
        assert [(r["id"], r["last_name"].endswith(" (edited)")) for r in recent.json()["results"]] == [
            (record_id, True) for record_id in touched["touched"]
        ]
        deleted_list = (await sandbox.get("/crm/api/contacts/deleted", headers=bearer)).json()["results"]
        assert [d["id"] for d in deleted_list] == deleted["deleted"]
        assert (await sandbox.get("/crm/api/deals/d_301", headers=bearer)).json()["name"] == "Kept deal"
        kept = await sandbox.get("/accounting/api/invoices/inv_102_0501", headers={"X-API-Key": "sandbox-valid-key"})
        assert kept.json()["customer"] == "Kept BV"
        bank = await sandbox.get("/bank/api/accounts", auth=("sandbox", "sandbox"))
        assert bank.status_code == 401  # still revoked
        refreshed = await sandbox.post(
            "/crm/oauth/token",
            data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
            auth=("bff-sandbox", "bff-sandbox-secret"),
        )
        assert refreshed.status_code == 200, refreshed.text
        new_deal = await sandbox.post(
            "/crm/api/deals",
            json={"name": "Next"},
            headers={"Authorization": f"Bearer {refreshed.json()['access_token']}"},
        )
        assert new_deal.json()["id"] == "d_302"
    # The spent refresh token stays spent after another restart.
    third = create_sandbox_app(options, state_dir=tmp_path)
    async with client(third) as sandbox:
        spent = await sandbox.post(
            "/crm/oauth/token",
            data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
            auth=("bff-sandbox", "bff-sandbox-secret"),
        )
        assert spent.status_code == 400 and spent.json()["error"] == "invalid_grant"
    with sqlite3.connect(tmp_path / "sandbox.sqlite3") as db:
        assert db.execute("SELECT COUNT(*) FROM tokens WHERE kind = 'refresh'").fetchone() == (1,)


def start_sandbox(data_dir: Path, port: int) -> tuple[subprocess.Popen[str], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BFF_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bff.cli", "sandbox", "--port", str(port), "--data-dir", str(data_dir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline()


def test_bff_sandbox_says_where_it_listens_and_keeps_its_records_across_restarts(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    chat = {"Authorization": "Bearer sandbox-chat-key"}
    proc, line = start_sandbox(tmp_path, port)
    try:
        assert line == (
            f"bff sandbox: Sandbox CRM, Accounting, Bank and Chat on {base} (sign-ins and records kept in"
            f" {(tmp_path / 'sandbox.sqlite3').resolve()}; /_control off (set BFF_SANDBOX_ADMIN_KEY)). Ctrl-C stops.\n"
        )
        posted = httpx.post(f"{base}/chat/api/messages", json={"channel": "qa", "text": "still here"}, headers=chat)
        assert posted.status_code == 201, posted.text
        # One sandbox per data directory; a port in use is one line too.
        second = subprocess.run(
            [sys.executable, "-m", "bff.cli", "sandbox", "--port", str(free_port()), "--data-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2 and second.stderr == (
            f"bff: error: another sandbox (pid {proc.pid}) is using the data directory {tmp_path.resolve()};"
            " stop it first, or pass another --data-dir.\n"
        )
        taken = subprocess.run(
            [sys.executable, "-m", "bff.cli", "sandbox", "--port", str(port), "--data-dir", str(tmp_path / "other")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert taken.returncode == 2 and taken.stderr.startswith(f"bff: error: port {port} on 127.0.0.1 is in use")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
    proc, line = start_sandbox(tmp_path, port)
    try:
        assert line.startswith("bff sandbox: ")
        messages = httpx.get(f"{base}/chat/api/messages", params={"limit": 500}, headers=chat).json()["messages"]
        assert [m["text"] for m in messages if m["id"] == "m_0061"] == ["still here"]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)


async def test_a_scaled_up_sandbox_builds_a_table_only_when_it_is_used() -> None:
    started = time.monotonic()
    app = create_sandbox_app(SandboxOptions(controls_open=True, scale=251))
    data = app.state.sandbox.data
    assert not {"contacts", "deals", "invoices", "transactions"} & set(vars(data))
    assert time.monotonic() - started < 2
    small = create_sandbox_app(SandboxOptions(controls_open=True, scale=3))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=small), base_url="http://sandbox.test") as sandbox:
        invoice = await sandbox.post(
            "/accounting/api/divisions/101/invoices",
            json={"customer": "Lazy BV", "amount": 1},
            headers={"X-API-Key": "sandbox-valid-key"},
        )
    assert invoice.status_code == 201 and invoice.json()["id"] == "inv_101_1501"  # after 3 × 500 fixtures
    assert set(vars(small.state.sandbox.data)) & {"contacts", "deals", "invoices", "transactions"} == {"invoices"}


async def test_the_in_process_sandbox_times_out_like_a_provider_on_the_network() -> None:
    from bff.connections import SandboxTransport

    slow = create_sandbox_app(SandboxOptions(latency_ms=400))
    transport = SandboxTransport(slow, "http://bff.test/sandbox", httpx.AsyncHTTPTransport())
    async with httpx.AsyncClient(transport=transport, timeout=0.05) as client:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            await client.get("http://bff.test/sandbox/bank/api/accounts", auth=("sandbox", "sandbox"))
        assert time.monotonic() - started < 0.3
        # A timeout longer than the latency: the answer.
        answer = await client.get("http://bff.test/sandbox/bank/api/accounts", auth=("sandbox", "sandbox"), timeout=5)
        assert answer.status_code == 200 and answer.json()["accounts"][0]["id"] == "acc_1"
        # No timeout at all (httpx's None): the answer, however slow.
        answer = await client.get(
            "http://bff.test/sandbox/bank/api/accounts", auth=("sandbox", "sandbox"), timeout=None
        )
        assert answer.status_code == 200
