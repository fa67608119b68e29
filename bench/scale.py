"""Scaling out: the same queue of 40 syncs drained by 1, then 2 `bff worker` processes.

Usage: python bench/scale.py [--syncs 40] [--scale 25] [--rounds 2] [--concurrency 4]

One embedded PostgreSQL, the sandbox providers in their own process (`bff sandbox`,
``BFF_SANDBOX_SCALE``: scale 25 is 5,000 bank transactions per sync), and ``--syncs``
customers with a bank connection each. For every round, the workers are started
(``bff worker --concurrency 4``) and given time to connect, then all syncs are requested
at once through the API of a web-only BFF in this process (``run_worker`` off) and timed
until the last run has finished. Rounds alternate 1 and 2 workers; cursors are forgotten
before each round, so every run fetches and upserts everything.

Prints records/s per round, the 2-worker/1-worker ratio, and where the CPU went
(each worker, the sandbox, PostgreSQL, and everything else on the machine), as a share of
the wall time: 1.00 is one core kept busy. Asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _load import cpu_by_pid, cpu_seconds, postgres_processes  # noqa: E402
from sync import TRANSACTIONS_PER_SCALE, Project, start_sandbox  # noqa: E402

from bff.app import create_app  # noqa: E402
from bff.settings import Secret, Settings, generate_encryption_key, generate_secret_key  # noqa: E402
from bff.testing import TestDatabases, stop_embedded  # noqa: E402


def start_worker(env: dict[str, str], concurrency: int, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bff.cli", "worker", "--no-migrate", "--concurrency", str(concurrency)],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def wait_started(log: Path, proc: subprocess.Popen[bytes], seen: int) -> None:
    """Until the worker printed its "running jobs" line (the seen-th in this log)."""
    deadline = time.monotonic() + 60
    while log.read_text(errors="replace").count("running jobs") < seen:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"bff worker did not start: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.05)


async def drain(
    project: Project,
    url: str,
    workers: list[subprocess.Popen[bytes]],
    others: dict[str, list[psutil.Process]],
    postgres_dir: Path,
) -> dict[str, Any]:
    """Request every sync at once; wait until each run has finished. Seconds, records and CPU seconds."""
    customers = project.customers
    await project.forget_cursors(customers)
    watched = {f"worker {i + 1}": [psutil.Process(w.pid)] for i, w in enumerate(workers)} | others
    before = {name: cpu_seconds(procs) for name, procs in watched.items()}
    # PostgreSQL starts backends while the syncs run (pools grow): count those from their start.
    postgres_before = cpu_by_pid(postgres_processes(postgres_dir))
    machine_before = psutil.cpu_times()
    began = time.perf_counter()
    run_ids = []
    for token, _, connection in customers:
        answer = await project.client.post(
            f"/api/server/{connection}/sync", headers={"Authorization": f"Bearer {token}"}
        )
        assert answer.status_code == 202, answer.text
        run_ids.append(int(answer.json()["run_data"][0]["pipeline_run_id"]))
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        while True:
            cur = await conn.execute("SELECT status, records FROM runs WHERE id = ANY(%s)", (run_ids,))
            rows = await cur.fetchall()
            if all(status not in ("queued", "running", "waiting") for status, _ in rows):
                break
            await asyncio.sleep(0.05)
    seconds = time.perf_counter() - began
    after = {name: cpu_seconds(procs) for name, procs in watched.items()}
    machine_after = psutil.cpu_times()
    postgres_after = cpu_by_pid(postgres_processes(postgres_dir))
    idle = (machine_after.idle + getattr(machine_after, "iowait", 0.0)) - (
        machine_before.idle + getattr(machine_before, "iowait", 0.0)
    )
    busy = sum(machine_after) - sum(machine_before) - idle
    bad = [status for status, _ in rows if status != "succeeded"]
    if bad:
        raise SystemExit(f"runs did not succeed: {bad}")
    records = sum(sum(int(v) for v in (r or {}).values()) for _, r in rows)
    cpu = {name: after[name] - before[name] for name in watched}
    cpu["postgres"] = sum(seconds - postgres_before.get(pid, 0.0) for pid, seconds in postgres_after.items())
    # The machine is shared: what every other process (this one, other users) used meanwhile.
    cpu["everything else"] = max(0.0, busy - sum(cpu.values()))
    return {"seconds": seconds, "records": records, "cpu": cpu}


async def bench(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="bff-bench-scale-"))
    per_sync = TRANSACTIONS_PER_SCALE * args.scale
    print(
        f"setting up: embedded PostgreSQL, `bff sandbox` at scale {args.scale} ({per_sync:,} transactions a sync), "
        f"{args.syncs} customers …",
        flush=True,
    )
    databases = TestDatabases(root)
    url = databases.create()
    sandbox_proc, sandbox = start_sandbox(args.scale, root / "sandbox.log")
    keys = {"BFF_SECRET_KEYS": generate_secret_key(), "BFF_ENCRYPTION_KEY": generate_encryption_key()}
    env = {k: v for k, v in os.environ.items() if not k.startswith("BFF_")}
    env.update(keys)
    env.update(
        {
            "BFF_DATABASE_URL": url,
            "BFF_DATA_DIR": str(root / "data"),
            "BFF_SANDBOX": "true",
            "BFF_SANDBOX_URL": sandbox,
            "BFF_LOG_LEVEL": "warning",
            # Only the queued syncs being measured (no scheduler-started first syncs).
            "BFF_SCHEDULES": "false",
        }
    )
    settings = Settings(
        data_dir=root / "data",
        database_url=Secret(url),
        secret_keys=(Secret(keys["BFF_SECRET_KEYS"]),),
        encryption_key=Secret(keys["BFF_ENCRYPTION_KEY"]),
        public_url="http://bench.local",
        sandbox_enabled=True,
        sandbox_external_url=sandbox,
        run_worker=False,
        log_level="warning",
        schedules_enabled=False,
    )
    others = {"sandbox": [psutil.Process(sandbox_proc.pid)]}
    results: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    try:
        app = create_app(settings, migrate_on_start=False)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench.local", timeout=600) as client:
                project = Project(app, client)
                await project.add_customers(args.syncs)
                plan = [1, 2] * args.rounds
                # Warm-up (untimed): every customer's schema and table, with 2 workers.
                plan = [2, *plan]
                for i, count in enumerate(plan):
                    log = root / f"round{i}.log"
                    workers = [start_worker(env, args.concurrency, log) for _ in range(count)]
                    try:
                        for n, worker in enumerate(workers, start=1):
                            wait_started(log, worker, n)
                        result = await drain(project, url, workers, others, root / "postgres")
                    finally:
                        for worker in workers:
                            worker.terminate()
                        for worker in workers:
                            worker.wait(timeout=30)
                    if i == 0:
                        print(
                            f"  warm-up with 2 workers: {result['records'] / result['seconds']:,.0f} records/s",
                            flush=True,
                        )
                        continue
                    results[count].append(result)
                    shares = ", ".join(f"{name} {cpu / result['seconds']:.2f}" for name, cpu in result["cpu"].items())
                    print(
                        f"  {count} worker{'s' if count > 1 else ' '}: {result['records'] / result['seconds']:>8,.0f} records/s"
                        f" in {result['seconds']:5.1f} s   CPU (cores): {shares}",
                        flush=True,
                    )
                for _, account, _ in project.customers:
                    rows = await project.rows(account)
                    if rows != per_sync:
                        raise SystemExit(f"sub-account {account} holds {rows} rows, not {per_sync}")
    finally:
        sandbox_proc.terminate()
        sandbox_proc.wait()
        stop_embedded(root / "postgres")
        shutil.rmtree(root, ignore_errors=True)

    def rate(r: dict[str, Any]) -> float:
        return float(r["records"]) / float(r["seconds"])

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"\nmachine: {os.cpu_count()} CPUs, load average {load} (the CPU is shared: compare ratios, not absolute numbers)"
    )
    print(
        f"{args.syncs} syncs of {per_sync:,} records ({args.syncs * per_sync:,} in all), "
        f"`bff worker --concurrency {args.concurrency}`, {os.cpu_count()} CPUs; every warehouse holds exactly {per_sync:,} rows"
    )
    for count in (1, 2):
        rates = [rate(r) for r in results[count]]
        print(
            f"  {count} worker{'s' if count > 1 else ' '}: min {min(rates):>8,.0f}   median {statistics.median(rates):>8,.0f}"
            f"   max {max(rates):>8,.0f} records/s"
        )
    ratios = [rate(b) / rate(a) for a, b in zip(results[1], results[2], strict=True)]
    print(
        f"  ratio 2 workers / 1 worker, per round: min {min(ratios):.2f}   median {statistics.median(ratios):.2f}   max {max(ratios):.2f}"
    )
    print("  CPU, median share of the wall time (1.00 = one core busy):")
    for count in (1, 2):
        names = results[count][0]["cpu"].keys()
        shares = {name: statistics.median(r["cpu"][name] / r["seconds"] for r in results[count]) for name in names}
        total = sum(shares.values())
        print(
            f"    {count} worker{'s' if count > 1 else ' '}: "
            + ", ".join(f"{n} {s:.2f}" for n, s in shares.items())
            + f"   (busy {total:.2f} of {os.cpu_count()} cores)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--syncs", type=int, default=40)
    parser.add_argument(
        "--scale", type=int, default=25, help="BFF_SANDBOX_SCALE: 200 × scale transactions a sync (default 5,000)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="pairs of rounds (1 worker, then 2)")
    parser.add_argument("--concurrency", type=int, default=4, help="bff worker --concurrency")
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
