"""Writeback latency: ``add`` through the BFF vs the same request straight to the sandbox, in one run.

Usage: python bench/writeback.py [--requests 300] [--warmup 30] [--rounds 3] [--latency-ms 0,20]

For each sandbox latency (``BFF_SANDBOX_LATENCY_MS``; 0 = the sandbox answers at
once, which shows the BFF's whole overhead; 20 = closer to a real provider) one
`bff serve` process with the sandbox on. Each iteration sends one
``POST /api/server/{id}/records/message`` (identity token, Sandbox Chat) and
one ``POST /sandbox/chat/api/messages`` with the same body and the provider's
own API key, alternating so both see the same machine noise; both go through
one keep-alive httpx client, the baseline a partner's back-end would have without
the BFF. Prints p50/p95 of both, the BFF's added milliseconds and the BFF/direct
ratios (goal: ≤ 1.3× at p50), per round and as min/median/max over ``--rounds``
rounds. Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _load import free_port, start_server

from bff.settings import Settings, generate_encryption_key, generate_secret_key
from bff.testing import stop_embedded


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300, help="requests per round (each way)")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-ms", default="0,20", help="comma-separated sandbox latencies to measure")
    args = parser.parse_args()

    for latency in [int(v) for v in args.latency_ms.split(",") if v.strip()]:
        rounds = run(args.requests, args.warmup, args.rounds, latency)
        print(
            f"\nadd('message'), sandbox latency {latency} ms: {args.rounds} rounds of {args.requests} requests each way "
            f"(after {args.warmup} warm-up), one keep-alive client"
        )
        print(f"{'round':8}{'bff p50':>10}{'direct p50':>12}{'added ms':>10}{'p50 ratio':>11}{'p95 ratio':>11}")
        ratios = []
        for n, timings in enumerate(rounds, 1):
            bff50, direct50 = percentile(timings["bff"], 50), percentile(timings["direct"], 50)
            ratio95 = percentile(timings["bff"], 95) / percentile(timings["direct"], 95)
            ratios.append(bff50 / direct50)
            print(f"{n:<8}{bff50:10.2f}{direct50:12.2f}{bff50 - direct50:10.2f}{ratios[-1]:10.2f}x{ratio95:10.2f}x")
        print(
            f"ratio p50 BFF/direct: min {min(ratios):.2f}x, median {statistics.median(ratios):.2f}x, "
            f"max {max(ratios):.2f}x  (goal ≤ 1.3x)"
        )


def run(requests: int, warmup: int, rounds: int, latency_ms: int) -> list[dict[str, list[float]]]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    data_dir = Path(tempfile.mkdtemp(prefix="bff-bench-writeback-"))
    env = {
        "BFF_SECRET_KEYS": generate_secret_key(),
        "BFF_ENCRYPTION_KEY": generate_encryption_key(),
        "BFF_DATA_DIR": str(data_dir),
        "BFF_PUBLIC_URL": base,
        "BFF_SANDBOX": "true",
        "BFF_SANDBOX_LATENCY_MS": str(latency_ms),
        "BFF_LOG_LEVEL": "warning",
    }
    from bff.cli import create_partner

    partner_token = asyncio.run(create_partner(Settings.from_env(env), "bench", []))["token"]
    server = start_server(["-m", "bff.cli", "serve", "--port", str(port)], port, env)
    measured: list[dict[str, list[float]]] = []
    try:
        with httpx.Client(base_url=base, timeout=30) as http:
            partner = {"Authorization": f"Bearer {partner_token}"}
            integrate = http.post("/api/partner/sub-account/integrate/", json={"external_id": "bench"}, headers=partner)
            integrate_token = integrate.json()["token"]
            identity = http.get("/api/partner/sub-account/identity/?external_id=bench", headers=partner).json()["token"]
            created = http.post(
                "/api/servers",
                json={"servertype_id": "sandbox_chat", "api_key": "sandbox-chat-key"},
                headers={"Authorization": f"Bearer {integrate_token}"},
            )
            created.raise_for_status()
            via_bff = (f"/api/server/{created.json()['id']}/records/message", {"Authorization": f"Bearer {identity}"})
            direct = ("/sandbox/chat/api/messages", {"Authorization": "Bearer sandbox-chat-key"})
            for i in range(warmup + requests * rounds):
                if i >= warmup and (i - warmup) % requests == 0:
                    measured.append({"bff": [], "direct": []})
                for name, (path, headers) in (("bff", via_bff), ("direct", direct)):
                    started = time.perf_counter()
                    answer = http.post(path, json={"channel": "qa", "text": f"bench {i}"}, headers=headers)
                    took = time.perf_counter() - started
                    if answer.status_code != 201:
                        raise SystemExit(f"{name}: HTTP {answer.status_code} {answer.text[:200]}")
                    if i >= warmup:
                        measured[-1][name].append(took * 1000)
    finally:
        server.terminate()
        server.wait(timeout=10)
        stop_embedded(data_dir / "postgres")  # create_partner above joined the embedded server
        shutil.rmtree(data_dir, ignore_errors=True)
    return measured


if __name__ == "__main__":
    main()
