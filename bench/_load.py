"""Shared load-generation helpers for the benchmarks (prints, asserts nothing)."""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bff.testing import free_port

if TYPE_CHECKING:
    import psutil

__all__ = ["cpu_by_pid", "cpu_seconds", "free_port", "hammer", "postgres_processes", "raw_request", "start_server"]


def start_server(
    args: Sequence[str], port: int, env: dict[str, str] | None = None, *, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start a server subprocess and wait until its port accepts connections (``python -m`` imports
    from ``cwd`` first)."""
    proc = subprocess.Popen(
        [sys.executable, *args],
        env={**os.environ, **(env or {})},
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read().decode() if proc.stderr else "server exited") from None
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("server did not start")


def raw_request(method: str, path: str, *, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    """One HTTP/1.1 keep-alive request, pre-encoded so the load generator costs almost nothing."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def postgres_processes(postgres_dir: Path) -> list[psutil.Process]:
    """The postmaster (first line of postmaster.pid) and its children (one backend per connection)."""
    import psutil

    pid = int((postgres_dir / "postmaster.pid").read_text().split()[0])
    master = psutil.Process(pid)
    return [master, *master.children(recursive=True)]


def cpu_by_pid(procs: list[psutil.Process]) -> dict[int, float]:
    """CPU seconds (user + system) of each process still running."""
    import psutil

    seconds = {}
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        seconds[proc.pid] = times.user + times.system
    return seconds


def cpu_seconds(procs: list[psutil.Process]) -> float:
    return sum(cpu_by_pid(procs).values())


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status


async def hammer(
    port: int,
    request: bytes,
    *,
    concurrency: int = 50,
    seconds: float = 5.0,
    warmup: float = 1.0,
    meter: Callable[[], dict[str, float]] | None = None,
) -> dict[str, float]:
    """``concurrency`` keep-alive connections sending ``request`` for ``seconds``.

    A raw-socket client: an httpx client at 50 connections is slower than the
    servers it would measure, which would make every ratio read 1.0.
    ``meter``: CPU seconds by name, read when the timed requests start and after the last
    one was answered; the difference comes back as ``cpu <name>`` (seconds).
    """
    latencies: list[float] = []
    errors = 0

    async def worker(until: float, record: bool) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < until:
                started = time.perf_counter()
                writer.write(request)
                if await _read_response(reader) >= 400:
                    errors += 1
                if record:
                    latencies.append(time.perf_counter() - started)
        finally:
            writer.close()

    await asyncio.gather(*(worker(time.perf_counter() + warmup, False) for _ in range(concurrency)))
    cpu_before = meter() if meter is not None else {}
    began = time.perf_counter()
    await asyncio.gather(*(worker(began + seconds, True) for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    cpu_after = meter() if meter is not None else {}
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000,
        "errors": errors,
        "requests": len(latencies),
        **{f"cpu {name}": spent - cpu_before[name] for name, spent in cpu_after.items()},
    }
