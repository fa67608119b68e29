"""Integrate-token minting vs a bare Starlette JSON endpoint, one uvicorn worker each.

Usage: python bench/tokens.py [--rounds 5] [--seconds 3] [--concurrency 50]

The BFF is `bff serve --no-worker` on the embedded PostgreSQL of a temporary data
directory: every mint reads the partner and the sub-account from PostgreSQL (the
sub-account is provisioned by the first request, then found). The two servers are
hammered in alternating rounds (the order flips every round), so noise on a shared
machine hits both alike. Prints min/median/max req/s, p50/p99 latency and the per-round
ratio mint/bare (goal ≥ 0.6, aim 0.7), plus the cost of one token verification in µs.

With psutil (the ``[bench]`` extra), also the CPU time (user + system) each server process
spent per request during the timed part of each round, in µs (median over rounds), and the
ratio bare/mint of those: less noisy than req/s on a shared machine, where the servers get
what the other jobs leave them. PostgreSQL's CPU per mint is printed beside it (the bare
endpoint has no database). The load average is printed before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path

# This checkout's bff, in this process and in the server it starts (run in it: to compare two checkouts).
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from _load import cpu_seconds, free_port, hammer, postgres_processes, raw_request, start_server  # noqa: E402

from bff.settings import Settings, generate_encryption_key, generate_secret_key  # noqa: E402
from bff.testing import stop_embedded  # noqa: E402
from bff.tokens import TokenAuthority  # noqa: E402

BARE_APP = """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
async def hello(request):
    await request.body()
    return JSONResponse({"token": "x" * 90, "expires_in": 1800, "expires_at": 0, "account_id": 1, "external_id": "bench"})
app = Starlette(routes=[Route("/hello", hello, methods=["POST"])])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""


