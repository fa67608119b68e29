"""`bff demo` as a newcomer runs it: two servers on two origins, the URLs printed, Ctrl-C stops both."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import auth, free_port

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGINT")


def start_demo(data_dir: Path, bff_port: int, site_port: int) -> tuple[subprocess.Popen[str], list[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BFF_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bff.cli",
            "demo",
            "--bff-port",
            str(bff_port),
            "--site-port",
            str(site_port),
            "--data-dir",
            str(data_dir),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"bff demo exited early:\n{''.join(lines)}")
        lines.append(line.rstrip("\n"))
        if line.startswith("Press Ctrl-C"):
            return proc, lines
    proc.kill()
    raise AssertionError(f"bff demo did not start:\n{lines}")


def stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    out, _ = proc.communicate(timeout=20)
    return proc.returncode, out


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_bff_demo_serves_both_origins_prints_where_and_stops_cleanly_on_ctrl_c(data_dir_outside_pytest: Path) -> None:
    data_dir = data_dir_outside_pytest / "demo-data"
    bff_port, site_port = free_port(), free_port()
    proc, lines = start_demo(data_dir, bff_port, site_port)
    try:
        printed = "\n".join(lines)
        assert f"http://127.0.0.1:{bff_port}" in printed
        assert f"http://localhost:{site_port}" in printed
        assert str(data_dir.resolve()) in printed
        assert "WARNING: generated demo keys" in printed  # first run: the keys are new, and it says so
        # Which way scripts run (bubblewrap is installed by .ci/run).
        assert "Scripts:                              scripts run sandboxed in bubblewrap" in printed
        # Two servers, one database: each start-up line once (not once per server, per migration check).
        for line in ("Started server process", "Waiting for application startup", "Application startup complete"):
            assert sum(line in printed_line for printed_line in lines) == 1, (line, printed)
        assert sum("alembic" in printed_line for printed_line in lines) <= 1, printed

        # The URLs are printed once both servers listen: they answer straight away.
        assert httpx.get(f"http://127.0.0.1:{bff_port}/healthz").json() == {"status": "ok"}
        site = httpx.get(f"http://localhost:{site_port}/")
        assert site.status_code == 200 and "Sign in to Acme Books" in site.text
        assert "content-security-policy" in site.headers

        keys = data_dir / "demo-keys.json"
        assert keys.stat().st_mode & 0o777 == 0o600
        partner = json.loads((data_dir / "demo-partner.json").read_text())
        listed = httpx.get(f"http://127.0.0.1:{bff_port}/api/partner/sub-accounts", headers=auth(partner["token"]))
        assert listed.status_code == 200
        # The demo site's origin is registered: it gets CORS, another origin does not.
        preflight = {"Access-Control-Request-Method": "GET"}
        ok = httpx.options(
            f"http://127.0.0.1:{bff_port}/api/servers", headers={"Origin": f"http://localhost:{site_port}", **preflight}
        )
        assert ok.headers.get("access-control-allow-origin") == f"http://localhost:{site_port}"
        other = httpx.options(
            f"http://127.0.0.1:{bff_port}/api/servers", headers={"Origin": "http://evil.test", **preflight}
        )
        assert "access-control-allow-origin" not in other.headers

        # A second demo on the same data directory refuses in one line and touches nothing.
        before = {path.name: path.read_bytes() for path in data_dir.glob("demo-*.json")}
        second = run_cli(
            "demo", "--bff-port", str(free_port()), "--site-port", str(free_port()), "--data-dir", str(data_dir)
        )
        assert second.returncode == 2, second.stderr
        assert second.stderr.splitlines() == [
            f"bff: error: another `bff demo` (pid {proc.pid}) is using the data directory {data_dir.resolve()};"
            " stop it first, or pass another --data-dir."
        ]
        assert {path.name: path.read_bytes() for path in data_dir.glob("demo-*.json")} == before
        assert (
            httpx.get(
                f"http://127.0.0.1:{bff_port}/api/partner/sub-accounts", headers=auth(partner["token"])
            ).status_code
            == 200
        )
    finally:
        code, out = stop(proc)
    assert code == 0, out
    assert "Stopped." in out
    assert "Traceback" not in out
    assert port_is_free(bff_port) and port_is_free(site_port)

    # A second run keeps the keys and the partner, without the warning: the first token still works.
    proc, lines = start_demo(data_dir, bff_port, site_port)
    try:
        assert "WARNING" not in "\n".join(lines)
        assert json.loads((data_dir / "demo-partner.json").read_text())["id"] == partner["id"]
        again = httpx.get(f"http://127.0.0.1:{bff_port}/api/partner/sub-accounts", headers=auth(partner["token"]))
        assert again.status_code == 200
    finally:
        code, out = stop(proc)
    assert code == 0, out


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BFF_")}
    return subprocess.run([sys.executable, "-m", "bff.cli", *args], env=env, capture_output=True, text=True, timeout=60)


def test_bff_demo_says_which_port_is_taken_before_creating_anything(tmp_path: Path) -> None:
    data_dir = tmp_path / "never-created"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("demo", "--bff-port", str(port), "--site-port", str(free_port()), "--data-dir", str(data_dir))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"bff: error: port {port} on 127.0.0.1 is in use (another `bff demo`?); stop it or pass --bff-port."
    ]
    assert result.stdout == "" and not data_dir.exists()


def test_bff_demo_on_one_port_twice_says_so_in_one_line(tmp_path: Path) -> None:
    data_dir = tmp_path / "never-created"
    port = str(free_port())
    result = run_cli("demo", "--bff-port", port, "--site-port", port, "--data-dir", str(data_dir))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"bff: error: --bff-port and --site-port are both {port}; the BFF and the demo site need a port each."
    ]
    assert result.stdout == "" and not data_dir.exists()
    result = run_cli("demo", "--bff-port", "70000", "--data-dir", str(data_dir))
    assert result.returncode == 2 and result.stderr == "bff: error: --bff-port 70000 is not a port (1–65535).\n"


def test_the_data_dir_lock_is_released_when_its_holder_crashes(tmp_path: Path) -> None:
    from bff.demo import DataDirBusy, hold_data_dir

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from bff.demo import hold_data_dir;"
            f" lock = hold_data_dir(Path({str(tmp_path)!r}), 'demo.lock', 'x'); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(DataDirBusy, match=f"another `bff demo` \\(pid {holder.pid}\\) is using"):
            hold_data_dir(tmp_path, "demo.lock", "`bff demo`")
    finally:
        holder.kill()  # a crash: nobody removes the lock file
        holder.wait()
    assert (tmp_path / "demo.lock").exists()
    with hold_data_dir(tmp_path, "demo.lock", "`bff demo`") as lock:
        assert (tmp_path / "demo.lock").read_text() == str(os.getpid()) and not lock.closed
