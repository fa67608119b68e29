"""Writeback latency: ``add`` through the BFF vs the same request straight to the sandbox, in one run.

Usage: python bench/writeback.py [--requests 300] [--warmup 30] [--latency-ms 0,20]

For each sandbox latency (``BFF_SANDBOX_LATENCY_MS``; 0 = the sandbox answers at
once, which shows the BFF's whole overhead; 20 = closer to a real provider) one
`bff serve` process with the sandbox on. Each iteration sends one
``POST /api/server/{id}/records/message`` (identity token, Sandbox Chat) and
one ``POST /sandbox/chat/api/messages`` with the same body and the provider's
own API key, alternating so both see the same machine noise. Prints p50/p95 of
both and the BFF/direct ratios (goal: ≤ 1.3× at p50). Asserts nothing.
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

sys.path.insert(0, str(Path(__file__).parent))
from _load import free_port, start_server

from bff.settings import Settings, generate_encryption_key, generate_secret_key


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--latency-ms", default="0,20", help="comma-separated sandbox latencies to measure")
    args = parser.parse_args()

    for latency in [int(v) for v in args.latency_ms.split(",") if v.strip()]:
        timings = run(args.requests, args.warmup, latency)
        print(
            f"\nadd('message'), sandbox latency {latency} ms: {args.requests} requests each "
            f"(after {args.warmup} warm-up), one keep-alive client"
        )
        print(f"{'':8}{'p50 ms':>10}{'p95 ms':>10}{'mean ms':>10}")
        for name, values in timings.items():
            print(
                f"{name:8}{percentile(values, 50):10.2f}{percentile(values, 95):10.2f}{statistics.fmean(values):10.2f}"
            )
        for p in (50, 95):
            ratio = percentile(timings["bff"], p) / percentile(timings["direct"], p)
            print(f"ratio p{p} BFF/direct: {ratio:.2f}x" + ("  (goal ≤ 1.3x)" if p == 50 else ""))


def run(requests: int, warmup: int, latency_ms: int) -> dict[str, list[float]]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        "BFF_SECRET_KEYS": generate_secret_key(),
        "BFF_ENCRYPTION_KEY": generate_encryption_key(),
        "BFF_DATA_DIR": tempfile.mkdtemp(prefix="bff-bench-writeback-"),
        "BFF_PUBLIC_URL": base,
        "BFF_SANDBOX": "true",
        "BFF_SANDBOX_LATENCY_MS": str(latency_ms),
        "BFF_LOG_LEVEL": "warning",
    }
    from bff.cli import create_partner

    partner_token = asyncio.run(create_partner(Settings.from_env(env), "bench", []))["token"]
    server = start_server(["-m", "bff.cli", "serve", "--port", str(port)], port, env)
    timings: dict[str, list[float]] = {"bff": [], "direct": []}
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
            for i in range(warmup + requests):
                for name, (path, headers) in (("bff", via_bff), ("direct", direct)):
                    started = time.perf_counter()
                    answer = http.post(path, json={"channel": "qa", "text": f"bench {i}"}, headers=headers)
                    took = time.perf_counter() - started
                    if answer.status_code != 201:
                        raise SystemExit(f"{name}: HTTP {answer.status_code} {answer.text[:200]}")
                    if i >= warmup:
                        timings[name].append(took * 1000)
    finally:
        server.terminate()
        server.wait(timeout=10)
    return timings


if __name__ == "__main__":
    main()