def cpu_meters(pids: dict[str, int], postgres_dir: Path) -> dict[str, Callable[[], dict[str, float]]]:
    """For each server, what :func:`hammer` reads before and after the timed requests: the CPU seconds
    of the server process (and any children), and for the BFF PostgreSQL's (postmaster and backends).
    Empty without psutil."""
    try:
        import psutil
    except ImportError:
        return {}

    def of_server(pid: int) -> float:
        server = psutil.Process(pid)
        return cpu_seconds([server, *server.children(recursive=True)])

    return {
        "mint": lambda: {
            "server": of_server(pids["mint"]),
            "PostgreSQL": cpu_seconds(postgres_processes(postgres_dir)),
        },
        "bare": lambda: {"server": of_server(pids["bare"])},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="per server per round")
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    load_before = os.getloadavg()

    data_dir = Path(tempfile.mkdtemp(prefix="bff-bench-"))
    env = {
        "BFF_SECRET_KEYS": generate_secret_key(),
        "BFF_ENCRYPTION_KEY": generate_encryption_key(),
        "BFF_DATA_DIR": str(data_dir),
        "BFF_LOG_LEVEL": "warning",
    }
    from bff.cli import create_partner

    settings = Settings.from_env(env)
    partner_token = asyncio.run(create_partner(settings, "bench", []))["token"]

    bff_port, bare_port = free_port(), free_port()
    bff = start_server(["-m", "bff.cli", "serve", "--no-worker", "--port", str(bff_port)], bff_port, env, cwd=ROOT)
    bare = start_server(["-c", BARE_APP, str(bare_port)], bare_port)
    body = json.dumps({"external_id": "bench-customer", "first_name": "Bench"}).encode()
    headers = {"Authorization": f"JWT {partner_token}", "Content-Type": "application/json"}
    requests = {
        "mint": (bff_port, raw_request("POST", "/api/partner/sub-account/integrate/", body=body, headers=headers)),
        "bare": (bare_port, raw_request("POST", "/hello", body=body, headers=headers)),
    }
    results: dict[str, list[dict[str, float]]] = {"mint": [], "bare": []}
    meters = cpu_meters({"mint": bff.pid, "bare": bare.pid}, data_dir / "postgres")
    try:
        for i in range(args.rounds):
            for name in ("mint", "bare") if i % 2 == 0 else ("bare", "mint"):
                port, request = requests[name]
                results[name].append(
                    asyncio.run(
                        hammer(
                            port,
                            request,
                            concurrency=args.concurrency,
                            seconds=args.seconds,
                            warmup=0.5,
                            meter=meters.get(name),
                        )
                    )
                )
            mint, bare_round = results["mint"][-1], results["bare"][-1]
            cpu = (
                f"; CPU per request mint {mint['cpu server'] / mint['requests'] * 1e6:.0f} µs"
                f" (+ PostgreSQL {mint['cpu PostgreSQL'] / mint['requests'] * 1e6:.0f}),"
                f" bare {bare_round['cpu server'] / bare_round['requests'] * 1e6:.0f} µs"
                if meters
                else ""
            )
            print(
                f"  round {i + 1}: mint {mint['rps']:,.0f} req/s, bare {bare_round['rps']:,.0f} req/s{cpu}", flush=True
            )
    finally:
        bff.terminate()
        bare.terminate()
        bff.wait()
        bare.wait()
        # create_partner above started (or joined) the embedded server: stop it, leave nothing behind.
        stop_embedded(data_dir / "postgres")
        shutil.rmtree(data_dir, ignore_errors=True)

    tokens = TokenAuthority(settings)
    runs = 20000
    # First sight of a token: the HMAC check itself (distinct tokens, so nothing is remembered).
    fresh = [
        tokens.mint_integrate_token(partner_id=1, sub_account_id=i, generation=1, partner_generation=1).token
        for i in range(runs)
    ]
    fresh_partner = [tokens.mint_partner_token(partner_id=i, generation=1).token for i in range(runs)]
    verify_us = (
        timeit.timeit(lambda it=iter(fresh): tokens.verify(next(it), accept=("integrate",)), number=runs) / runs * 1e6
    )
    verify_last_us = (
        timeit.timeit(lambda it=iter(fresh_partner): tokens.verify(next(it), accept=("partner",)), number=runs)
        / runs
        * 1e6
    )
    # The same token again (a partner's back-end, a polling widget): the remembered check plus the age check.
    token = fresh[0]
    verify_again_us = timeit.timeit(lambda: tokens.verify(token, accept=("integrate",)), number=runs) / runs * 1e6
    mint_us = (
        timeit.timeit(
            lambda: tokens.mint_integrate_token(partner_id=1, sub_account_id=1, generation=1, partner_generation=1),
            number=runs,
        )
        / runs
        * 1e6
    )

    print(f"bff from {ROOT}")
    print(
        f"concurrency {args.concurrency}, {args.rounds} alternating rounds of {args.seconds:g} s per server, one uvicorn worker each"
    )
    for name, label in (("mint", "integrate mint"), ("bare", "bare JSON")):
        rounds = results[name]
        rps = [r["rps"] for r in rounds]
        print(
            f"{label:>15}: min {min(rps):6,.0f}   median {statistics.median(rps):6,.0f}   max {max(rps):6,.0f} req/s"
            f"   p50 {statistics.median(r['p50_ms'] for r in rounds):5.1f} ms   p99 {statistics.median(r['p99_ms'] for r in rounds):6.1f} ms"
            f"   ({sum(r['requests'] for r in rounds):.0f} requests, {sum(r['errors'] for r in rounds):.0f} errors)"
        )
    ratios = [m["rps"] / b["rps"] for m, b in zip(results["mint"], results["bare"], strict=True)]
    print(
        f"ratio mint/bare, per round: min {min(ratios):.2f}   median {statistics.median(ratios):.2f}   max {max(ratios):.2f}"
        "  (goal >= 0.6, aim 0.7)"
    )
    if meters:
        cpu_us = {
            name: statistics.median(r["cpu server"] / r["requests"] * 1e6 for r in results[name])
            for name in ("mint", "bare")
        }
        postgres_us = statistics.median(r["cpu PostgreSQL"] / r["requests"] * 1e6 for r in results["mint"])
        cpu_ratios = [
            (b["cpu server"] / b["requests"]) / (m["cpu server"] / m["requests"])
            for m, b in zip(results["mint"], results["bare"], strict=True)
        ]
        print(
            f"server CPU per request (user + system, median of rounds): mint {cpu_us['mint']:.0f} µs,"
            f" bare {cpu_us['bare']:.0f} µs; PostgreSQL {postgres_us:.0f} µs per mint"
        )
        print(
            f"ratio bare/mint CPU per request, per round: min {min(cpu_ratios):.2f}"
            f"   median {statistics.median(cpu_ratios):.2f}   max {max(cpu_ratios):.2f}"
        )
    else:
        print("psutil is not installed (pip install -e '.[bench]'): no CPU per request")
    load_after = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} CPUs, load average {load_before[0]:.1f} before, {load_after[0]:.1f} after"
        " (1 min; the CPU is shared: compare ratios, not absolute numbers)"
    )
    print(f"token verify, first sight: {verify_us:.1f} µs (integrate), {verify_last_us:.1f} µs (partner)")
    print(f"token verify, seen before: {verify_again_us:.1f} µs")
    print(f"token mint:   {mint_us:.1f} µs")


if __name__ == "__main__":
    main()
