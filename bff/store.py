"""The store: the one module that owns all SQL of the control database.

SQLite (WAL) under the data directory through SQLAlchemy Core + aiosqlite, so
PostgreSQL is a URL away. Migrations are numbered scripts applied in order and
recorded in ``schema_version``. The per-customer warehouse lives elsewhere
(``warehouse.py``): one SQLite file per sub-account.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: partners and sub-accounts
        """CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
        """CREATE TABLE partners (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL,
            token_generation INTEGER NOT NULL DEFAULT 1,
            created_at REAL NOT NULL
        )""",
        """CREATE TABLE partner_origins (
            partner_id INTEGER NOT NULL REFERENCES partners(id) ON DELETE CASCADE,
            origin TEXT NOT NULL,
            PRIMARY KEY (partner_id, origin)
        )""",
        """CREATE INDEX partner_origins_origin ON partner_origins(origin)""",
        """CREATE TABLE sub_accounts (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            partner_id INTEGER NOT NULL REFERENCES partners(id) ON DELETE CASCADE,
            external_id TEXT NOT NULL,
            first_name TEXT NOT NULL DEFAULT '',
            last_name TEXT NOT NULL DEFAULT '',
            email TEXT NOT NULL DEFAULT '',
            language TEXT NOT NULL DEFAULT 'en',
            company_name TEXT NOT NULL DEFAULT '',
            token_generation INTEGER NOT NULL DEFAULT 1,
            created_at REAL NOT NULL,
            UNIQUE (partner_id, external_id)
        )""",
    ),
    (  # 2: connections, OAuth flows, sync runs and their logs
        """CREATE TABLE connections (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            sub_account_id INTEGER NOT NULL REFERENCES sub_accounts(id) ON DELETE CASCADE,
            connector TEXT NOT NULL,
            name TEXT NOT NULL,
            health_status TEXT NOT NULL,
            detail TEXT,
            config TEXT NOT NULL DEFAULT '{}',
            secrets BLOB,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        """CREATE INDEX connections_sub_account ON connections(sub_account_id)""",
        """CREATE TABLE oauth_flows (
            state_hash TEXT PRIMARY KEY,
            connection_id INTEGER NOT NULL REFERENCES connections(id) ON DELETE CASCADE,
            sub_account_id INTEGER NOT NULL,
            purpose TEXT NOT NULL,
            verifier BLOB,
            created_at REAL NOT NULL,
            used_at REAL
        )""",
        """CREATE TABLE runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            connection_id INTEGER NOT NULL REFERENCES connections(id) ON DELETE CASCADE,
            sub_account_id INTEGER NOT NULL,
            status TEXT NOT NULL,
            task_id TEXT NOT NULL,
            tables TEXT,
            records TEXT NOT NULL DEFAULT '{}',
            error TEXT,
            pid INTEGER,
            created_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL
        )""",
        """CREATE INDEX runs_connection ON runs(connection_id, id)""",
        # One active run per connection, enforced by the database itself.
        """CREATE UNIQUE INDEX runs_one_active ON runs(connection_id) WHERE status IN ('queued', 'running')""",
        """CREATE TABLE logs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            connection_id INTEGER NOT NULL REFERENCES connections(id) ON DELETE CASCADE,
            run_id INTEGER,
            ts REAL NOT NULL,
            level TEXT NOT NULL,
            message TEXT NOT NULL
        )""",
        """CREATE INDEX logs_connection ON logs(connection_id, id)""",
    ),
    (  # 3: the global index of warehouse tables (the tables live in per-sub-account files)
        # Ids are random, not sequential (they do not reveal how many tables other
        # customers have), and unique across every warehouse file.
        """CREATE TABLE warehouse_tables (
            id INTEGER PRIMARY KEY,
            sub_account_id INTEGER NOT NULL,
            connection_id INTEGER NOT NULL REFERENCES connections(id) ON DELETE CASCADE,
            stream TEXT NOT NULL,
            created_at REAL NOT NULL,
            UNIQUE (connection_id, stream)
        )""",
    ),
)

ACTIVE_RUN_STATUSES = ("queued", "running")

SUB_ACCOUNT_FIELDS = ("first_name", "last_name", "email", "language", "company_name")


@dataclasses.dataclass(frozen=True)
class Partner:
    id: int
    name: str
    token_generation: int
    created_at: float
    origins: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class SubAccount:
    id: int
    partner_id: int
    external_id: str
    first_name: str
    last_name: str
    email: str
    language: str
    company_name: str
    token_generation: int
    created_at: float

    def public_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "external_id": self.external_id,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "email": self.email,
            "language": self.language,
            "company_name": self.company_name,
            "created_at": iso(self.created_at),
        }


class ExternalIdTaken(Exception):
    def __init__(self, existing_id: int) -> None:
        super().__init__(existing_id)
        self.existing_id = existing_id


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


def _enable_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _begin_immediate(conn: Any) -> None:
    # pysqlite's implicit BEGIN is lazy (deferred) and upgrades locks late, which
    # deadlocks concurrent writers; take the write lock at the start instead.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


_CONNECTION_COLUMNS = "id, sub_account_id, connector, name, health_status, detail, config, secrets, created_at, updated_at"
_RUN_COLUMNS = "id, connection_id, sub_account_id, status, task_id, tables, records, error, pid, created_at, started_at, finished_at"


@dataclasses.dataclass(frozen=True)
class Connection:
    id: int
    sub_account_id: int
    connector: str
    name: str
    health_status: str
    detail: str | None
    config: dict[str, Any]
    secrets: bytes | None  # AES-GCM ciphertext; see crypto.Vault
    created_at: float
    updated_at: float

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Connection:
        values = list(row)
        values[6] = json.loads(values[6] or "{}")
        return cls(*values)


@dataclasses.dataclass(frozen=True)
class Run:
    id: int
    connection_id: int
    sub_account_id: int
    status: str
    task_id: str
    tables: list[str] | None
    records: dict[str, int]
    error: str | None
    pid: int | None
    created_at: float
    started_at: float | None
    finished_at: float | None

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Run:
        values = list(row)
        values[5] = json.loads(values[5]) if values[5] else None
        values[6] = json.loads(values[6] or "{}")
        return cls(*values)

    def public_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pipeline_run_id": self.id,
            "task_id": self.task_id,
            "status": self.status,
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "records": self.records,
            "tables": self.tables,
            "error": self.error,
        }


@dataclasses.dataclass(frozen=True)
class OAuthFlow:
    connection_id: int
    sub_account_id: int
    purpose: str
    verifier: bytes | None
    created_at: float


class RunAlreadyActive(Exception):
    def __init__(self, run_id: int | None) -> None:
        super().__init__(run_id)
        self.run_id = run_id


class ConnectionStore:
    """Connections, OAuth flows, runs and logs. Mixed into :class:`Store`."""

    # -- connections --------------------------------------------------------------

    async def create_connection(
        self: Any,
        sub_account_id: int,
        connector: str,
        name: str,
        health_status: str,
        config: Mapping[str, Any] | None = None,
        *,
        seal: Callable[[int], bytes] | None = None,
    ) -> Connection:
        """Insert a connection; ``seal(id)`` encrypts its secrets in the same transaction
        (the id is the ciphertext's associated data), so no row exists without them."""
        now = self.now()
        async with self._write() as conn:
            result = await conn.execute(
                text(
                    "INSERT INTO connections (sub_account_id, connector, name, health_status, config, created_at, updated_at)"
                    " VALUES (:s, :c, :n, :h, :cfg, :now, :now) RETURNING id"
                ),
                {"s": sub_account_id, "c": connector, "n": name, "h": health_status, "cfg": json.dumps(config or {}), "now": now},
            )
            connection_id = int(result.scalar_one())
            if seal is not None:
                await conn.execute(
                    text("UPDATE connections SET secrets = :sec WHERE id = :id"), {"sec": seal(connection_id), "id": connection_id}
                )
        connection = await self.get_connection(sub_account_id, connection_id)
        assert connection is not None
        return connection  # type: ignore[no-any-return]

    async def get_connection(self: Any, sub_account_id: int, connection_id: int) -> Connection | None:
        """A connection, only if it belongs to this sub-account."""
        row = self._read_one(
            f"SELECT {_CONNECTION_COLUMNS} FROM connections WHERE id = :id AND sub_account_id = :s",
            {"id": connection_id, "s": sub_account_id},
        )
        return Connection.from_row(row) if row else None

    async def get_connection_by_id(self: Any, connection_id: int) -> Connection | None:
        """Internal use only (callbacks, the sync runner): no tenant check."""
        row = self._read_one(f"SELECT {_CONNECTION_COLUMNS} FROM connections WHERE id = :id", {"id": connection_id})
        return Connection.from_row(row) if row else None

    async def list_connections(self: Any, sub_account_id: int) -> list[Connection]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                text(f"SELECT {_CONNECTION_COLUMNS} FROM connections WHERE sub_account_id = :s ORDER BY id"),
                {"s": sub_account_id},
            )
            return [Connection.from_row(row) for row in rows]

    async def update_connection(
        self: Any,
        connection_id: int,
        *,
        health_status: str | None = None,
        detail: str | None | type[Ellipsis] = ...,
        config: Mapping[str, Any] | None = None,
        secrets: bytes | None = None,
        name: str | None = None,
    ) -> None:
        sets, params = ["updated_at = :now"], {"id": connection_id, "now": self.now()}
        if health_status is not None:
            sets.append("health_status = :h")
            params["h"] = health_status
        if detail is not ...:
            sets.append("detail = :d")
            params["d"] = detail
        if config is not None:
            sets.append("config = :cfg")
            params["cfg"] = json.dumps(config)
        if secrets is not None:
            sets.append("secrets = :sec")
            params["sec"] = secrets
        if name is not None:
            sets.append("name = :n")
            params["n"] = name
        async with self._write() as conn:
            await conn.execute(text(f"UPDATE connections SET {', '.join(sets)} WHERE id = :id"), params)

    async def delete_connection(self: Any, sub_account_id: int, connection_id: int) -> bool:
        async with self._write() as conn:
            result = await conn.execute(
                text("DELETE FROM connections WHERE id = :id AND sub_account_id = :s"), {"id": connection_id, "s": sub_account_id}
            )
            return bool(result.rowcount)

    # -- OAuth flows ------------------------------------------------------------------

    async def create_oauth_flow(
        self: Any, state_hash: str, *, connection_id: int, sub_account_id: int, purpose: str, verifier: bytes | None
    ) -> None:
        async with self._write() as conn:
            await conn.execute(
                text(
                    "INSERT INTO oauth_flows (state_hash, connection_id, sub_account_id, purpose, verifier, created_at)"
                    " VALUES (:h, :c, :s, :p, :v, :now)"
                ),
                {"h": state_hash, "c": connection_id, "s": sub_account_id, "p": purpose, "v": verifier, "now": self.now()},
            )

    async def consume_oauth_flow(self: Any, state_hash: str, *, max_age: float) -> OAuthFlow | None:
        """Mark a flow used and return it; None when unknown, used already, or too old."""
        now = self.now()
        async with self._write() as conn:
            row = (
                await conn.execute(
                    text(
                        "UPDATE oauth_flows SET used_at = :now WHERE state_hash = :h AND used_at IS NULL"
                        " AND created_at >= :oldest RETURNING connection_id, sub_account_id, purpose, verifier, created_at"
                    ),
                    {"h": state_hash, "now": now, "oldest": now - max_age},
                )
            ).first()
        return OAuthFlow(*row) if row else None

    # -- runs ---------------------------------------------------------------------------

    async def create_run(
        self: Any, connection_id: int, sub_account_id: int, *, task_id: str, tables: Sequence[str] | None
    ) -> Run:
        """Queue a run; raises :class:`RunAlreadyActive` if one is queued or running."""
        try:
            async with self._write() as conn:
                result = await conn.execute(
                    text(
                        "INSERT INTO runs (connection_id, sub_account_id, status, task_id, tables, created_at)"
                        " VALUES (:c, :s, 'queued', :t, :tables, :now) RETURNING id"
                    ),
                    {
                        "c": connection_id,
                        "s": sub_account_id,
                        "t": task_id,
                        "tables": json.dumps(list(tables)) if tables else None,
                        "now": self.now(),
                    },
                )
                run_id = int(result.scalar_one())
        except IntegrityError:
            active = await self.active_run(connection_id)
            raise RunAlreadyActive(active.id if active else None) from None
        run = await self.get_run(run_id)
        assert run is not None
        return run  # type: ignore[no-any-return]

    async def get_run(self: Any, run_id: int) -> Run | None:
        row = self._read_one(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = :id", {"id": run_id})
        return Run.from_row(row) if row else None

    async def active_run(self: Any, connection_id: int) -> Run | None:
        row = self._read_one(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE connection_id = :c AND status IN ('queued', 'running')",
            {"c": connection_id},
        )
        return Run.from_row(row) if row else None

    async def last_run(self: Any, connection_id: int) -> Run | None:
        row = self._read_one(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE connection_id = :c ORDER BY id DESC LIMIT 1", {"c": connection_id}
        )
        return Run.from_row(row) if row else None

    async def list_runs(self: Any, connection_id: int, *, offset: int, limit: int) -> tuple[int, list[Run]]:
        async with self.engine.connect() as conn:
            count = (await conn.execute(text("SELECT COUNT(*) FROM runs WHERE connection_id = :c"), {"c": connection_id})).scalar_one()
            rows = await conn.execute(
                text(f"SELECT {_RUN_COLUMNS} FROM runs WHERE connection_id = :c ORDER BY id DESC LIMIT :l OFFSET :o"),
                {"c": connection_id, "l": limit, "o": offset},
            )
            return int(count), [Run.from_row(row) for row in rows]

    async def update_run(
        self: Any,
        run_id: int,
        *,
        status: str | None = None,
        records: Mapping[str, int] | None = None,
        error: str | None = None,
        pid: int | None = None,
        started: bool = False,
        finished: bool = False,
    ) -> None:
        sets: list[str] = []
        params: dict[str, Any] = {"id": run_id, "now": self.now()}
        if status is not None:
            sets.append("status = :status")
            params["status"] = status
        if records is not None:
            sets.append("records = :records")
            params["records"] = json.dumps(dict(records))
        if error is not None:
            sets.append("error = :error")
            params["error"] = error
        if pid is not None:
            sets.append("pid = :pid")
            params["pid"] = pid
        if started:
            sets.append("started_at = :now")
        if finished:
            sets.append("finished_at = :now")
        if not sets:
            return
        async with self._write() as conn:
            await conn.execute(text(f"UPDATE runs SET {', '.join(sets)} WHERE id = :id"), params)

    async def interrupt_stale_runs(self: Any) -> list[Run]:
        """Runs left queued/running by a dead process become ``interrupted``."""
        async with self._write() as conn:
            rows = await conn.execute(
                text(
                    "UPDATE runs SET status = 'interrupted', finished_at = :now,"
                    " error = 'The process running this sync stopped before it finished.'"
                    " WHERE status IN ('queued', 'running') RETURNING " + _RUN_COLUMNS
                ),
                {"now": self.now()},
            )
            return [Run.from_row(row) for row in rows]

    # -- logs ------------------------------------------------------------------------------

    async def add_log(self: Any, connection_id: int, level: str, message: str, *, run_id: int | None = None) -> None:
        async with self._write() as conn:
            await conn.execute(
                text("INSERT INTO logs (connection_id, run_id, ts, level, message) VALUES (:c, :r, :ts, :l, :m)"),
                {"c": connection_id, "r": run_id, "ts": self.now(), "l": level, "m": message},
            )

    async def list_logs(self: Any, connection_id: int, *, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
        async with self.engine.connect() as conn:
            count = (await conn.execute(text("SELECT COUNT(*) FROM logs WHERE connection_id = :c"), {"c": connection_id})).scalar_one()
            rows = await conn.execute(
                text("SELECT ts, level, message, run_id FROM logs WHERE connection_id = :c ORDER BY id DESC LIMIT :l OFFSET :o"),
                {"c": connection_id, "l": limit, "o": offset},
            )
            return int(count), [
                {"ts": iso(ts), "level": level, "message": message, "pipeline_run_id": run_id} for ts, level, message, run_id in rows
            ]


class Store(ConnectionStore):
    """Async access to the control database. One instance per app."""

    def __init__(self, data_dir: Path, *, clock: Any = time.time) -> None:
        self.path = Path(data_dir) / "bff.sqlite3"
        self._clock = clock
        self.engine: AsyncEngine = create_async_engine(f"sqlite+aiosqlite:///{self.path}")
        event.listen(self.engine.sync_engine, "connect", _enable_sqlite_pragmas)
        # Let SQLAlchemy drive transactions; we emit BEGIN IMMEDIATE ourselves.
        event.listen(self.engine.sync_engine, "connect", lambda c, r: setattr(c, "isolation_level", None))
        event.listen(self.engine.sync_engine, "begin", _begin_immediate)

        self._reader: sqlite3.Connection | None = None
        # One writer at a time inside the process: SQLite would otherwise make
        # concurrent writers sleep in its busy handler.
        self._write_lock = asyncio.Lock()

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await self.migrate()
        # Hot-path lookups (every authenticated request) use a plain sqlite3
        # connection on the event loop: an indexed read in WAL mode takes
        # microseconds and never waits for writers, far less than a thread hop.
        self._reader = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._reader.execute("PRAGMA busy_timeout=1000")
        self._reader.execute("PRAGMA query_only=ON")

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        await self.engine.dispose()

    def _read_one(self, sql: str, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        assert self._reader is not None, "Store.open() was not called"
        return self._reader.execute(sql, params).fetchone()  # type: ignore[no-any-return]

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        async with self._write_lock, self.engine.begin() as conn:
            yield conn

    def now(self) -> float:
        return float(self._clock())

    # -- migrations -----------------------------------------------------------

    async def migrate(self) -> int:
        async with self._write() as conn:
            await conn.execute(text("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"))
            current = (await conn.execute(text("SELECT MAX(version) FROM schema_version"))).scalar() or 0
            for version, statements in enumerate(MIGRATIONS, start=1):
                if version <= current:
                    continue
                for statement in statements:
                    await conn.execute(text(statement))
                await conn.execute(text("INSERT INTO schema_version (version) VALUES (:v)"), {"v": version})
            return len(MIGRATIONS)

    async def get_meta(self, key: str) -> str | None:
        async with self.engine.connect() as conn:
            return (await conn.execute(text("SELECT value FROM meta WHERE key = :k"), {"k": key})).scalar()

    async def set_meta(self, key: str, value: str) -> None:
        async with self._write() as conn:
            await conn.execute(
                text("INSERT INTO meta (key, value) VALUES (:k, :v) ON CONFLICT(key) DO UPDATE SET value = :v"),
                {"k": key, "v": value},
            )

    # -- partners ---------------------------------------------------------------

    async def create_partner(self, name: str, origins: Sequence[str]) -> Partner:
        async with self._write() as conn:
            result = await conn.execute(
                text("INSERT INTO partners (name, created_at) VALUES (:name, :now) RETURNING id"),
                {"name": name, "now": self.now()},
            )
            partner_id = int(result.scalar_one())
            for origin in dict.fromkeys(origins):
                await conn.execute(
                    text("INSERT INTO partner_origins (partner_id, origin) VALUES (:p, :o)"),
                    {"p": partner_id, "o": origin},
                )
            partner = await self._partner(conn, partner_id)
        assert partner is not None
        return partner

    async def get_partner(self, partner_id: int) -> Partner | None:
        """The partner row without its origins (hot path); see :meth:`partner_has_origin`."""
        row = self._read_one(
            "SELECT id, name, token_generation, created_at FROM partners WHERE id = :p", {"p": partner_id}
        )
        return Partner(*row) if row else None

    async def find_partner_by_name(self, name: str) -> Partner | None:
        async with self.engine.connect() as conn:
            partner_id = (
                await conn.execute(text("SELECT id FROM partners WHERE name = :n ORDER BY id LIMIT 1"), {"n": name})
            ).scalar()
            return await self._partner(conn, partner_id) if partner_id is not None else None

    async def add_partner_origins(self, partner_id: int, origins: Sequence[str]) -> None:
        async with self._write() as conn:
            for origin in origins:
                await conn.execute(
                    text("INSERT OR IGNORE INTO partner_origins (partner_id, origin) VALUES (:p, :o)"),
                    {"p": partner_id, "o": origin},
                )

    async def bump_partner_generation(self, partner_id: int) -> Partner | None:
        async with self._write() as conn:
            await conn.execute(
                text("UPDATE partners SET token_generation = token_generation + 1 WHERE id = :p"), {"p": partner_id}
            )
            return await self._partner(conn, partner_id)

    async def partner_has_origin(self, partner_id: int, origin: str) -> bool:
        row = self._read_one(
            "SELECT 1 FROM partner_origins WHERE partner_id = :p AND origin = :o", {"p": partner_id, "o": origin}
        )
        return row is not None

    async def all_origins(self) -> frozenset[str]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(text("SELECT DISTINCT origin FROM partner_origins"))
            return frozenset(row[0] for row in rows)

    async def _partner(self, conn: AsyncConnection, partner_id: int) -> Partner | None:
        row = (
            await conn.execute(
                text("SELECT id, name, token_generation, created_at FROM partners WHERE id = :p"), {"p": partner_id}
            )
        ).first()
        if row is None:
            return None
        origins = await conn.execute(
            text("SELECT origin FROM partner_origins WHERE partner_id = :p ORDER BY origin"), {"p": partner_id}
        )
        return Partner(*row, origins=tuple(r[0] for r in origins))

    # -- sub-accounts -------------------------------------------------------------

    async def create_sub_account(self, partner_id: int, external_id: str, fields: Mapping[str, str]) -> SubAccount:
        """Create a sub-account; raises :class:`ExternalIdTaken` when it exists."""
        async with self._write() as conn:
            new_id = await self._insert_sub_account(conn, partner_id, external_id, fields)
            account = await self._sub_account(conn, partner_id, external_id=external_id)
        assert account is not None
        if new_id is None:
            raise ExternalIdTaken(account.id)
        return account

    async def get_or_create_sub_account(
        self, partner_id: int, external_id: str, fields: Mapping[str, str]
    ) -> tuple[SubAccount, bool]:
        """Provision on first use. Safe under concurrency: the unique index decides."""
        existing = await self.get_sub_account(partner_id, external_id=external_id)
        if existing is not None:
            return existing, False
        async with self._write() as conn:
            new_id = await self._insert_sub_account(conn, partner_id, external_id, fields)
            account = await self._sub_account(conn, partner_id, external_id=external_id)
        assert account is not None
        return account, new_id is not None

    async def _insert_sub_account(
        self, conn: AsyncConnection, partner_id: int, external_id: str, fields: Mapping[str, str]
    ) -> int | None:
        values = {name: fields.get(name) or "" for name in SUB_ACCOUNT_FIELDS}
        values["language"] = values["language"] or "en"
        result = await conn.execute(
            text(
                "INSERT INTO sub_accounts (partner_id, external_id, first_name, last_name, email, language,"
                " company_name, created_at) VALUES (:partner_id, :external_id, :first_name, :last_name, :email,"
                " :language, :company_name, :now) ON CONFLICT (partner_id, external_id) DO NOTHING RETURNING id"
            ),
            {"partner_id": partner_id, "external_id": external_id, "now": self.now(), **values},
        )
        new_id = result.scalar()
        return int(new_id) if new_id is not None else None

    async def get_sub_account(
        self, partner_id: int, *, account_id: int | None = None, external_id: str | None = None
    ) -> SubAccount | None:
        if account_id is not None:
            where, value = "id = :v", account_id
        elif external_id is not None:
            where, value = "external_id = :v", external_id
        else:
            return None
        row = self._read_one(
            f"SELECT {_SUB_ACCOUNT_COLUMNS} FROM sub_accounts WHERE partner_id = :p AND {where}",
            {"p": partner_id, "v": value},
        )
        return SubAccount(*row) if row else None

    async def get_sub_account_by_id(self, account_id: int) -> SubAccount | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(text(f"SELECT {_SUB_ACCOUNT_COLUMNS} FROM sub_accounts WHERE id = :id"), {"id": account_id})
            ).first()
            return SubAccount(*row) if row else None

    async def _sub_account(
        self,
        conn: AsyncConnection,
        partner_id: int,
        *,
        account_id: int | None = None,
        external_id: str | None = None,
    ) -> SubAccount | None:
        if account_id is not None:
            where, params = "id = :v", {"v": account_id}
        elif external_id is not None:
            where, params = "external_id = :v", {"v": external_id}
        else:
            return None
        row = (
            await conn.execute(
                text(f"SELECT {_SUB_ACCOUNT_COLUMNS} FROM sub_accounts WHERE partner_id = :p AND {where}"),
                {"p": partner_id, **params},
            )
        ).first()
        return SubAccount(*row) if row else None

    async def list_sub_accounts(self, partner_id: int, *, offset: int, limit: int) -> tuple[int, list[SubAccount]]:
        async with self.engine.connect() as conn:
            count = (
                await conn.execute(text("SELECT COUNT(*) FROM sub_accounts WHERE partner_id = :p"), {"p": partner_id})
            ).scalar_one()
            rows = await conn.execute(
                text(
                    f"SELECT {_SUB_ACCOUNT_COLUMNS} FROM sub_accounts WHERE partner_id = :p"
                    " ORDER BY id LIMIT :limit OFFSET :offset"
                ),
                {"p": partner_id, "limit": limit, "offset": offset},
            )
            return int(count), [SubAccount(*row) for row in rows]

    async def bump_sub_account_generation(self, partner_id: int, account_id: int) -> SubAccount | None:
        async with self._write() as conn:
            await conn.execute(
                text(
                    "UPDATE sub_accounts SET token_generation = token_generation + 1"
                    " WHERE id = :id AND partner_id = :p"
                ),
                {"id": account_id, "p": partner_id},
            )
            return await self._sub_account(conn, partner_id, account_id=account_id)

    # -- warehouse table index ------------------------------------------------------

    async def allocate_warehouse_table(self, sub_account_id: int, connection_id: int, stream: str) -> int:
        """The table id of ``connection_id``'s ``stream``: existing, or a new random one."""
        row = self._read_one(
            "SELECT id FROM warehouse_tables WHERE connection_id = :c AND stream = :stream AND sub_account_id = :s",
            {"c": connection_id, "stream": stream, "s": sub_account_id},
        )
        if row is not None:
            return int(row[0])
        for _ in range(20):
            candidate = WAREHOUSE_TABLE_ID_MIN + secrets.randbelow(WAREHOUSE_TABLE_ID_MAX - WAREHOUSE_TABLE_ID_MIN)
            try:
                async with self._write() as conn:
                    await conn.execute(
                        text(
                            "INSERT INTO warehouse_tables (id, sub_account_id, connection_id, stream, created_at)"
                            " VALUES (:id, :s, :c, :stream, :now) ON CONFLICT (connection_id, stream) DO NOTHING"
                        ),
                        {"id": candidate, "s": sub_account_id, "c": connection_id, "stream": stream, "now": self.now()},
                    )
                    table_id = (
                        await conn.execute(
                            text("SELECT id FROM warehouse_tables WHERE connection_id = :c AND stream = :stream AND sub_account_id = :s"),
                            {"c": connection_id, "stream": stream, "s": sub_account_id},
                        )
                    ).scalar()
            except IntegrityError as exc:
                if "FOREIGN KEY" in str(exc.orig):
                    raise  # the connection is gone
                continue  # the random id is taken: draw another
            if table_id is None:
                raise LookupError(f"connection {connection_id} does not belong to sub-account {sub_account_id}")
            return int(table_id)
        raise RuntimeError("could not allocate a warehouse table id")

    async def warehouse_table_owner(self, table_id: int) -> int | None:
        """The sub-account a warehouse table belongs to (hot path of the rows API)."""
        row = self._read_one("SELECT sub_account_id FROM warehouse_tables WHERE id = :id", {"id": table_id})
        return int(row[0]) if row else None

    async def delete_warehouse_tables(self, connection_id: int) -> None:
        async with self._write() as conn:
            await conn.execute(text("DELETE FROM warehouse_tables WHERE connection_id = :c"), {"c": connection_id})

    # -- sync bookkeeping in few transactions (each write here costs about a millisecond) ---------

    async def add_logs(self, connection_id: int, lines: Sequence[tuple[str, str]], *, run_id: int | None = None) -> None:
        """Several ``(level, message)`` log lines in one transaction, in order."""
        if not lines:
            return
        async with self._write() as conn:
            await self._insert_logs(conn, connection_id, lines, run_id)

    async def finish_run(
        self,
        run_id: int,
        *,
        status: str,
        records: Mapping[str, int] | None,
        error: str | None,
        connection_id: int,
        health_status: str,
        detail: str | None,
        logs: Sequence[tuple[str, str]] = (),
    ) -> None:
        """End a run: its status, the connection's health and the last log lines, atomically."""
        now = self.now()
        async with self._write() as conn:
            await conn.execute(
                text(
                    "UPDATE runs SET status = :status, records = COALESCE(:records, records), error = :error,"
                    " finished_at = :now WHERE id = :id"
                ),
                {"status": status, "records": json.dumps(dict(records)) if records is not None else None, "error": error, "now": now, "id": run_id},
            )
            exists = (
                await conn.execute(
                    text("UPDATE connections SET health_status = :h, detail = :d, updated_at = :now WHERE id = :id RETURNING id"),
                    {"h": health_status, "d": detail, "now": now, "id": connection_id},
                )
            ).first()
            if exists is not None:  # deleted mid-run: its logs went with it
                await self._insert_logs(conn, connection_id, logs, run_id)

    async def _insert_logs(self, conn: AsyncConnection, connection_id: int, lines: Sequence[tuple[str, str]], run_id: int | None) -> None:
        if lines:
            now = self.now()
            await conn.execute(
                text("INSERT INTO logs (connection_id, run_id, ts, level, message) VALUES (:c, :r, :ts, :l, :m)"),
                [{"c": connection_id, "r": run_id, "ts": now, "l": level, "m": message} for level, message in lines],
            )


# Random table ids stay below 2**31 so every client (JavaScript included) reads them exactly.
WAREHOUSE_TABLE_ID_MIN = 1_000_000
WAREHOUSE_TABLE_ID_MAX = 2**31 - 1

_SUB_ACCOUNT_COLUMNS = (
    "id, partner_id, external_id, first_name, last_name, email, language, company_name, token_generation, created_at"
)

