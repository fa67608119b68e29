"""Webhook latency: from a run's end to the partner's receiver getting its ``sync.finished``.

Usage: python3 bench/webhooks.py [--syncs 50]

One BFF app runs in-process (sandbox on, its own worker) with a webhook pointing at a real
HTTP receiver on localhost (uvicorn in a thread; ``webhook_allow_private`` is on, as in
``bff demo``). A Sandbox Bank connection is synced ``--syncs`` times, one after the other.
For each run it measures the run's own duration (started → finished, as the runs table
records it) and the time from ``finished_at`` until the receiver had the request (both on
this machine's wall clock). Every delivery is verified with the ``standardwebhooks``
package. Prints p50/p95 of both (target: webhook p95 ≤ 500 ms on localhost).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bff.app import create_app  # noqa: E402
from bff.settings import Secret, Settings, generate_encryption_key, generate_secret_key  # noqa: E402
from bff.testing import serve_in_thread  # noqa: E402


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


async def bench(syncs: int) -> None:
    arrivals: dict[int, float] = {}
    secret: list[str] = []

    async def receive(request: Request) -> Response:
        body = await request.body()
        arrived = time.time()
        event = Webhook(secret[0]).verify(body, dict(request.headers))
        if event["type"] == "sync.finished":
            arrivals[int(event["data"]["pipeline_run_id"])] = arrived
        return Response(status_code=204)

    receiver = Starlette(routes=[Route("/hooks", receive, methods=["POST"])])
    settings = Settings(
        data_dir=Path(tempfile.mkdtemp(prefix="bff-bench-webhooks-")),
        secret_keys=(Secret(generate_secret_key()),),
        encryption_key=Secret(generate_encryption_key()),
        public_url="http://bench.local",
        sandbox_enabled=True,
        schedules_enabled=False,
        webhook_allow_private=True,
    )
    app = create_app(settings)
    with serve_in_thread(receiver) as receiver_url:
        async with app.router.lifespan_context(app):
            services = app.services
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://bench.local"
            ) as client:
                partner = await services.store.partners.create("bench", [])
                partner_token = services.tokens.mint_partner_token(
                    partner_id=partner.id, generation=partner.token_generation
                ).token
                partner_auth = {"Authorization": f"Bearer {partner_token}"}
                hook = await client.put(
                    "/api/partner/webhook",
                    json={"url": f"{receiver_url}/hooks", "events": ["sync.finished"]},
                    headers=partner_auth,
                )
                secret.append(hook.json()["secret"])
                minted = await client.post(
                    "/api/partner/sub-account/integrate/", json={"external_id": "bench"}, headers=partner_auth
                )
                auth = {"Authorization": f"Bearer {minted.json()['token']}"}
                created = await client.post(
                    "/api/servers",
                    json={"servertype_id": "sandbox_bank", "login": "sandbox", "password": "sandbox"},
                    headers=auth,
                )
                server_id = created.json()["id"]
                durations: list[float] = []
                latencies: list[float] = []
                for _ in range(syncs):
                    answer = await client.post(f"/api/server/{server_id}/sync?wait=60", headers=auth)
                    assert answer.status_code == 200, answer.text
                    run = await services.store.runs.get(answer.json()["run"]["id"])
                    deadline = time.monotonic() + 30
                    while run.id not in arrivals:
                        assert time.monotonic() < deadline, "no webhook within 30 s"
                        await asyncio.sleep(0.002)
                    durations.append(run.finished_at - run.started_at)
                    latencies.append(arrivals[run.id] - run.finished_at)
    ms = 1000
    print(f"{syncs} syncs of Sandbox Bank, one webhook endpoint on localhost")
    print(
        f"  run duration (started → finished):      p50 {statistics.median(durations) * ms:7.1f} ms"
        f"   p95 {percentile(durations, 95) * ms:7.1f} ms"
    )
    print(
        f"  run finished → receiver has sync.finished: p50 {statistics.median(latencies) * ms:7.1f} ms"
        f"   p95 {percentile(latencies, 95) * ms:7.1f} ms  (target p95 ≤ 500 ms)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--syncs", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(bench(args.syncs))


if __name__ == "__main__":
    main()
