"""Helpers for script tests: save a script, run it, read its runs."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from conftest import BFF
from records_helpers import Customer


async def add_script(bff: BFF, who: Customer, code: str, *, name: str = "test", schedule: int | None = None) -> int:
    created = await bff.client.post(
        "/api/interface", json={"name": name, "raw_code": code, "schedule": schedule}, headers=who.headers
    )
    assert created.status_code == 201, created.text
    return int(created.json()["id"])


async def run_script(bff: BFF, who: Customer, script_id: int, *, wait: float = 60) -> dict[str, Any]:
    started = await bff.client.post(f"/api/interface/{script_id}/run?wait={wait}", headers=who.headers)
    assert started.status_code == 200, started.text
    return started.json()  # type: ignore[no-any-return]


async def run_code(bff: BFF, who: Customer, code: str, *, wait: float = 60) -> dict[str, Any]:
    return await run_script(bff, who, await add_script(bff, who, code), wait=wait)


async def wait_status(bff: BFF, who: Customer, script_id: int, status: str, *, timeout: float = 20) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        runs = (await bff.client.get(f"/api/interface/{script_id}/runs", headers=who.headers)).json()["results"]
        if runs and runs[0]["status"] == status:
            return runs[0]  # type: ignore[no-any-return]
        assert asyncio.get_running_loop().time() < deadline, f"never {status}: {runs}"
        await asyncio.sleep(0.05)


def processes_of(uid: int) -> list[int]:
    """The pids running as ``uid`` (a run's own user id when the tests run as root)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("Uid:") and int(line.split()[1]) == uid:
                found.append(int(entry.name))
    return found


def running_as_root() -> bool:
    return os.geteuid() == 0
