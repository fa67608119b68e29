"""`bff demo`: the BFF and the demo partner site on two origins, stopped together on Ctrl-C."""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import IO

import uvicorn
from starlette.types import ASGIApp

from .app import create_app
from .quiet_server import QuietServer
from .settings import Settings

SITE_HOST = "localhost"
BFF_HOST = "127.0.0.1"


def site_origin(site_port: int) -> str:
    return f"http://{SITE_HOST}:{site_port}"


def port_problem(bff_port: int, site_port: int) -> str | None:
    """Why the demo cannot listen on these ports (one sentence), or None. Checked before anything
    is created: no data directory, keys or database for a demo that cannot start."""
    for port, flag in ((bff_port, "--bff-port"), (site_port, "--site-port")):
        if not 1 <= port <= 65535:
            return f"{flag} {port} is not a port (1–65535)."
    if bff_port == site_port:
        return f"--bff-port and --site-port are both {bff_port}; the BFF and the demo site need a port each."
    for host, port, flag in ((BFF_HOST, bff_port, "--bff-port"), (SITE_HOST, site_port, "--site-port")):
        if not _port_free(host, port):
            return f"port {port} on {host} is in use (another `bff demo`?); stop it or pass {flag}."
    return None


class DataDirBusy(Exception):
    """Another process holds the data directory's lock; the message says which and what to do."""


def hold_data_dir(data_dir: Path, name: str, what: str) -> IO[str]:
    """Take ``data_dir/name`` (an flock held until this process exits, however it exits, so a crash
    leaves no stale lock) or raise DataDirBusy. Keep the returned file open while working."""
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = (data_dir / name).open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip()
        lock.close()
        pid = f" (pid {holder})" if holder.isdigit() else ""
        raise DataDirBusy(
            f"another {what}{pid} is using the data directory {data_dir.resolve()}; "
            "stop it first, or pass another --data-dir."
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


def run_demo(settings: Settings, *, bff_port: int, site_port: int) -> int:
    """Serve the demo until Ctrl-C (the caller checked the ports and holds the data directory)."""
    from .app import StartupError
    from .cli import ensure_demo_partner, ensure_demo_webhook
    from .db import DatabaseUnavailable

    try:
        # The database is up and migrated (`bff demo` checked it before calling).
        partner = asyncio.run(ensure_demo_partner(settings, site_origin(site_port), migrate=False))
        webhook_secret = asyncio.run(
            ensure_demo_webhook(settings, int(partner["id"]), f"{site_origin(site_port)}/webhooks", migrate=False)
        )
    except (StartupError, DatabaseUnavailable) as exc:
        print(f"bff: error: {exc}", file=sys.stderr)
        return 2
    # A demo on one's own machine: the sandbox's test controls need no admin key (`bff serve` closes them).
    settings = dataclasses.replace(settings, sandbox_env={"BFF_SANDBOX_CONTROLS": "open", **settings.sandbox_env})
    bff_app = create_app(settings, migrate_on_start=False)
    scripts_mode = bff_app.services.scripts.mode.describe()
    servers = [
        QuietServer(
            uvicorn.Config(
                bff_app,
                host=BFF_HOST,
                port=bff_port,
                access_log=False,
                log_level=settings.log_level,
            )
        )
    ]
    site_app = _demo_site_app(settings, partner, site_port, webhook_secret)
    if site_app is not None:
        servers.append(
            QuietServer(
                uvicorn.Config(site_app, host=SITE_HOST, port=site_port, access_log=False, log_level=settings.log_level)
            )
        )

    def banner() -> None:
        print(f"BFF (API, widget, sandbox providers): {settings.public_url}")
        if site_app is not None:
            print(f"Demo partner site:                    {site_origin(site_port)}")
        print(f"Data directory:                       {settings.data_dir.resolve()}")
        database = (
            "BFF_DATABASE_URL" if settings.database_url else f"embedded PostgreSQL in {settings.postgres_dir.resolve()}"
        )
        print(f"Database:                             {database}")
        print(f"Demo partner token:                   {settings.data_dir.resolve() / 'demo-partner.json'}")
        print(f"Scripts:                              {scripts_mode}")
        print("Press Ctrl-C to stop.", flush=True)

    async def serve_all() -> None:
        loop = asyncio.get_running_loop()

        def stop() -> None:
            for server in servers:
                server.should_exit = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        # Both servers start alike: their identical start-up lines ("Started server process…") print once.
        once = _Once()
        uvicorn_log = logging.getLogger("uvicorn.error")
        uvicorn_log.addFilter(once)
        tasks = [asyncio.ensure_future(server.serve()) for server in servers]
        # The URLs are printed once both servers listen, so they can be opened at once.
        while not all(server.started for server in servers):
            if any(task.done() for task in tasks):  # one could not start (port taken): stop the other
                stop()
                break
            await asyncio.sleep(0.02)
        else:
            banner()
        uvicorn_log.removeFilter(once)
        await asyncio.gather(*tasks)

    try:
        asyncio.run(serve_all())
    except SystemExit:  # uvicorn exits when it cannot start (its error is logged above)
        print("bff: error: the demo could not start (see the line above).", file=sys.stderr)
        return 2
    print("Stopped.", file=sys.stderr)
    return 0


class _Once(logging.Filter):
    """Lets each distinct message through once."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((socket.gethostbyname(host), port))
        except OSError:
            return False
    return True


def _demo_site_app(
    settings: Settings, partner: dict[str, object], site_port: int, webhook_secret: str
) -> ASGIApp | None:
    try:
        from demo_site.app import create_site_app
    except ImportError:
        return None
    return create_site_app(
        bff_url=settings.public_url,
        partner_token=str(partner["token"]),
        site_url=site_origin(site_port),
        webhook_secret=webhook_secret,
        # `bff partner rotate-token` on the demo's partner writes the new token there.
        partner_token_file=settings.data_dir / "demo-partner.json",
    )
