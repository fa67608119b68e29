"""Script start-up: from a run request to the script's first API call.

Usage: python3 bench/scripts.py [--rounds 15]

One BFF app runs in-process (its own worker, the embedded PostgreSQL of a temporary data dir).
Its scripts' API socket notes when each request arrives. Three contenders, alternated round by
round so noise hits them alike:

* **sandboxed**: ``POST /api/interface/{id}/run`` → the job is picked up → bubblewrap →
  ``python -I -m bff.scripts.runner`` → ``pq.get_state()`` arrives on the socket;
* **unsandboxed**: the same through ``BFF_SCRIPTS=unsandboxed`` (no bubblewrap), to show what
  the sandbox itself costs;
* **baseline**: a plain ``python -c`` started by this process that imports httpx and makes the
  same call over the same socket with an identity token (no queue, no sandbox).

Prints min/median/max of each in ms, and sandboxed/baseline at p50 (goal ≤ 1.5×, p50 < 400 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from starlette.types import ASGIApp, Receive, Scope, Send

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bff.app import create_app  # noqa: E402
from bff.scripts.api_socket import ApiSocket  # noqa: E402
from bff.scripts.sandbox import Mode, clean_environment, resolve_mode  # noqa: E402
from bff.settings import Secret, Settings, generate_encryption_key, generate_secret_key  # noqa: E402

BASELINE = """
import sys, httpx
client = httpx.Client(transport=httpx.HTTPTransport(uds=sys.argv[1]), base_url="http://bff")
client.get(sys.argv[2], headers={"Authorization": "Bearer " + sys.argv[3]}).raise_for_status()
"""


class Arrivals:
    """Wraps the app the scripts' socket serves: when did a request for a path first arrive."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.seen: dict[str, float] = {}
        self.waiting: dict[str, asyncio.Event] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            key = f"{scope['path']}?{scope.get('query_string', b'').decode()}"
            self.seen.setdefault(key, time.perf_counter())
            if key in self.waiting:
                self.waiting[key].set()
        await self.app(scope, receive, send)

    async def arrival(self, key: str, timeout: float = 60) -> float:
        event = self.waiting.setdefault(key, asyncio.Event())
        while key not in self.seen:
            event.clear()
            await asyncio.wait_for(event.wait(), timeout)
        return self.seen.pop(key)


def summary(name: str, samples: list[float]) -> str:
    ms = [s * 1000 for s in samples]
    return f"{name:12} min {min(ms):7.1f}  median {statistics.median(ms):7.1f}  max {max(ms):7.1f} ms"


async def bench(rounds: int) -> None:
    settings = Settings(
        data_dir=Path(tempfile.mkdtemp(prefix="bff-bench-scripts-")),
        secret_keys=(Secret(generate_secret_key()),),
        encryption_key=Secret(generate_encryption_key()),
        public_url="http://bench.local",
        schedules_enabled=False,
    )
    app = create_app(settings)
    sandboxed = resolve_mode("sandboxed")
    unsandboxed = Mode("unsandboxed")
    async with app.router.lifespan_context(app):
        services = app.services
        arrivals = Arrivals(app)
        services.scripts._socket = ApiSocket(arrivals)
        socket_path = await services.scripts._socket.start()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench.local") as client:
            partner = await services.store.partners.create("bench", [])
            account = await services.store.sub_accounts.create(partner.id, "bench-1", {})
            token = services.tokens.mint_identity_token(
                partner_id=partner.id,
                sub_account_id=account.id,
                generation=account.token_generation,
                partner_generation=partner.token_generation,
            ).token
            headers = {"Authorization": f"Bearer {token}"}
            created = await client.post(
                "/api/interface", json={"name": "bench", "raw_code": "pq.get_state()"}, headers=headers
            )
            script_id = created.json()["id"]
            state_path = f"/api/interface/{script_id}/state"
            key = f"{state_path}?"

            async def via_run(mode: Mode) -> float:
                services.scripts.mode = mode
                started = time.perf_counter()
                response = await client.post(f"/api/interface/{script_id}/run", headers=headers)
                assert response.status_code == 202, response.text
                arrived = await arrivals.arrival(key)
                finished = await services.scripts.wait_run(response.json()["id"], timeout=60)
                assert finished is not None and finished.status == "succeeded", finished
                return arrived - started

            async def baseline() -> float:
                started = time.perf_counter()
                proc = await asyncio.to_thread(
                    subprocess.run,
                    [sys.executable, "-I", "-c", BASELINE, socket_path, state_path, token],
                    env=clean_environment("/tmp"),
                    capture_output=True,
                )
                arrived = await arrivals.arrival(key)
                assert proc.returncode == 0, proc.stderr
                return arrived - started

            contenders = {"sandboxed": lambda: via_run(sandboxed), "unsandboxed": lambda: via_run(unsandboxed)}
            contenders["baseline"] = baseline
            samples: dict[str, list[float]] = {name: [] for name in contenders}
            for run in contenders.values():  # warm-up: page cache, first socket start
                await run()
            for round_no in range(rounds):
                order = list(contenders.items())
                if round_no % 2:
                    order.reverse()
                for name, run in order:
                    samples[name].append(await run())

    print(f"Time from run request to the script's first API call, {rounds} rounds (alternating):")
    for name, values in samples.items():
        print(summary(name, values))
    p50 = {name: statistics.median(values) for name, values in samples.items()}
    print(f"sandboxed / baseline at p50:   {p50['sandboxed'] / p50['baseline']:.2f}x  (goal <= 1.5x)")
    print(f"unsandboxed / baseline at p50: {p50['unsandboxed'] / p50['baseline']:.2f}x")
    print(f"sandboxed p50: {p50['sandboxed'] * 1000:.0f} ms  (goal < 400 ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    asyncio.run(bench(args.rounds))


if __name__ == "__main__":
    main()
