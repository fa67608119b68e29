"""A real `kill -9` of a `bff serve` process mid-sync, then a restart on the same data directory."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bff.settings import generate_encryption_key, generate_secret_key

from conftest import free_port

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")


class Server:
    """`python -m bff.cli serve` in a subprocess on a fixed port and data directory."""

    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.env, self.port, self.log = env, port, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bff.cli", "serve", "--port", str(self.port)],
                env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bff serve exited:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("bff serve did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    env = {
        **os.environ,
        "BFF_SECRET_KEYS": generate_secret_key(),
        "BFF_ENCRYPTION_KEY": generate_encryption_key(),
        "BFF_DATA_DIR": str(tmp_path / "data"),
        "BFF_SANDBOX": "1",
        "BFF_SANDBOX_CONTROLS": "open",
        # Each provider page takes this long, so the sync is still going when it is killed.
        "BFF_SANDBOX_LATENCY_MS": "400",
        "BFF_LOG_LEVEL": "warning",
    }
    env.pop("BFF_PUBLIC_URL", None)
    instance = Server(env, free_port(), tmp_path / "server.log")
    try:
        yield instance
    finally:
        instance.stop()


def partner_token(env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "bff.cli", "partner", "create", "--name", "crash-test"],
        env=env, capture_output=True, check=True,
    )
    return str(json.loads(out.stdout)["token"])


def invoices_table(client: httpx.Client) -> dict[str, Any] | None:
    apps = client.get("/api/applications/").json()
    return next((t for t in apps["results"][0]["tables"] if t["name"] == "invoices"), None)


def wait_idle(client: httpx.Client, connection_id: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while client.get(f"/api/server/{connection_id}/sync-status").json()["running"]:
        assert time.monotonic() < deadline, "the sync did not finish"
        time.sleep(0.05)


def test_kill_9_mid_sync_then_restart_resumes_without_duplicates(server: Server) -> None:
    token = partner_token(server.env)
    server.start()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        minted = client.post("/api/partner/sub-account/integrate/", json={"external_id": "crash"}, headers={"Authorization": f"Bearer {token}"})
        client.headers["Authorization"] = f"Bearer {minted.json()['token']}"
        account_id = minted.json()["account_id"]
        created = client.post("/api/servers", json={"servertype_id": "sandbox_accounting", "api_key": "sandbox-valid-key"}).json()
        assert client.post(f"/api/server/{created['id']}/config", json={"divisions": ["101", "102", "103"]}).status_code == 200
        assert client.post(f"/api/server/{created['id']}/sync").status_code == 202

        # Kill as soon as the first page (one division of 500) is committed, with the rest still to come.
        deadline = time.monotonic() + 20
        while (table := invoices_table(client)) is None or table["row_count"] < 500:
            assert time.monotonic() < deadline, "no page was written"
            time.sleep(0.02)
        server.kill()

    data_dir = Path(server.env["BFF_DATA_DIR"])
    with sqlite3.connect(data_dir / "bff.sqlite3") as control:
        assert control.execute("SELECT status FROM runs").fetchall() == [("running",)]  # what the dead process left
    with sqlite3.connect(data_dir / "warehouse" / f"{account_id}.sqlite3") as warehouse:
        (physical,) = warehouse.execute("SELECT physical FROM _tables").fetchone()
        rows_at_kill = warehouse.execute(f'SELECT COUNT(*) FROM "{physical}"').fetchone()[0]
    assert 500 <= rows_at_kill < 1500 and rows_at_kill % 500 == 0  # whole pages only

    server.start()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        client.headers["Authorization"] = f"Bearer {minted.json()['token']}"
        runs = client.get(f"/api/server/{created['id']}/runs").json()["results"]
        assert [run["status"] for run in runs] == ["interrupted"]
        assert client.get(f"/api/server/{created['id']}/sync-status").json()["running"] is False
        health = client.get(f"/api/server/{created['id']}/health").json()
        assert health["health_status"] == "ERROR" and "interrupted" in health["detail"]

        assert client.post(f"/api/server/{created['id']}/sync").status_code == 202
        wait_idle(client, created["id"])
        resumed = client.get(f"/api/server/{created['id']}/runs").json()["results"][0]
        assert resumed["status"] == "succeeded"
        # It resumed from the saved cursor: only what the killed run had not stored was fetched.
        assert resumed["records"] == {"invoices": 1500 - rows_at_kill}
        stats = client.get("/sandbox/_control/stats").json()
        assert stats["records_served"]["accounting.invoices"] == 1500 - rows_at_kill
        assert client.get(f"/api/server/{created['id']}/health").json()["health_status"] == "HEALTHY"

        table = invoices_table(client)
        assert table is not None and table["row_count"] == 1500
        ids: list[str] = []
        url: str | None = f"/api/database/rows/table/{table['id']}/?user_field_names=True&page_size=500"
        while url:
            page = client.get(url).json()
            ids += [row["id"] for row in page["results"]]
            url = page["next"]
        assert len(ids) == 1500 and len(set(ids)) == 1500
        assert {i.rsplit("_", 1)[0] for i in ids} == {"inv_101", "inv_102", "inv_103"}
