"""Sync throughput: the sandbox CRM into the warehouse vs the same pages fetched without storing.

Usage: python bench/sync.py [--rounds 20] [--parallel 4]

One BFF app runs in-process with the sandbox on (the sandbox is reached through
the same in-process transport a real sync uses, so "fetching" costs only the
provider's JSON and our parsing: the hardest case for the ratio). Sandbox CRM
connections are made via the OAuth consent flow, then, alternating within one
session so that machine noise hits both alike:

* **stored**: full syncs through the API and the SyncRunner (cursors reset
  before each round, untimed, so all 1,550 records are fetched and upserted),
  timed from the sync request until the run has finished: run bookkeeping,
  logs and health included;
* **raw**: the same streams read through the same ConnectorSession, pages
  discarded.

Two scenarios: one connection at a time, and ``--parallel`` customers syncing at
once (each its own sub-account and warehouse file; ``BFF_SYNC_CONCURRENCY`` is
the default 4), which is how a server spends its day.
Prints records/s for both paths and stored/raw
(targets: ≥ 20,000 records/s stored, ratio ≥ 0.5).
"""

from __future__ import annotations

import argparse
import asyncio
import html
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bff import connections as rt  # noqa: E402
from bff.app import create_app  # noqa: E402
from bff.settings import Secret, Settings, generate_encryption_key, generate_secret_key  # noqa: E402

_HIDDEN = re.compile(r'<input[^>]*type="hidden"[^>]*name="([^"]+)"[^>]*value="([^"]*)"')


async def connect_crm(client: httpx.AsyncClient, token: str) -> int:
    """Create a sandbox CRM connection and press "Allow" on the consent page."""
    headers = {"Authorization": f"Bearer {token}"}
    created = (await client.post("/api/servers", json={"servertype_id": "sandbox_crm"}, headers=headers)).json()
    # What the start page does in the browser: swap the nonce for the binding cookie and the provider's URL.
    origin = str(client.base_url).rstrip("/")
    started = await client.post(
        created["oauth_url"], json={"nonce": created["oauth_nonce"], "opener_origin": origin}, headers={"Origin": origin}
    )
    page = await client.get(started.json()["authorize_url"])
    form = {name: html.unescape(value) for name, value in _HIDDEN.findall(page.text)}
    decision = await client.post("/sandbox/crm/oauth/decision", data={**form, "decision": "allow"})
    callback = await client.get(decision.headers["location"])
    assert callback.status_code == 200, callback.text
    return int(created["id"])


async def raw_round(services: Any, connection_id: int) -> int:
    connection = await services.store.get_connection_by_id(connection_id)
    session = rt.session_for_connection(services, connection)
    count = 0
    for stream in ("contacts", "deals"):
        async for page in session.read(stream, None):
            count += len(page.records)
    return count


async def stored_round(services: Any, client: httpx.AsyncClient, token: str, connection_id: int) -> int:
    """One full sync, timed by the caller from the API request until the run has finished."""
    runner = services.sync
    answer = await client.post(f"/api/server/{connection_id}/sync", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 202, answer.text
    await runner.wait(connection_id)
    run = await services.store.get_run(answer.json()["run_data"][0]["pipeline_run_id"])
    assert run.status == "succeeded", run
    return sum(run.records.values())


async def new_customer(services: Any, client: httpx.AsyncClient, partner_token: str, external_id: str) -> tuple[str, int, int]:
    """(integrate token, sub-account id, CRM connection id) of a fresh customer."""
    minted = (
        await client.post(
            "/api/partner/sub-account/integrate/",
            json={"external_id": external_id},
            headers={"Authorization": f"Bearer {partner_token}"},
        )
    ).json()
    token, sub_account_id = minted["token"], int(minted["account_id"])
    return token, sub_account_id, await connect_crm(client, token)


async def measure(services: Any, client: httpx.AsyncClient, customers: list[tuple[str, int, int]], rounds: int) -> dict[str, Any]:
    """Alternate raw and stored rounds over all ``customers`` at once; per-round records and seconds."""
    warehouse = services.warehouse
    raw: list[tuple[int, float]] = []
    stored: list[tuple[int, float]] = []
    # Warm-up: table creation, imports, caches.
    await asyncio.gather(*(stored_round(services, client, token, conn) for token, _, conn in customers))
    for _ in range(rounds):
        began = time.perf_counter()
        counts = await asyncio.gather(*(raw_round(services, conn) for _, _, conn in customers))
        raw.append((sum(counts), time.perf_counter() - began))
        # Forget the cursors (untimed) so the syncs fetch and upsert everything again.
        for _, account, conn in customers:
            await warehouse.reset_state(account, conn)
        began = time.perf_counter()
        counts = await asyncio.gather(*(stored_round(services, client, token, conn) for token, _, conn in customers))
        stored.append((sum(counts), time.perf_counter() - began))
    return {"raw": raw, "stored": stored}


def report(label: str, rounds: dict[str, Any]) -> None:
    """Medians over the rounds (robust on a shared machine), the paired ratio, and the plain totals."""
    raw, stored = rounds["raw"], rounds["stored"]
    raw_rate = statistics.median(n / t for n, t in raw)
    stored_rate = statistics.median(n / t for n, t in stored)
    # Each stored round ran right after its raw round: compare them pairwise, then take the median.
    paired = statistics.median((ns / ts) / (nr / tr) for (nr, tr), (ns, ts) in zip(raw, stored))
    totals = sum(n for n, _ in stored) / sum(t for _, t in stored) / (sum(n for n, _ in raw) / sum(t for _, t in raw))
    print(label)
    print(f"  raw fetch (no storing): {raw_rate:>9,.0f} records/s  (median of {len(raw)} rounds of {raw[0][0]} records)")
    print(f"  stored in warehouse:    {stored_rate:>9,.0f} records/s  (target ≥ 20,000)")
    print(f"  ratio stored/raw: {paired:.2f} (median of paired rounds; all rounds together: {totals:.2f})  (target ≥ 0.5)")


async def bench(rounds: int, parallel: int) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="bff-bench-sync-"))
    settings = Settings(
        data_dir=data_dir,
        secret_keys=(Secret(generate_secret_key()),),
        encryption_key=Secret(generate_encryption_key()),
        public_url="http://bench.local",
        sandbox_enabled=True,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        services = app.state.services
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench.local") as client:
            partner = await services.store.create_partner("bench", [])
            partner_token = services.tokens.mint_partner_token(partner_id=partner.id, generation=partner.token_generation).token
            customers = [await new_customer(services, client, partner_token, f"bench-{i}") for i in range(max(1, parallel))]
            one = await measure(services, client, customers[:1], rounds)
            many = await measure(services, client, customers, rounds) if parallel > 1 else None
            tables = await services.warehouse.list_tables(customers[0][1])
            rows = {table.stream: count for table, count in tables}

    print(f"{rounds} rounds of full syncs of the sandbox CRM (contacts + deals); each warehouse ends with {rows}")
    report("one connection at a time:", one)
    if many is not None:
        report(f"{parallel} customers syncing at once (BFF_SYNC_CONCURRENCY={settings.sync_concurrency}):", many)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--parallel", type=int, default=4, help="customers syncing at once in the second scenario (1 to skip it)")
    args = parser.parse_args()
    asyncio.run(bench(args.rounds, args.parallel))


if __name__ == "__main__":
    main()
