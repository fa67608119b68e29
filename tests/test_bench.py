"""The benchmark scripts keep working as the code under them changes (tiny sizes; speed is never asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(240)


def run_bench(*args: str, **extra_env: str) -> str:
    """A benchmark script run without this shell's BFF_* settings; its stdout, after it succeeded."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BFF_")} | extra_env
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=220)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_bench_sync_runs_every_contender_and_checks_row_counts() -> None:
    stdout = run_bench("bench/sync.py", "--scale", "1", "--rounds", "1", "--customers", "2", "--dlt", "none")
    # 200 sandbox transactions: fetched by the floor and the project, stored once in every warehouse.
    assert "records per round checked: 200 fetched by every contender, 200 rows in every table" in stdout
    for line in ("project / floor", "project ×2 / floor ×2"):
        assert line in stdout, stdout


def test_bench_scripts_times_every_contender() -> None:
    stdout = run_bench("bench/scripts.py", "--rounds", "1")
    for line in ("sandboxed ", "unsandboxed ", "baseline ", "sandboxed / baseline at p50"):
        assert line in stdout, stdout


def test_bench_customer_databases_measures_what_one_costs() -> None:
    stdout = run_bench("bench/customer_databases.py", "--customers", "2")
    for line in ("make a customer's database", "its first table", "one customer database", "for 1,000"):
        assert line in stdout, stdout


def test_bench_tokens_prints_cpu_per_request_and_stops_what_it_started() -> None:
    import tempfile

    import psutil

    with tempfile.TemporaryDirectory(prefix="bff-test-bench-tokens-") as tmp:
        stdout = run_bench("bench/tokens.py", "--rounds", "2", "--seconds", "0.3", "--concurrency", "2", TMPDIR=tmp)
        for line in ("ratio mint/bare, per round", "server CPU per request", "ratio bare/mint CPU", "load average"):
            assert line in stdout, stdout
        assert stdout.count(", 0 errors)") == 2, stdout
        # Its embedded PostgreSQL (in a directory under TMPDIR) and both servers are gone.
        left = []
        for proc in psutil.process_iter(["cmdline"]):
            if any(tmp in part for part in proc.info["cmdline"] or []):
                left.append(proc)
        for proc in left:  # not to leave them running after a failure
            proc.terminate()
        assert not left, left
