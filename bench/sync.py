"""Sync throughput on PostgreSQL: the project vs a bare fetch (the floor) vs dlt, same pages, same run.

Usage: python bench/sync.py [--rounds 5] [--scale 251] [--customers 4] [--dlt postgres|duckdb|none]
                           [--cases resync,first-load,incremental]

The sandbox providers run in a process of their own (``bff sandbox``, with
``BFF_SANDBOX_SCALE``: scale 251 is 50,200 bank transactions), reached over real
loopback HTTP. A fresh database on an embedded PostgreSQL holds everything.
Contenders, alternated round by round (the order rotates every round, so machine
noise and warm caches hit all alike):

* **project** — a real sync: ``POST /api/server/{id}/sync`` on the BFF (in this
  process, its worker on), timed until the run has finished (queue pick-up, run
  bookkeeping, logs and health included). The stream's cursor is forgotten before
  each round (untimed), so every record is fetched and upserted again;
* **floor** — a bare ``httpx`` fetch of the same pages (``per_page=500``, following
  the ``Link`` header like the connector) and ``json.loads`` of each page, nothing else;
* **dlt** (``pip install -e '.[bench]'``) — its ``rest_api`` source on the same
  endpoint (HTTP basic auth, ``header_link`` paginator, 500 a page), merged on
  ``id`` (primary key) into the same PostgreSQL (``--dlt duckdb`` for its in-process
  database). Like the project it upserts over the rows of the previous round.

Cases (``--cases``, all by default):

* **resync** — the cursor forgotten, every record fetched and upserted over the rows of
  the previous round (above); then ``--customers`` customers syncing at once
  (``BFF_SYNC_CONCURRENCY`` 4) against as many bare fetches at once;
* **first-load** — into an empty table: before each round (untimed) the project's
  tables are dropped and dlt gets a new dataset, so both create and fill them;
* **incremental** — with the cursors kept: a sync when nothing changed, then after the
  sandbox changed 1 % of the transactions (``/_control/touch``); the floor fetches
  ``updated_after`` its own last cursor. Milliseconds, lower is better.

Row counts are checked equal (every contender sees every record once; each table
ends with exactly that many rows). With psutil (the ``[bench]`` extra), the CPU time
each process spent during the project's and dlt's rounds is printed per 1,000
records: this process (the BFF's worker and web code, or dlt), PostgreSQL (every
process of the embedded server) and the sandbox. Prints min/median/max and the
ratios; asserts nothing about speed. Goals (issues 11, 27): re-sync and first load ≥ 5×
dlt → PostgreSQL and ≥ 0.6× the floor; 4 customers ≥ 0.5× the floor; ≤ 22 ms of CPU per
1,000 records on a re-sync, all processes together (set against a floor that spent 8.0: in
same-run terms ≤ 2.75× the floor's CPU, which a machine slowed by its neighbours leaves standing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bff.app import create_app  # noqa: E402
from bff.settings import Secret, Settings, generate_encryption_key, generate_secret_key  # noqa: E402
from bff.testing import TestDatabases, free_port, stop_embedded  # noqa: E402

TRANSACTIONS_PER_SCALE = 200
PAGE = 500  # the sandbox bank connector's page size (sandbox_bank.json), used by every contender
BANK_AUTH = ("sandbox", "sandbox")

Round = tuple[int, float]  # (records, seconds)


def start_sandbox(scale: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`bff sandbox` in its own process; its URL once it answers."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BFF_")}
    # Controls open: the incremental case changes 1 % of the transactions through /_control/touch.
    env.update({"BFF_SANDBOX_SCALE": str(scale), "BFF_LOG_LEVEL": "warning", "BFF_SANDBOX_CONTROLS": "open"})
    proc = subprocess.Popen(
        # Its own data directory: fresh fixtures each run, nothing written next to the caller's demo.
        [
            sys.executable,
            "-m",
            "bff.cli",
            "sandbox",
            "--port",
            str(port),
            "--data-dir",
            str(log.parent / "sandbox-data"),
        ],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180  # a busy machine starts Python slowly
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bff sandbox exited: {log.read_text()}")
        try:
            if httpx.get(f"{url}/_control/stats", timeout=2).status_code < 500:
                # Build the scaled table now (first read), not in the first timed round.
                httpx.get(f"{url}/bank/api/transactions", params={"per_page": 1}, auth=BANK_AUTH, timeout=120)
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("bff sandbox did not start")


# -- the floor ------------------------------------------------------------------------------


async def floor_fetch(client: httpx.AsyncClient, sandbox: str, since: list[str] | None = None) -> int:
    """Every page of transactions (``updated_after since[0]`` when given, which then moves to
    the newest ``updated_at`` seen): fetched, decoded, counted; nothing else."""
    count = 0
    url: str | None = f"{sandbox}/bank/api/transactions?per_page={PAGE}"
    params = {"updated_after": since[0]} if since else None
    while url is not None:
        response = await client.get(url, auth=BANK_AUTH, params=params)
        response.raise_for_status()
        page = json.loads(response.content)
        count += len(page)
        if since is not None:
            since[0] = max([since[0], *(row["updated_at"] for row in page)])
        url = response.links.get("next", {}).get("url")
        params = None  # the next link carries them
    return count


async def touch(client: httpx.AsyncClient, sandbox: str, count: int) -> None:
    """The sandbox changes ``count`` transactions (their updated_at moves to now)."""
    response = await client.post(f"{sandbox}/_control/touch", json={"resource": "bank.transactions", "count": count})
    response.raise_for_status()


class CpuMeter:
    """CPU seconds (user + system) of this process, the embedded PostgreSQL and the sandbox."""

    def __init__(self, postgres_dir: Path, sandbox_pid: int) -> None:
        import psutil

        self._psutil = psutil
        self.postgres_dir = str(postgres_dir)
        self.sandbox = psutil.Process(sandbox_pid)
        self.me = psutil.Process()

    def _postgres(self) -> list[Any]:
        found = []
        for proc in self._psutil.process_iter(["cmdline"]):
            cmdline = proc.info.get("cmdline") or []
            if any(self.postgres_dir in part for part in cmdline) or self._is_backend(proc):
                found.append(proc)
        return found

    def _is_backend(self, proc: Any) -> bool:
        # Backends and helpers show "postgres: …" titles; they are children of the postmaster.
        try:
            parent = proc.parent()
            return parent is not None and any(self.postgres_dir in part for part in (parent.cmdline() or []))
        except self._psutil.Error:
            return False

    @staticmethod
    def _seconds(proc: Any) -> float:
        times = proc.cpu_times()
        return float(times.user + times.system)

    def sample(self) -> dict[str, float]:
        total: dict[str, float] = {"this process": self._seconds(self.me), "PostgreSQL": 0.0, "sandbox": 0.0}
        for proc in self._postgres():
            try:
                total["PostgreSQL"] += self._seconds(proc)
                if any(self.postgres_dir in part for part in proc.cmdline() or []):
                    # The postmaster: backends that ended (dlt's connections) left their CPU here.
                    times = proc.cpu_times()
                    total["PostgreSQL"] += float(times.children_user + times.children_system)
            except self._psutil.Error:
                continue
        try:
            total["sandbox"] = self._seconds(self.sandbox)
        except self._psutil.Error:
            pass
        return total


def cpu_line(name: str, spent: list[dict[str, float]], records: int) -> str:
    """Median CPU ms per 1,000 records, per process and in all."""
    per = {key: statistics.median(s[key] for s in spent) * 1000 / (records / 1000) for key in spent[0]}
    parts = "   ".join(f"{key} {value:5.1f}" for key, value in per.items())
    return f"  {name:<34} {parts}   all {sum(per.values()):5.1f} ms per 1,000 records"


# -- the project ----------------------------------------------------------------------------


class Project:
    """The BFF in this process (worker on), its sandbox elsewhere, customers with a bank connection each."""

    def __init__(self, app: Any, client: httpx.AsyncClient) -> None:
        self.app = app
        self.client = client
        self.services = app.services
        self.customers: list[tuple[str, int, int]] = []  # (integrate token, sub-account id, connection id)

    async def add_customers(self, count: int) -> None:
        store, tokens = self.services.store, self.services.tokens
        partner = await store.partners.create("bench", [])
        partner_token = tokens.mint_partner_token(partner_id=partner.id, generation=partner.token_generation).token
        for i in range(count):
            minted = await self.client.post(
                "/api/partner/sub-account/integrate/",
                json={"external_id": f"bench-{i}"},
                headers=_bearer(partner_token),
            )
            assert minted.status_code == 200, minted.text
            token, account = minted.json()["token"], int(minted.json()["account_id"])
            created = await self.client.post(
                "/api/servers",
                json={"servertype_id": "sandbox_bank", "login": BANK_AUTH[0], "password": BANK_AUTH[1]},
                headers=_bearer(token),
            )
            assert created.status_code == 201, created.text
            self.customers.append((token, account, int(created.json()["id"])))

    async def forget_cursors(self, customers: list[tuple[str, int, int]]) -> None:
        for _, account, connection in customers:
            await self.services.warehouse.reset_state(account, connection)

    async def drop_tables(self, customer: tuple[str, int, int]) -> None:
        """As before a first sync: no table, no cursor."""
        _, account, connection = customer
        await self.services.warehouse.drop_connection_tables(account, connection)
        await self.services.warehouse.reset_state(account, connection)

    async def sync(self, customer: tuple[str, int, int]) -> int:
        """One full sync through the API; returns the records the run stored."""
        token, _, connection = customer
        answer = await self.client.post(f"/api/server/{connection}/sync", headers=_bearer(token))
        assert answer.status_code == 202, answer.text
        run = await self.services.sync.wait(connection)
        assert run is not None and run.status == "succeeded", run
        return sum(int(v) for v in run.records.values())

    async def rows(self, account: int) -> int:
        tables = await self.services.warehouse.list_tables(account)
        return sum(counts.total for _, counts in tables)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- dlt --------------------------------------------------------------------------------------


class Dlt:
    """dlt's rest_api source into ``destination``, merging on ``id``; one pipeline per dataset,
    run every round (``incremental``: on ``updated_after``, as the project's connector reads)."""

    def __init__(
        self,
        sandbox: str,
        destination: str,
        database_url: str,
        workdir: Path,
        *,
        dataset: str = "dlt_bench",
        incremental: bool = False,
    ) -> None:
        import dlt
        from dlt.sources.rest_api import rest_api_source

        params: dict[str, Any] = {"per_page": PAGE}
        if incremental:
            params["updated_after"] = {
                "type": "incremental",
                "cursor_path": "updated_at",
                "initial_value": "1970-01-01T00:00:00Z",
            }
        self._source = lambda: rest_api_source(
            {
                "client": {
                    "base_url": f"{sandbox}/bank/api/",
                    "auth": {"type": "http_basic", "username": BANK_AUTH[0], "password": BANK_AUTH[1]},
                    "paginator": {"type": "header_link"},
                },
                "resource_defaults": {"primary_key": "id", "write_disposition": "merge"},
                "resources": [{"name": "transactions", "endpoint": {"path": "transactions", "params": params}}],
            }
        )
        if destination == "postgres":
            target: Any = dlt.destinations.postgres(credentials=_libpq_credentials(database_url))
        else:
            target = dlt.destinations.duckdb(credentials=str(workdir / "dlt.duckdb"))
        self.destination = destination
        self.database_url = database_url
        self.workdir = workdir
        self.dataset = dataset
        self.pipeline = dlt.pipeline(
            pipeline_name=f"bench_{dataset}",
            destination=target,
            dataset_name=dataset,
            pipelines_dir=str(workdir / "pipelines"),
        )

    def run(self) -> int:
        info = self.pipeline.run(self._source())
        info.raise_on_failed_jobs()
        trace = self.pipeline.last_trace.last_normalize_info
        counts = trace.row_counts if trace is not None else {}
        return int(counts.get("transactions", 0))

    def _query(self, statement: str) -> Any:
        if self.destination == "postgres":
            with psycopg.connect(self.database_url, autocommit=True) as conn:
                cur = conn.execute(statement)
                return cur.fetchone() if cur.description else None
        import duckdb

        with duckdb.connect(str(self.workdir / "dlt.duckdb")) as conn:
            return conn.execute(statement).fetchone()

    def rows(self) -> int:
        row = self._query(f"SELECT COUNT(*) FROM {self.dataset}.transactions")
        return int(row[0]) if row else 0

    def drop(self) -> None:
        """The dataset and the pipeline's local state (a first-load round is over)."""
        self._query(f"DROP SCHEMA IF EXISTS {self.dataset} CASCADE")
        shutil.rmtree(self.workdir / "pipelines" / f"bench_{self.dataset}", ignore_errors=True)


def _libpq_credentials(url: str) -> str:
    """The embedded server listens on a Unix socket only: name its directory and port for psycopg2."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    socket_dir = Path(str(info["host"]))
    port = next(socket_dir.glob(".s.PGSQL.*")).suffix.lstrip(".") if socket_dir.is_dir() else info.get("port", 5432)
    user, password = info.get("user", "postgres"), info.get("password") or ""
    return f"postgresql://{user}:{password}@localhost:{port}/{info['dbname']}?host={socket_dir}"


# -- measuring --------------------------------------------------------------------------------


async def timed(action: Callable[[], Awaitable[list[int]]]) -> Round:
    began = time.perf_counter()
    counts = await action()
    return sum(counts), time.perf_counter() - began


def rates(rounds: list[Round]) -> list[float]:
    return [n / t for n, t in rounds]


def describe(name: str, rounds: list[Round]) -> str:
    r = rates(rounds)
    return (
        f"  {name:<34} min {min(r):>9,.0f}   median {statistics.median(r):>9,.0f}   max {max(r):>9,.0f} records/s"
        f"   ({len(r)} rounds of {rounds[0][0]:,} records)"
    )


def ratio(name: str, a: list[Round], b: list[Round], goal: str) -> str:
    """Per round a/b (rounds alternate, so round i of each ran side by side): min/median/max."""
    per_round = [x / y for x, y in zip(rates(a), rates(b), strict=True)]
    return (
        f"  {name:<34} min {min(per_round):5.2f}   median {statistics.median(per_round):5.2f}   max {max(per_round):5.2f}"
        f"   (goal {goal})"
    )


async def bench(args: argparse.Namespace) -> None:
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(cases) - {"resync", "first-load", "incremental"}
    if unknown or not cases:
        raise SystemExit(f"--cases takes resync, first-load, incremental; got {args.cases!r}")
    root = Path(tempfile.mkdtemp(prefix="bff-bench-sync-"))
    expected = TRANSACTIONS_PER_SCALE * args.scale
    print(
        f"setting up: embedded PostgreSQL, `bff sandbox` at scale {args.scale} ({expected:,} transactions) …",
        flush=True,
    )
    databases = TestDatabases(root)
    url = databases.create()
    sandbox_proc, sandbox = start_sandbox(args.scale, root / "sandbox.log")
    dlt_runner: Dlt | None = None
    if args.dlt != "none":
        try:
            dlt_runner = Dlt(sandbox, args.dlt, url, root / "dlt")
        except ImportError:
            print("  dlt is not installed (pip install -e '.[bench]'): comparing with the floor only")
    try:
        meter: CpuMeter | None = CpuMeter(root / "postgres", sandbox_proc.pid)
    except ImportError:
        meter = None
        print("  psutil is not installed (pip install -e '.[bench]'): no CPU per record")
    settings = Settings(
        data_dir=root / "data",
        database_url=Secret(url),
        secret_keys=(Secret(generate_secret_key()),),
        encryption_key=Secret(generate_encryption_key()),
        public_url="http://bench.local",
        sandbox_enabled=True,
        sandbox_external_url=sandbox,
        log_level="warning",
        # Only the timed syncs: no first sync started by the scheduler on connect (issue 12).
        schedules_enabled=False,
    )
    results: dict[str, list[Round]] = {"project": [], "floor": [], "dlt": []}
    first: dict[str, list[Round]] = {"project": [], "floor": [], "dlt": []}
    quiet: dict[str, list[Round]] = {"project": [], "floor": [], "dlt": []}  # incremental, nothing changed
    changed: dict[str, list[Round]] = {"project": [], "floor": [], "dlt": []}  # incremental, 1 % changed
    cpu: dict[str, list[dict[str, float]]] = {}  # "<case> <contender>" → CPU seconds per round
    many: dict[str, list[Round]] = {"project": [], "floor": []}
    customers: list[tuple[str, int, int]] = []

    async def measured(key: str, action: Callable[[], Awaitable[list[int]]]) -> Round:
        before = meter.sample() if meter is not None else None
        done = await timed(action)
        if meter is not None and before is not None:
            after = meter.sample()
            cpu.setdefault(key, []).append({k: after[k] - before[k] for k in after})
        return done

    try:
        app = create_app(settings, migrate_on_start=False)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with (
                httpx.AsyncClient(transport=transport, base_url="http://bench.local", timeout=600) as client,
                httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=args.customers + 1)) as bare,
            ):
                project = Project(app, client)
                await project.add_customers(max(1, args.customers))
                one = project.customers[:1]
                customers = project.customers

                # Warm-up (untimed): table creation, imports, connection pools, dlt's schema.
                await project.sync(one[0])
                await floor_fetch(bare, sandbox)
                if dlt_runner is not None and args.only in (None, "dlt"):
                    await asyncio.to_thread(dlt_runner.run)

                async def run_project() -> list[int]:
                    return [await project.sync(one[0])]

                async def run_floor() -> list[int]:
                    return [await floor_fetch(bare, sandbox)]

                async def run_dlt() -> list[int]:
                    assert dlt_runner is not None
                    return [await asyncio.to_thread(dlt_runner.run)]

                contenders: list[tuple[str, Callable[[], Awaitable[list[int]]]]] = [
                    ("project", run_project),
                    ("floor", run_floor),
                ]
                if dlt_runner is not None:
                    contenders.append(("dlt", run_dlt))
                if args.only:  # profiling one contender (py-spy), or timing it alone
                    contenders = [c for c in contenders if c[0] == args.only]

                if "resync" in cases:
                    print(
                        f"re-sync, one customer, {args.rounds} rounds, contenders alternated:"
                        f" {', '.join(n for n, _ in contenders)}",
                        flush=True,
                    )
                    for i in range(args.rounds):
                        await project.forget_cursors(one)
                        for name, action in contenders[i % len(contenders) :] + contenders[: i % len(contenders)]:
                            results[name].append(await measured(f"resync {name}", action))
                        print(
                            f"  round {i + 1}: "
                            + ", ".join(f"{n} {results[n][-1][0] / results[n][-1][1]:,.0f}/s" for n, _ in contenders),
                            flush=True,
                        )

                    if len(customers) > 1 and not args.only:
                        for customer in customers[1:]:  # warm-up: their tables
                            await project.sync(customer)

                        async def run_many_project() -> list[int]:
                            return list(await asyncio.gather(*(project.sync(c) for c in customers)))

                        async def run_many_floor() -> list[int]:
                            return list(await asyncio.gather(*(floor_fetch(bare, sandbox) for _ in customers)))

                        print(f"{len(customers)} customers at once, {args.rounds} rounds", flush=True)
                        for i in range(args.rounds):
                            await project.forget_cursors(customers)
                            pair = [("project", run_many_project), ("floor", run_many_floor)]
                            for name, action in pair if i % 2 == 0 else pair[::-1]:
                                many[name].append(await measured(f"customers {name}", action))
                            print(
                                f"  round {i + 1}: "
                                + ", ".join(f"{n} {many[n][-1][0] / many[n][-1][1]:,.0f}/s" for n, _ in pair),
                                flush=True,
                            )

                if "first-load" in cases and not args.only:
                    print(f"first load into an empty table, {args.rounds} rounds", flush=True)
                    names = [n for n, _ in contenders]
                    for i in range(args.rounds):
                        for name in names[i % len(names) :] + names[: i % len(names)]:
                            if name == "project":
                                await project.drop_tables(one[0])  # untimed: as before a first sync
                                first[name].append(await measured("first-load project", run_project))
                                stored = await project.rows(one[0][1])
                            elif name == "dlt":
                                fresh = Dlt(sandbox, args.dlt, url, root / "dlt", dataset=f"dlt_first_{i}")

                                async def run_fresh(fresh: Dlt = fresh) -> list[int]:
                                    return [await asyncio.to_thread(fresh.run)]

                                first[name].append(await measured("first-load dlt", run_fresh))
                                stored = await asyncio.to_thread(fresh.rows)
                                await asyncio.to_thread(fresh.drop)
                            else:
                                first[name].append(await timed(run_floor))
                                stored = expected
                            if stored != expected or first[name][-1][0] != expected:
                                raise SystemExit(f"first load, {name}: {first[name][-1][0]:,} read, {stored:,} rows")
                        print(
                            f"  round {i + 1}: "
                            + ", ".join(f"{n} {first[n][-1][0] / first[n][-1][1]:,.0f}/s" for n in names),
                            flush=True,
                        )

                if "incremental" in cases and not args.only:
                    # Start from everything synced, cursors kept from here on.
                    await project.forget_cursors(one)
                    await project.sync(one[0])
                    since = ["1970-01-01T00:00:00Z"]
                    await floor_fetch(bare, sandbox, since)
                    incremental: Dlt | None = None
                    if dlt_runner is not None:
                        incremental = Dlt(sandbox, args.dlt, url, root / "dlt", dataset="dlt_incr", incremental=True)
                        await asyncio.to_thread(incremental.run)

                    async def run_incremental_dlt() -> list[int]:
                        assert incremental is not None
                        return [await asyncio.to_thread(incremental.run)]

                    async def run_incremental_floor() -> list[int]:
                        return [await floor_fetch(bare, sandbox, since)]

                    pair = [("project", run_project), ("floor", run_incremental_floor)]
                    if incremental is not None:
                        pair.append(("dlt", run_incremental_dlt))
                    share = max(1, expected // 100)
                    print(f"incremental, {args.rounds} rounds: nothing changed, then {share:,} of {expected:,} changed")
                    for i in range(args.rounds):
                        order = pair[i % len(pair) :] + pair[: i % len(pair)]
                        for name, action in order:
                            quiet[name].append(await measured(f"incremental-quiet {name}", action))
                        await touch(bare, sandbox, share)  # every contender sees the same changes
                        for name, action in order:
                            changed[name].append(await measured(f"incremental-1% {name}", action))
                        print(
                            f"  round {i + 1}: "
                            + ", ".join(
                                f"{n} {quiet[n][-1][1] * 1000:,.0f} / {changed[n][-1][1] * 1000:,.0f} ms"
                                for n, _ in pair
                            ),
                            flush=True,
                        )
                    wrong = {
                        n: sorted({c for c, _ in changed[n]}) for n, _ in pair if {c for c, _ in changed[n]} != {share}
                    }
                    if wrong:
                        raise SystemExit(f"incremental: each contender should read the {share:,} changed; {wrong}")

                # Row counts: every contender saw every record, and each table holds each once.
                if args.only:
                    print(describe(args.only, results[args.only]))
                    return
                if results["project"]:
                    seen = {name: {n for n, _ in rounds} for name, rounds in results.items() if rounds}
                    stored = {"project": await project.rows(one[0][1])}
                    if dlt_runner is not None:
                        stored["dlt"] = await asyncio.to_thread(dlt_runner.rows)
                    for customer in customers[1:] if many["project"] else []:
                        stored[f"project, customer {customer[1]}"] = await project.rows(customer[1])
                    if many["floor"]:
                        seen["floor ×N"] = {n // len(customers) for n, _ in many["floor"]}
                        seen["project ×N"] = {n // len(customers) for n, _ in many["project"]}
                    mismatches = {k: v for k, v in {**seen, **stored}.items() if v != {expected} and v != expected}
                    if mismatches:
                        raise SystemExit(f"row counts differ from the sandbox's {expected:,}: {mismatches}")
    finally:
        sandbox_proc.terminate()
        sandbox_proc.wait()
        stop_embedded(root / "postgres")
        shutil.rmtree(root, ignore_errors=True)

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"\nmachine: {os.cpu_count()} CPUs, load average {load} (the CPU is shared: compare ratios, not absolute numbers)"
    )
    print(f"records per round checked: {expected:,} fetched by every contender, {expected:,} rows in every table")
    if results["project"]:
        print("re-sync, one customer (records/s, higher is better):")
        print(describe("project (sync → PostgreSQL)", results["project"]))
        print(describe("floor (httpx + json)", results["floor"]))
        if results["dlt"]:
            print(describe(f"dlt (rest_api → {args.dlt}, merge)", results["dlt"]))
        print("ratios, per round:")
        print(ratio("project / floor", results["project"], results["floor"], "≥ 0.6"))
        if results["dlt"]:
            print(ratio("project / dlt", results["project"], results["dlt"], "≥ 5"))
    if many["project"]:
        n = len(customers)
        print(f"{n} customers at once (records/s of all of them together):")
        print(describe(f"project ×{n}", many["project"]))
        print(describe(f"floor ×{n}", many["floor"]))
        print(ratio(f"project ×{n} / floor ×{n}", many["project"], many["floor"], "≥ 0.5"))
        single_floor = statistics.median(rates(results["floor"]))
        per = [r / single_floor for r in rates(many["project"])]
        print(
            f"  {'project ×' + str(n) + ' / floor (one)':<34} min {min(per):5.2f}   median {statistics.median(per):5.2f}   max {max(per):5.2f}"
        )
    if first["project"]:
        print("first load into an empty table (records/s):")
        print(describe("project", first["project"]))
        print(describe("floor", first["floor"]))
        if first["dlt"]:
            print(describe(f"dlt (→ {args.dlt})", first["dlt"]))
        print(ratio("project / floor", first["project"], first["floor"], "≥ 0.6"))
        if first["dlt"]:
            print(ratio("project / dlt", first["project"], first["dlt"], "≥ 5"))
    if quiet["project"]:
        print("incremental (ms, lower is better): nothing changed · 1 % changed")
        for name in ("project", "floor", "dlt"):
            if quiet[name]:
                q = [t * 1000 for _, t in quiet[name]]
                c = [t * 1000 for _, t in changed[name]]
                print(
                    f"  {name:<34} median {statistics.median(q):7.1f} · {statistics.median(c):7.1f} ms"
                    f"   (min {min(q):.1f} · {min(c):.1f}, max {max(q):.1f} · {max(c):.1f})"
                )
        if quiet["dlt"]:
            speed_q = [d / p for (_, p), (_, d) in zip(quiet["project"], quiet["dlt"], strict=True)]
            speed_c = [d / p for (_, p), (_, d) in zip(changed["project"], changed["dlt"], strict=True)]
            print(
                f"  {'dlt time / project time':<34} median {statistics.median(speed_q):5.2f} ·"
                f" {statistics.median(speed_c):5.2f}"
            )
    if cpu:
        print("CPU per 1,000 records (median of the rounds; this process is the BFF, or dlt for dlt):")
        for key, spent in cpu.items():
            case, _, name = key.partition(" ")
            if case.startswith("incremental"):
                continue  # a handful of records: per-record CPU means little there
            source = {"resync": results, "first-load": first, "customers": many}[case][name]
            print(cpu_line(key, spent, source[0][0]) + ("   (goal ≤ 22)" if key == "resync project" else ""))
        # The same rounds' CPU as ratios: a machine slowed by its neighbours slows every contender.
        print("CPU per record, all processes, as same-round ratios (lower is better for the project):")
        for case in ("resync", "first-load", "customers"):
            project_cpu = [sum(s.values()) for s in cpu.get(f"{case} project", [])]
            for other in ("floor", "dlt"):
                other_cpu = [sum(s.values()) for s in cpu.get(f"{case} {other}", [])]
                if project_cpu and len(other_cpu) == len(project_cpu):
                    per = [p / o for p, o in zip(project_cpu, other_cpu, strict=True)]
                    # Issue 27's goal (22 ms per 1,000 records) came from a run whose floor spent
                    # 8.0: in same-run terms, at most 2.75 times the floor's CPU.
                    goal = (
                        "   (goal ≤ 2.75: 22 ms against the floor's 8.0)"
                        if case == "resync" and other == "floor"
                        else ""
                    )
                    print(
                        f"  {case + ' project / ' + other:<34} min {min(per):5.2f}   median"
                        f" {statistics.median(per):5.2f}   max {max(per):5.2f}{goal}"
                    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--scale", type=int, default=251, help="BFF_SANDBOX_SCALE: 200 × scale bank transactions (default 50,200)"
    )
    parser.add_argument(
        "--customers", type=int, default=4, help="customers syncing at once in the second part (1 skips it)"
    )
    parser.add_argument("--only", choices=("project", "floor", "dlt"), help="run one contender alone (for py-spy)")
    parser.add_argument("--dlt", choices=("postgres", "duckdb", "none"), default="postgres", help="dlt's destination")
    parser.add_argument(
        "--cases", default="resync,first-load,incremental", help="which loads to measure (comma-separated; default all)"
    )
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
