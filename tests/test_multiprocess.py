"""Several processes on one PostgreSQL, as production runs: two `bff serve --no-worker`, two
`bff worker`, and the sandbox providers in a process of their own (`bff sandbox`).

Twenty customers connect the CRM (OAuth, through the real consent page) and the bank; each
connection gets ten concurrent sync requests spread over both web processes. Mid-way, one
worker is killed with SIGKILL. Every run still finishes (the other worker's watchdog re-queues
the dead worker's runs and they resume from their cursors), a connection never has two runs at
once, and every customer's warehouse holds exactly the sandbox's records, once each.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row
from sandbox_flows import consent_form, start_sign_in

from bff.settings import generate_encryption_key, generate_secret_key
from bff.testing import free_port

CUSTOMERS = 20
REQUESTS_PER_CONNECTION = 10
EXPECTED = {"contacts": 1250, "deals": 300, "transactions": 200}

pytestmark = pytest.mark.timeout(300)


class Processes:
    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.env = env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
        log = (self.tmp_path / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "bff.cli", *args], env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT
        )
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.tmp_path / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_until_up(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{url} exited with {proc.returncode}"
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not come up")


@pytest.fixture
def cluster(tmp_path: Path, database_url: str) -> Iterator[dict[str, Any]]:
    sandbox_port, web_ports = free_port(), [free_port(), free_port()]
    sandbox_url = f"http://127.0.0.1:{sandbox_port}"
    webs = [f"http://127.0.0.1:{port}" for port in web_ports]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BFF_")}
    env = {
        **clean,
        "BFF_DATABASE_URL": database_url,
        "BFF_DATA_DIR": str(tmp_path / "data"),
        "BFF_SECRET_KEYS": generate_secret_key(),
        "BFF_ENCRYPTION_KEY": generate_encryption_key(),
        "BFF_SANDBOX": "true",
        "BFF_SANDBOX_URL": sandbox_url,
        "BFF_SANDBOX_REDIRECT_URIS": " ".join(f"{web}/oauth/callback" for web in webs),
        "BFF_SANDBOX_LATENCY_MS": "10",
        "BFF_WORKER_HEARTBEAT_SECONDS": "0.5",
        "BFF_WORKER_STALLED_SECONDS": "3",
        "BFF_LOG_LEVEL": "warning",
        # Only the syncs this test asks for (its counts and "worker0 runs one" assume them);
        # scheduled syncs across processes: tests/test_schedules.py.
        "BFF_SCHEDULES": "false",
    }
    procs = Processes(tmp_path, env)
    try:
        sandbox = procs.start("sandbox", "sandbox", "--port", str(sandbox_port))
        for i, port in enumerate(web_ports):
            web = procs.start(f"web{i}", "serve", "--no-worker", "--port", str(port), "--public-url", webs[i])
            wait_until_up(f"{webs[i]}/healthz", web)
        wait_until_up(f"{sandbox_url}/_control/stats", sandbox)
        for i in range(2):
            procs.start(f"worker{i}", "worker", "--concurrency", "4")
        created = subprocess.run(
            [
                sys.executable,
                "-m",
                "bff.cli",
                "partner",
                "create",
                "--name",
                "multi",
                "--origin",
                "http://localhost:8001",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        import json

        yield {
            "webs": webs,
            "sandbox": sandbox_url,
            "partner_token": json.loads(created.stdout)["token"],
            "procs": procs,
            "db": database_url,
        }
    finally:
        procs.stop_all()


async def connect(client: httpx.AsyncClient, web: str, sandbox: str, token: str) -> list[int]:
    headers = {"Authorization": f"Bearer {token}"}
    crm = await client.post(f"{web}/api/servers", json={"servertype_id": "sandbox_crm"}, headers=headers)
    assert crm.status_code == 201, crm.text
    page = await client.get(await start_sign_in(client, crm.json()))  # the browser binding (issue 16)
    decision = await client.post(f"{sandbox}/crm/oauth/decision", data={**consent_form(page.text), "decision": "allow"})
    assert decision.status_code == 302, decision.text
    callback = await client.get(decision.headers["location"])
    assert callback.status_code == 200, callback.text
    bank = await client.post(
        f"{web}/api/servers",
        json={"servertype_id": "sandbox_bank", "login": "sandbox", "password": "sandbox"},
        headers=headers,
    )
    assert bank.status_code == 201, bank.text
    return [crm.json()["id"], bank.json()["id"]]


def runs_of(db: str) -> list[dict[str, Any]]:
    with psycopg.connect(db, row_factory=dict_row) as conn:
        return conn.execute(
            "SELECT id, connection_id, status, records, error, pid, attempts, started_at, finished_at FROM runs"
        ).fetchall()


async def test_two_web_processes_and_two_workers_share_the_work_and_survive_a_killed_worker(
    cluster: dict[str, Any],
) -> None:
    webs, sandbox, procs, db = cluster["webs"], cluster["sandbox"], cluster["procs"], cluster["db"]
    async with httpx.AsyncClient(timeout=60) as client:
        tokens, connections = {}, {}
        for n in range(CUSTOMERS):
            minted = await client.post(
                f"{webs[n % 2]}/api/partner/sub-account/integrate/",
                json={"external_id": f"multi-{n}"},
                headers={"Authorization": f"Bearer {cluster['partner_token']}"},
            )
            assert minted.status_code == 200, minted.text
            tokens[n] = minted.json()["token"]
            for connection_id in await connect(client, webs[n % 2], sandbox, tokens[n]):
                connections[connection_id] = n

        async def request(connection_id: int, i: int) -> int:
            answer = await client.post(
                f"{webs[i % 2]}/api/server/{connection_id}/sync",
                headers={"Authorization": f"Bearer {tokens[connections[connection_id]]}"},
            )
            assert answer.status_code in (202, 409), answer.text
            if answer.status_code == 409:
                assert answer.json()["code"] == "sync_already_running"
            return answer.status_code

        answers = await asyncio.gather(
            *(request(cid, i) for cid in connections for i in range(REQUESTS_PER_CONNECTION))
        )
        assert answers.count(202) >= len(connections)

        # Kill one worker with SIGKILL while it is running syncs.
        victim = procs.procs["worker0"]
        deadline = time.monotonic() + 60
        while not any(r["status"] == "running" and r["pid"] == victim.pid for r in runs_of(db)):
            assert time.monotonic() < deadline, "worker0 never ran a sync"
            await asyncio.sleep(0.05)
        victim.kill()
        victim.wait()

        deadline = time.monotonic() + 240
        while any(r["status"] in ("queued", "running", "waiting") for r in runs_of(db)):
            assert time.monotonic() < deadline, (
                f"runs still active: {[r for r in runs_of(db) if r['status'] != 'succeeded']}\n{procs.log('worker1')[-3000:]}"
            )
            await asyncio.sleep(0.2)

    runs = runs_of(db)
    # A failure names each run's error and shows the workers' last log lines (their files go with tmp_path).
    assert {r["status"] for r in runs} == {"succeeded"}, (
        [(r["id"], r["connection_id"], r["status"], r["error"]) for r in runs if r["status"] != "succeeded"],
        {name: procs.log(name)[-4000:] for name in ("worker0", "worker1")},
    )
    assert any(r["attempts"] >= 2 for r in runs), "no run was taken over from the killed worker"
    # Never two runs of one connection at the same time.
    by_connection: dict[int, list[dict[str, Any]]] = {}
    for r in runs:
        by_connection.setdefault(r["connection_id"], []).append(r)
    assert set(by_connection) == set(connections)
    for connection_runs in by_connection.values():
        spans = sorted((r["started_at"], r["finished_at"]) for r in connection_runs)
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            assert end <= start
    # Every customer's warehouse holds each record exactly once.
    with psycopg.connect(db, row_factory=dict_row) as conn:
        tables = conn.execute(
            "SELECT t.stream, t.physical, t.schema_name, p.database FROM warehouse_tables t"
            " JOIN warehouse_placements p ON p.sub_account_id = t.sub_account_id"
        ).fetchall()
    assert len(tables) == CUSTOMERS * 3
    assert len({t["database"] for t in tables}) == CUSTOMERS  # a database per customer
    for t in tables:
        with psycopg.connect(make_conninfo(db, dbname=t["database"]), row_factory=dict_row) as conn:
            counts = conn.execute(
                f'SELECT COUNT(*) AS n, COUNT(DISTINCT id) AS distinct_ids FROM "{t["schema_name"]}"."{t["physical"]}"'
            ).fetchone()
            assert counts == {"n": EXPECTED[t["stream"]], "distinct_ids": EXPECTED[t["stream"]]}, t
