"""Scripts across processes, as production runs them: a web process (`bff serve --no-worker`)
takes the request, a `bff worker` runs the script, and the script reaches the API through that
worker's own socket. Deleting the script on a web process stops it on the worker; a worker killed
mid-run leaves a failed run (found by the other worker's watchdog), never a second run."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from scripts_helpers import processes_of, running_as_root
from test_multiprocess import cluster  # noqa: F401 - the fixture

from bff.scripts.sandbox import run_user

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(not running_as_root(), reason="finds a run's processes by their own user id (root only)"),
]


def _ppid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(pid)


def _worker_running(run_id: int, timeout: float = 30) -> int:
    """The pid of the worker whose sandbox runs this run (the first ancestor that is not bubblewrap)."""
    uid = run_user(run_id)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in processes_of(uid):
            try:
                parent = _ppid(pid)
            except (OSError, AssertionError):
                continue
            # Up past the bubblewrap processes (as root there are two: the outer one is root's).
            while parent and Path(f"/proc/{parent}/comm").read_text().strip() == "bwrap":
                parent = _ppid(parent)
            if parent and os.stat(f"/proc/{parent}").st_uid == 0:
                return parent
        time.sleep(0.1)
    raise AssertionError(f"no sandbox of run {run_id} appeared")


def _wait_run(web: str, headers: dict[str, str], script: int, run_id: int, status: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        run = httpx.get(f"{web}/api/interface/{script}/runs/{run_id}", headers=headers).json()
        if run.get("status") == status:
            return run
        assert time.monotonic() < deadline, run
        time.sleep(0.2)


def test_scripts_on_workers_stop_when_deleted_and_fail_when_their_worker_dies(
    cluster: dict[str, Any],  # noqa: F811
) -> None:
    web0, web1 = cluster["webs"]
    partner = {"Authorization": f"Bearer {cluster['partner_token']}"}
    identity = httpx.get(f"{web0}/api/partner/sub-account/identity/?external_id=scripts-1", headers=partner)
    if identity.status_code == 404:
        httpx.post(f"{web0}/api/partner/sub-account/", json={"external_id": "scripts-1"}, headers=partner)
        identity = httpx.get(f"{web0}/api/partner/sub-account/identity/?external_id=scripts-1", headers=partner)
    headers = {"Authorization": f"Bearer {identity.json()['token']}"}

    # 1. Saved on one web process, run through the other, executed by a worker.
    code = "pq.set_state({'seen': True})\nprint(pq.get_state(), pq.api().applications()[0]['name'])"
    script = httpx.post(f"{web0}/api/interface", json={"name": "hello", "raw_code": code}, headers=headers).json()
    run = httpx.post(f"{web1}/api/interface/{script['id']}/run?wait=60", headers=headers, timeout=70).json()
    assert run["status"] == "succeeded", run
    assert run["output"] == "{'seen': True} Warehouse\n"

    # 2. Deleted on a web process while a worker runs it: the worker stops it.
    sleeper = httpx.post(
        f"{web0}/api/interface", json={"name": "sleeper", "raw_code": "import time\ntime.sleep(300)"}, headers=headers
    ).json()
    started = httpx.post(f"{web0}/api/interface/{sleeper['id']}/run", headers=headers).json()
    _worker_running(started["id"])
    assert httpx.delete(f"{web1}/api/interface/{sleeper['id']}", headers=headers).status_code == 204
    deadline = time.monotonic() + 5
    while processes_of(run_user(started["id"])):
        assert time.monotonic() < deadline, "the deleted script's sandbox is still running"
        time.sleep(0.1)

    # 3. Its worker killed mid-run: the other worker's watchdog fails the run; nothing runs it again.
    victim_script = httpx.post(
        f"{web0}/api/interface", json={"name": "victim", "raw_code": "import time\ntime.sleep(300)"}, headers=headers
    ).json()
    victim_run = httpx.post(f"{web0}/api/interface/{victim_script['id']}/run", headers=headers).json()
    worker = _worker_running(victim_run["id"])
    procs = cluster["procs"].procs
    assert worker in {p.pid for name, p in procs.items() if name.startswith("worker")}
    os.kill(worker, signal.SIGKILL)
    failed = _wait_run(web1, headers, victim_script["id"], victim_run["id"], "failed")
    assert failed["error"] == "The worker running this script stopped; run it again."
    deadline = time.monotonic() + 5
    while processes_of(run_user(victim_run["id"])):  # --die-with-parent took the sandbox down with it
        assert time.monotonic() < deadline, "the dead worker's sandbox is still running"
        time.sleep(0.1)
    again = httpx.post(f"{web1}/api/interface/{victim_script['id']}/run?wait=5", headers=headers, timeout=20)
    assert again.status_code in (200, 202) and again.json()["id"] != victim_run["id"]
