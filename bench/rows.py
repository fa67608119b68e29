"""Rows API latency: a filtered, ordered page of 100 from a 200,000-row table, through the API vs
the same SQL sent straight with psycopg, in one run.

Usage: python bench/rows.py [--rows 200000] [--requests 200] [--warmup 20] [--rounds 3]

One embedded PostgreSQL (in a temporary directory) and one BFF on uvicorn (a thread of this
process). A synced table of Sandbox CRM deals gets ``--rows`` rows: most synced at one time,
the newest 5 % an hour later (so ``updated_since`` is selective, as in a nightly job's read).
Each iteration reads

    GET /api/database/rows/table/{id}/?user_field_names=true&size=100
        &updated_since=<between the two syncs>&filter__stage__equal=closedwon&order_by=-amount

and then runs the same two statements (the count and the page) with psycopg on one warm
connection, alternating so both see the same machine noise. Prints the EXPLAIN ANALYZE of
both statements, then p50/p95 of both and the API/direct ratios (goal: ≤ 2× at p50) per
round and as min/median/max over ``--rounds`` rounds. Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql

from bff.app import create_app
from bff.cli import create_partner
from bff.connectors import load_connectors
from bff.settings import Secret, Settings, generate_encryption_key, generate_secret_key
from bff.store import Store
from bff.testing import TestDatabases, serve_in_thread, stop_embedded
from bff.warehouse import Warehouse

FIRST_SYNC = 1_800_000_000.0
SECOND_SYNC = FIRST_SYNC + 3600
STAGES = (
    "appointmentscheduled",
    "qualifiedtobuy",
    "presentationscheduled",
    "decisionmakerboughtin",
    "contractsent",
    "closedwon",
    "closedlost",
)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def deal(i: int) -> dict[str, Any]:
    return {
        "id": f"d_{i:07d}",
        "name": f"Company {i % 997}: product {i % 13}",
        "amount": float((i * 104_729) % 4_950_000) / 100 + 500,
        "stage": STAGES[(i * 3) % len(STAGES)],
        "contact_id": f"c_{(i * 37) % 1250 + 1:04d}",
        "created_at": "2025-03-07T00:00:00Z",
        "updated_at": f"2026-01-{1 + i % 28:02d}T00:00:00Z",
    }


class Clock:
    now = FIRST_SYNC

    def __call__(self) -> float:
        return self.now


async def load(url: str, account_id: int, rows: int) -> tuple[int, str, str]:
    """Write the table through the warehouse's own writer; returns (table id, schema, physical name)."""
    store = Store(url)
    await store.open()
    try:
        connection = await store.connections.create(account_id, "sandbox_crm", "CRM", "OK")
        clock = Clock()
        warehouse = Warehouse(store, clock=clock)
        writer = await warehouse.open_table(account_id, connection.id, load_connectors()["sandbox_crm"].stream("deals"))
        newest = rows - rows // 20
        page = 5000
        for start in range(0, rows, page):
            clock.now = FIRST_SYNC if start < newest else SECOND_SYNC
            await writer.write(
                [deal(i) for i in range(start, min(rows, start + page))], {}, run_id=1 if start < newest else 2
            )
        async with store.connection() as conn:
            await conn.execute(sql.SQL("ANALYZE {}").format(writer.table.identifier))
        return writer.table.id, writer.table.schema, writer.table.physical
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bff-bench-rows-"))
    try:
        databases = TestDatabases(root)
        url = databases.create()
        settings = Settings(
            data_dir=root / "data",
            secret_keys=(Secret(generate_secret_key()),),
            encryption_key=Secret(generate_encryption_key()),
            database_url=Secret(url),
            run_worker=False,
        )
        with serve_in_thread(create_app(settings)) as base_url, httpx.Client(base_url=base_url, timeout=30) as http:
            partner = asyncio.run(create_partner(settings, "bench", []))
            headers = {"Authorization": f"Bearer {partner['token']}"}
            account = http.post(
                "/api/partner/sub-account/integrate/", json={"external_id": "bench"}, headers=headers
            ).json()
            # The warehouse read API allows 120 reads per token per minute: read with several tokens
            # (a token names the second it was minted, so one per second).
            tokens: list[str] = []
            for _ in range((args.requests * args.rounds + args.warmup) // 100 + 1):
                if tokens:
                    time.sleep(1.05)
                path = f"/api/partner/sub-account/identity/?account_id={account['account_id']}"
                tokens.append(http.get(path, headers=headers).json()["token"])
            started = time.monotonic()
            table_id, schema, physical = asyncio.run(load(url, int(account["account_id"]), args.rows))
            print(f"loaded {args.rows:,} rows in {time.monotonic() - started:.1f} s")
            rounds = measure(http, url, tokens, table_id, schema, physical, args.requests, args.warmup, args.rounds)
    finally:
        stop_embedded(root / "postgres")
        shutil.rmtree(root, ignore_errors=True)

    print(
        f"\na filtered, ordered page of 100 from {args.rows:,} rows: {args.rounds} rounds of {args.requests} "
        f"requests each way (after {args.warmup} warm-up)"
    )
    print(f"{'round':8}{'api p50':>10}{'direct p50':>12}{'api p95':>10}{'direct p95':>12}{'p50 ratio':>11}")
    ratios = []
    for n, timings in enumerate(rounds, 1):
        api50, direct50 = percentile(timings["api"], 50), percentile(timings["direct"], 50)
        ratios.append(api50 / direct50)
        print(
            f"{n:<8}{api50:10.2f}{direct50:12.2f}{percentile(timings['api'], 95):10.2f}"
            f"{percentile(timings['direct'], 95):12.2f}{ratios[-1]:10.2f}x"
        )
    print(
        f"ratio p50 API/direct: min {min(ratios):.2f}x, median {statistics.median(ratios):.2f}x, "
        f"max {max(ratios):.2f}x  (goal ≤ 2x)"
    )


def measure(
    http: httpx.Client,
    url: str,
    tokens: list[str],
    table_id: int,
    schema: str,
    physical: str,
    requests: int,
    warmup: int,
    rounds: int,
) -> list[dict[str, list[float]]]:
    since = dt.datetime.fromtimestamp(FIRST_SYNC + 1800, tz=dt.UTC).isoformat().replace("+00:00", "Z")
    path = (
        f"/api/database/rows/table/{table_id}/?user_field_names=true&size=100"
        f"&updated_since={since}&filter__stage__equal=closedwon&order_by=-amount"
    )
    auths = [{"Authorization": f"Bearer {token}"} for token in tokens]
    target = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(physical))
    where = sql.SQL("stage = %s AND _synced_at >= %s")
    count = sql.SQL("SELECT COUNT(*) FROM {} WHERE {}").format(target, where)
    page = sql.SQL(
        "SELECT id, name, amount, stage, contact_id, created_at, updated_at, _synced_at, _run_id FROM {} WHERE {}"
        " ORDER BY amount DESC NULLS LAST, _seq LIMIT 100 OFFSET 0"
    ).format(target, where)
    params = ("closedwon", dt.datetime.fromtimestamp(FIRST_SYNC + 1800, tz=dt.UTC))  # _synced_at is timestamptz
    measured: list[dict[str, list[float]]] = []
    with psycopg.connect(url, autocommit=True) as conn:
        answer = http.get(path, headers=auths[-1])
        body = answer.json()
        total = conn.execute(count, params).fetchone()
        print(
            f"API: {answer.status_code}, count {body.get('count')}, {len(body.get('results', []))} rows; direct count {total[0] if total else None}"
        )
        plan = conn.execute(sql.SQL("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) ") + page, params).fetchall()
        print("\nEXPLAIN ANALYZE of the page query:\n  " + "\n  ".join(row[0] for row in plan))
        plan = conn.execute(sql.SQL("EXPLAIN (ANALYZE, COSTS OFF) ") + count, params).fetchall()
        print("EXPLAIN ANALYZE of the count:\n  " + "\n  ".join(row[0] for row in plan))
        for i in range(warmup + requests * rounds):
            if i >= warmup and (i - warmup) % requests == 0:
                measured.append({"api": [], "direct": []})
            t0 = time.perf_counter()
            response = http.get(path, headers=auths[i % len(auths)])
            if response.status_code != 200:
                raise SystemExit(f"rows API answered {response.status_code}: {response.text[:200]}")
            response.json()
            t1 = time.perf_counter()
            conn.execute(count, params).fetchone()
            rows = conn.execute(page, params).fetchall()
            [dict(zip(("id", "name", "amount"), row, strict=False)) for row in rows]
            t2 = time.perf_counter()
            if i >= warmup:
                measured[-1]["api"].append((t1 - t0) * 1000)
                measured[-1]["direct"].append((t2 - t1) * 1000)
    return measured


if __name__ == "__main__":
    sys.exit(main())
