"""The store: the control database's SQL, and its pool and transactions.

PostgreSQL through psycopg 3 (async) and a connection pool; rows come back as
dicts and are turned into frozen dataclasses by column name (never by position).
:class:`Store` holds the pool, transactions, and partners, sub-accounts, connections, runs
and their logs; ``store/webhooks.py``, ``store/scripts.py``, ``store/refresh.py``,
``store/idempotency.py``, ``store/throttles.py`` and ``store/oauth_flows.py`` are the
repositories split out so far. The warehouse index
(``warehouse_*``) and the query tables' rows are still written by ``bff/warehouse.py`` and
``bff/query_tables.py`` themselves, next to the per-customer schemas they describe.
Schema changes are Alembic migrations in ``bff/store/migrations`` (``bff db upgrade``;
``serve``, ``worker`` and ``demo`` apply them on start).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from ..errors import Conflict
from .batching import BatchedReads
from .migrate import migrate

__all__ = [
    "ACTIVE_RUN_STATUSES",
    "Connection",
    "ExternalIdTaken",
    "HealthChange",
    "OAuthFlow",
    "Partner",
    "Run",
    "RunAlreadyActive",
    "Store",
    "SubAccount",
    "iso",
    "migrate",
]

ACTIVE_RUN_STATUSES = ("queued", "running", "waiting")
# Seconds between scheduled syncs of a new connection (DESIGN §10; the column default, migration 0005).
DEFAULT_SYNC_FREQUENCY = 21600

SUB_ACCOUNT_FIELDS = ("first_name", "last_name", "email", "language", "company_name")

Row = dict[str, Any]
T = TypeVar("T")


class Unset(enum.Enum):
    """'Leave this column as it is' (None already means 'set it to NULL')."""

    UNSET = 0


UNSET = Unset.UNSET


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


def _build(cls: type[T], row: Row | None) -> T | None:
    return cls(**row) if row is not None else None


def _given(value: Any) -> Any:
    """None means "leave it" for these columns: :data:`UNSET`."""
    return UNSET if value is None else value


def _change(row: Row | None) -> HealthChange | None:
    if row is None:
        return None
    return HealthChange(
        connection_id=int(row["id"]),
        sub_account_id=int(row["sub_account_id"]),
        old=str(row["old"]),
        new=str(row["health_status"]),
        detail=row["detail"],
    )


def _guarded(assignment: str) -> str:
    """``column = value`` → ``column = value`` only while the locked row's old health is one of
    ``%(health_from)s`` (a transition's source states), else the column keeps its value."""
    if not assignment.startswith(("health_status ", "detail ")):
        return assignment
    column, value = assignment.split(" = ", 1)
    return f"{column} = CASE WHEN o.old = ANY(%(health_from)s) THEN {value} ELSE c.{column} END"


def _assignments(changes: Mapping[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """``column = %(column)s`` for every change that is not UNSET; mappings are stored as JSONB."""
    sets: list[str] = []
    params: dict[str, Any] = {}
    for column, value in changes.items():
        if value is UNSET:
            continue
        sets.append(f"{column} = %({column})s")
        params[column] = Jsonb(dict(value)) if isinstance(value, Mapping) else value
    return sets, params


@dataclasses.dataclass(frozen=True, kw_only=True)
class Partner:
    id: int
    name: str
    token_generation: int
    created_at: float
    # Integrate and identity tokens minted under a partner generation below this are revoked.
    customer_token_floor: int
    origins: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, kw_only=True)
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
    warehouse_schema: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
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
    # Schedule (DESIGN §10): seconds between syncs (None = on demand), per-table overrides,
    # when each table is due, and the earliest of those.
    sync_frequency: int | None = DEFAULT_SYNC_FREQUENCY
    table_frequencies: dict[str, int] = dataclasses.field(default_factory=dict)
    table_due: dict[str, float] = dataclasses.field(default_factory=dict)
    next_sync_at: float | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class HealthChange:
    """A connection's health moved from one status to another (what webhooks and the scheduler hear)."""

    connection_id: int
    sub_account_id: int
    old: str
    new: str
    detail: str | None


@dataclasses.dataclass(frozen=True, kw_only=True)
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
    job_id: int | None
    attempts: int
    resume_at: float | None
    progress: dict[str, Any]
    created_at: float
    started_at: float | None
    finished_at: float | None
    full_sync: bool = False
    trigger: str = "api"
    categories: list[str] | None = None  # the partitions (divisions) it reads; None: the chosen ones

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_RUN_STATUSES


@dataclasses.dataclass(frozen=True, kw_only=True)
class OAuthFlow:
    connection_id: int
    sub_account_id: int
    purpose: str
    verifier: bytes | None
    created_at: float


class ExternalIdTaken(Conflict):
    code = "external_id_taken"

    def __init__(self, existing_id: int, external_id: str) -> None:
        super().__init__(f"A sub-account with external_id {external_id!r} already exists.", extra={"id": existing_id})
        self.existing_id = existing_id


class RunAlreadyActive(Conflict):
    code = "sync_already_running"

    def __init__(self, run_id: int | None) -> None:
        super().__init__(
            "A sync of this connection is already running; wait for it to finish.", extra={"pipeline_run_id": run_id}
        )
        self.run_id = run_id


_CONNECTION_COLUMNS = (
    "id, sub_account_id, connector, name, health_status, detail, config, secrets, created_at, updated_at,"
    " sync_frequency, table_frequencies, table_due, next_sync_at"
)
_RUN_COLUMNS = (
    "id, connection_id, sub_account_id, status, task_id, tables, records, error, pid, job_id, attempts, resume_at,"
    " progress, created_at, started_at, finished_at, full_sync, trigger, categories"
)
_SUB_ACCOUNT_COLUMNS = (
    "id, partner_id, external_id, first_name, last_name, email, language, company_name, token_generation, created_at,"
    " warehouse_schema"
)
_PARTNER_FIELDS = ("id", "name", "token_generation", "created_at", "customer_token_floor")
_PARTNER_COLUMNS = ", ".join(_PARTNER_FIELDS)
# Partners and their sub-accounts by (partner id, external id), many keys in one query.
_PARTNERS_AND_SUB_ACCOUNTS = (
    "SELECT k.partner_id AS key_partner_id, k.external_id AS key_external_id,"
    f" {', '.join(f'p.{name} AS p_{name}' for name in _PARTNER_FIELDS)},"
    f" {', '.join('s.' + name.strip() for name in _SUB_ACCOUNT_COLUMNS.split(','))}"
    # The keys travel as one JSON text: psycopg adapts it far cheaper than two arrays.
    " FROM json_to_recordset(%s::json) AS k(partner_id bigint, external_id text)"
    " JOIN partners p ON p.id = k.partner_id"
    " LEFT JOIN sub_accounts s ON s.partner_id = k.partner_id AND s.external_id = k.external_id"
)


def _aliased(table: str, columns: str) -> str:
    return ", ".join(f"{table}.{c.strip()} AS {table}_{c.strip()}" for c in columns.split(","))


# Store.get_caller: columns come back as p_*, s_*, c_* (partner, sub-account, connection).
_CALLER_QUERY = (
    f"SELECT {_aliased('p', _PARTNER_COLUMNS)}, {_aliased('s', _SUB_ACCOUNT_COLUMNS)},"
    f" {_aliased('c', _CONNECTION_COLUMNS)} FROM partners p"
    " LEFT JOIN sub_accounts s ON s.partner_id = p.id AND s.id = %(s)s"
    " LEFT JOIN connections c ON c.sub_account_id = s.id AND c.id = %(c)s"
    " WHERE p.id = %(p)s"
)


class Store:
    """Async access to the control database: the pool, transactions, and the SQL of the
    aggregates not yet split into their own repository. One instance per process."""

    def __init__(self, url: str, *, clock: Callable[[], float] = time.time, max_connections: int = 10) -> None:
        self.url = url
        self._clock = clock
        self._max_connections = max_connections
        self._pool: AsyncConnectionPool[Any] | None = None
        # Token minting reads these under load: concurrent reads share one query.
        self._partner_reads: BatchedReads[tuple[int, str], tuple[Partner | None, SubAccount | None]] = BatchedReads(
            self._fetch_partners_and_sub_accounts, missing=(None, None)
        )

    # -- plumbing ---------------------------------------------------------------------

    async def open(self) -> None:
        from ..db import open_pool

        self._pool = await open_pool(self.url, max_size=self._max_connections, name="bff-store")

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def pool(self) -> AsyncConnectionPool[Any]:
        assert self._pool is not None, "Store.open() was not called"
        return self._pool

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        """A pooled autocommit connection (one statement = one transaction)."""
        async with self.pool.connection() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection[Any]]:
        """A pooled connection inside one transaction, committed on exit."""
        async with self.pool.connection() as conn, conn.transaction():
            yield conn

    async def _one(self, query: str, params: Mapping[str, Any] | Sequence[Any] = ()) -> Row | None:
        async with self.pool.connection() as conn:
            cur = await conn.execute(query, params)
            row: Row | None = await cur.fetchone()
            return row

    async def _all(self, query: str, params: Mapping[str, Any] | Sequence[Any] = ()) -> list[Row]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(query, params)
            return list(await cur.fetchall())

    def now(self) -> float:
        return float(self._clock())

    # -- meta ---------------------------------------------------------------------------

    async def get_meta(self, key: str) -> str | None:
        row = await self._one("SELECT value FROM meta WHERE key = %(k)s", {"k": key})
        return str(row["value"]) if row else None

    async def set_meta(self, key: str, value: str) -> None:
        await self._one(
            "INSERT INTO meta (key, value) VALUES (%(k)s, %(v)s) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
            " RETURNING key",
            {"k": key, "v": value},
        )

    async def set_meta_once(self, key: str, value: str) -> str:
        """Store ``value`` unless the key exists; the value that is stored (first writer wins)."""
        row = await self._one(
            "WITH ins AS (INSERT INTO meta (key, value) VALUES (%(k)s, %(v)s) ON CONFLICT (key) DO NOTHING RETURNING value)"
            " SELECT value FROM ins UNION ALL SELECT value FROM meta WHERE key = %(k)s LIMIT 1",
            {"k": key, "v": value},
        )
        assert row is not None
        return str(row["value"])

    # -- partners -----------------------------------------------------------------------

    async def create_partner(self, name: str, origins: Sequence[str]) -> Partner:
        async with self.transaction() as conn:
            cur = await conn.execute(
                "INSERT INTO partners (name, created_at) VALUES (%(n)s, %(now)s) RETURNING id",
                {"n": name, "now": self.now()},
            )
            row = await cur.fetchone()
            assert row is not None
            partner_id = int(row["id"])
            await self._add_origins(conn, partner_id, origins)
            partner = await self._partner(conn, partner_id)
        assert partner is not None
        return partner

    async def get_partner(self, partner_id: int) -> Partner | None:
        """The partner row without its origins (hot path); see :meth:`partner_has_origin`."""
        return _build(Partner, await self._one(f"SELECT {_PARTNER_COLUMNS} FROM partners WHERE id = %s", (partner_id,)))

    async def get_partner_and_sub_account(
        self, partner_id: int, external_id: str
    ) -> tuple[Partner | None, SubAccount | None]:
        """The partner and its sub-account ``external_id`` in one round trip (the token-minting hot path)."""
        return await self._partner_reads.get((partner_id, external_id))

    async def _fetch_partners_and_sub_accounts(
        self, keys: Sequence[tuple[int, str]]
    ) -> dict[tuple[int, str], tuple[Partner | None, SubAccount | None]]:
        keys_json = json.dumps([{"partner_id": p, "external_id": e} for p, e in keys], ensure_ascii=False)
        rows = await self._all(_PARTNERS_AND_SUB_ACCOUNTS, (keys_json,))
        found: dict[tuple[int, str], tuple[Partner | None, SubAccount | None]] = {}
        for row in rows:
            key = (row.pop("key_partner_id"), row.pop("key_external_id"))
            partner = Partner(**{name: row.pop(f"p_{name}") for name in _PARTNER_FIELDS})
            found[key] = (partner, SubAccount(**row) if row["id"] is not None else None)
        return found

    async def get_caller(
        self, partner_id: int, sub_account_id: int | None = None, connection_id: int | None = None
    ) -> tuple[Partner | None, SubAccount | None, Connection | None]:
        """A token's partner, its sub-account and a connection of that sub-account, in one round trip
        (the hot path of every API call; each part is None when it does not exist or is not asked for)."""
        row = await self._one(_CALLER_QUERY, {"p": partner_id, "s": sub_account_id, "c": connection_id})
        if row is None:
            return None, None, None
        parts: dict[str, Row] = {"p": {}, "s": {}, "c": {}}
        for key, value in row.items():
            parts[key[0]][key[2:]] = value
        account = SubAccount(**parts["s"]) if parts["s"]["id"] is not None else None
        connection = Connection(**parts["c"]) if parts["c"]["id"] is not None else None
        return Partner(**parts["p"]), account, connection

    async def get_partner_with_origins(self, partner_id: int) -> Partner | None:
        async with self.connection() as conn:
            return await self._partner(conn, partner_id)

    async def find_partner_by_name(self, name: str) -> Partner | None:
        async with self.connection() as conn:
            cur = await conn.execute("SELECT id FROM partners WHERE name = %s ORDER BY id LIMIT 1", (name,))
            row = await cur.fetchone()
            return await self._partner(conn, int(row["id"])) if row else None

    async def list_partners(self) -> list[Partner]:
        async with self.connection() as conn:
            cur = await conn.execute("SELECT id FROM partners ORDER BY id")
            partners = [await self._partner(conn, int(row["id"])) for row in await cur.fetchall()]
        return [p for p in partners if p is not None]

    async def add_partner_origins(self, partner_id: int, origins: Sequence[str]) -> None:
        async with self.transaction() as conn:
            await self._add_origins(conn, partner_id, origins)

    async def set_partner_origins(self, partner_id: int, origins: Sequence[str]) -> Partner | None:
        async with self.transaction() as conn:
            await conn.execute("DELETE FROM partner_origins WHERE partner_id = %s", (partner_id,))
            await self._add_origins(conn, partner_id, origins)
            return await self._partner(conn, partner_id)

    async def _add_origins(self, conn: AsyncConnection[Any], partner_id: int, origins: Sequence[str]) -> None:
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO partner_origins (partner_id, origin) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                [(partner_id, origin) for origin in dict.fromkeys(origins)],
            )

    async def bump_partner_generation(self, partner_id: int, *, keep_customer_tokens: bool = False) -> Partner | None:
        """A new partner token generation; unless ``keep_customer_tokens``, the integrate and
        identity tokens minted under the older ones end with it."""
        async with self.transaction() as conn:
            await conn.execute(
                "UPDATE partners SET token_generation = token_generation + 1,"
                " customer_token_floor = CASE WHEN %(keep)s THEN customer_token_floor ELSE token_generation + 1 END"
                " WHERE id = %(id)s",
                {"id": partner_id, "keep": keep_customer_tokens},
            )
            return await self._partner(conn, partner_id)

    async def partner_has_origin(self, partner_id: int, origin: str) -> bool:
        row = await self._one(
            "SELECT 1 AS found FROM partner_origins WHERE partner_id = %s AND origin = %s", (partner_id, origin)
        )
        return row is not None

    async def all_origins(self) -> frozenset[str]:
        rows = await self._all("SELECT DISTINCT origin FROM partner_origins")
        return frozenset(str(row["origin"]) for row in rows)

    async def _partner(self, conn: AsyncConnection[Any], partner_id: int) -> Partner | None:
        cur = await conn.execute(f"SELECT {_PARTNER_COLUMNS} FROM partners WHERE id = %s", (partner_id,))
        row = await cur.fetchone()
        if row is None:
            return None
        cur = await conn.execute(
            "SELECT origin FROM partner_origins WHERE partner_id = %s ORDER BY origin", (partner_id,)
        )
        return Partner(**row, origins=tuple(r["origin"] for r in await cur.fetchall()))

    # -- sub-accounts -------------------------------------------------------------------

    async def create_sub_account(self, partner_id: int, external_id: str, fields: Mapping[str, str]) -> SubAccount:
        """Create a sub-account; raises :class:`ExternalIdTaken` when it exists."""
        account, created = await self._insert_sub_account(partner_id, external_id, fields)
        if not created:
            raise ExternalIdTaken(account.id, external_id)
        return account

    async def get_or_create_sub_account(
        self, partner_id: int, external_id: str, fields: Mapping[str, str]
    ) -> tuple[SubAccount, bool]:
        """Provision on first use. Safe under concurrency: the unique index decides."""
        existing = await self.get_sub_account(partner_id, external_id=external_id)
        if existing is not None:
            return existing, False
        return await self._insert_sub_account(partner_id, external_id, fields)

    async def _insert_sub_account(
        self, partner_id: int, external_id: str, fields: Mapping[str, str]
    ) -> tuple[SubAccount, bool]:
        values = {name: fields.get(name) or "" for name in SUB_ACCOUNT_FIELDS}
        values["language"] = values["language"] or "en"
        async with self.transaction() as conn:
            cur = await conn.execute(
                "INSERT INTO sub_accounts (partner_id, external_id, first_name, last_name, email, language,"
                " company_name, created_at) VALUES (%(partner_id)s, %(external_id)s, %(first_name)s, %(last_name)s,"
                " %(email)s, %(language)s, %(company_name)s, %(now)s)"
                f" ON CONFLICT (partner_id, external_id) DO NOTHING RETURNING {_SUB_ACCOUNT_COLUMNS}",
                {"partner_id": partner_id, "external_id": external_id, "now": self.now(), **values},
            )
            row = await cur.fetchone()
            if row is not None:
                return SubAccount(**row), True
            cur = await conn.execute(
                f"SELECT {_SUB_ACCOUNT_COLUMNS} FROM sub_accounts WHERE partner_id = %s AND external_id = %s",
                (partner_id, external_id),
            )
            existing = await cur.fetchone()
        assert existing is not None
        return SubAccount(**existing), False

    async def get_sub_account(
        self, partner_id: int, *, account_id: int | None = None, external_id: str | None = None
    ) -> SubAccount | None:
        if account_id is not None:
            where, value = "id = %s", account_id
        elif external_id is not None:
            where, value = "external_id = %s", external_id  # type: ignore[assignment]
        else:
            return None
        return _build(
            SubAccount,
            await self._one(
                f"SELECT {_SUB_ACCOUNT_COLUMNS} FROM sub_accounts WHERE partner_id = %s AND {where}",
                (partner_id, value),
            ),
        )

    async def get_sub_account_by_id(self, account_id: int) -> SubAccount | None:
        return _build(
            SubAccount, await self._one(f"SELECT {_SUB_ACCOUNT_COLUMNS} FROM sub_accounts WHERE id = %s", (account_id,))
        )

    async def list_sub_accounts(self, partner_id: int, *, offset: int, limit: int) -> tuple[int, list[SubAccount]]:
        count = await self._one("SELECT COUNT(*) AS n FROM sub_accounts WHERE partner_id = %s", (partner_id,))
        rows = await self._all(
            f"SELECT {_SUB_ACCOUNT_COLUMNS} FROM sub_accounts WHERE partner_id = %s ORDER BY id LIMIT %s OFFSET %s",
            (partner_id, limit, offset),
        )
        return int(count["n"] if count else 0), [SubAccount(**row) for row in rows]

    async def bump_sub_account_generation(self, partner_id: int, account_id: int) -> SubAccount | None:
        return _build(
            SubAccount,
            await self._one(
                "UPDATE sub_accounts SET token_generation = token_generation + 1 WHERE id = %s AND partner_id = %s"
                f" RETURNING {_SUB_ACCOUNT_COLUMNS}",
                (account_id, partner_id),
            ),
        )

    # -- connections ----------------------------------------------------------------------

    async def create_connection(
        self,
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
        async with self.transaction() as conn:
            cur = await conn.execute(
                "INSERT INTO connections (sub_account_id, connector, name, health_status, config, created_at, updated_at)"
                f" VALUES (%(s)s, %(c)s, %(n)s, %(h)s, %(cfg)s, %(now)s, %(now)s) RETURNING {_CONNECTION_COLUMNS}",
                {
                    "s": sub_account_id,
                    "c": connector,
                    "n": name,
                    "h": health_status,
                    "cfg": Jsonb(dict(config or {})),
                    "now": now,
                },
            )
            row = await cur.fetchone()
            assert row is not None
            if seal is not None:
                cur = await conn.execute(
                    f"UPDATE connections SET secrets = %s WHERE id = %s RETURNING {_CONNECTION_COLUMNS}",
                    (seal(int(row["id"])), row["id"]),
                )
                row = await cur.fetchone()
                assert row is not None
        return Connection(**row)

    async def get_connection(self, sub_account_id: int, connection_id: int) -> Connection | None:
        """A connection, only if it belongs to this sub-account."""
        return _build(
            Connection,
            await self._one(
                f"SELECT {_CONNECTION_COLUMNS} FROM connections WHERE id = %s AND sub_account_id = %s",
                (connection_id, sub_account_id),
            ),
        )

    async def get_connection_by_id(self, connection_id: int) -> Connection | None:
        """Internal use only (callbacks, the sync runner): no tenant check."""
        return _build(
            Connection,
            await self._one(f"SELECT {_CONNECTION_COLUMNS} FROM connections WHERE id = %s", (connection_id,)),
        )

    async def list_connections(self, sub_account_id: int) -> list[Connection]:
        rows = await self._all(
            f"SELECT {_CONNECTION_COLUMNS} FROM connections WHERE sub_account_id = %s ORDER BY id", (sub_account_id,)
        )
        return [Connection(**row) for row in rows]

    async def update_connection(
        self,
        connection_id: int,
        *,
        health_status: str | None = None,
        detail: str | None | Unset = UNSET,
        config: Mapping[str, Any] | None = None,
        secrets: bytes | None = None,
        name: str | None = None,
        sync_frequency: int | None | Unset = UNSET,
        table_frequencies: Mapping[str, int] | None = None,
        health_from: Sequence[str] | None = None,
        logs: Sequence[tuple[str, str]] = (),
    ) -> HealthChange | None:
        """Change a connection's columns (and add ``logs``) in one transaction; its health before
        and after (:func:`bff.lifecycle.transition` tells the events), or None when it is gone. With ``health_from`` (see :mod:`bff.lifecycle`), the
        health and detail change only if the locked row's health is one of those states."""
        sets, params = _assignments(
            {
                "health_status": _given(health_status),
                "detail": detail,
                "config": _given(config),
                "secrets": _given(secrets),
                "name": _given(name),
                "sync_frequency": sync_frequency,
                "table_frequencies": _given(table_frequencies),
            }
        )
        if health_from is not None:
            params["health_from"] = list(health_from)
            sets = [_guarded(assignment) for assignment in sets]
        sets.insert(0, "updated_at = %(now)s")
        params.update(id=connection_id, now=self.now())
        # The old status comes from the locked row, so concurrent updates each see their own "from".
        async with self.transaction() as conn:
            cur = await conn.execute(
                f"UPDATE connections c SET {', '.join(sets)}"
                " FROM (SELECT id, health_status AS old FROM connections WHERE id = %(id)s FOR UPDATE) o"
                " WHERE c.id = o.id RETURNING c.id, c.sub_account_id, o.old, c.health_status, c.detail",
                params,
            )
            row = await cur.fetchone()
            if row is not None:
                await self._insert_logs(conn, connection_id, logs, None)
        return _change(row)

    async def set_schedule(self, connection_id: int, table_due: Mapping[str, float]) -> None:
        """Store when each table is due next; ``next_sync_at`` becomes the earliest (None: never)."""
        due = {k: float(v) for k, v in table_due.items()}
        await self._one(
            "UPDATE connections SET table_due = %s, next_sync_at = %s WHERE id = %s RETURNING id",
            (Jsonb(due), min(due.values()) if due else None, connection_id),
        )

    async def list_due_connections(self, now: float, *, limit: int = 500) -> list[Connection]:
        """Connections whose earliest table is due at ``now``, the longest-waiting first."""
        rows = await self._all(
            f"SELECT {_CONNECTION_COLUMNS} FROM connections WHERE next_sync_at <= %s ORDER BY next_sync_at LIMIT %s",
            (now, limit),
        )
        return [Connection(**row) for row in rows]

    async def claim_schedule(self, connection: Connection, table_due: Mapping[str, float]) -> bool:
        """Move a due connection's schedule on, only if nobody else did since it was read
        (compare-and-set): of two schedulers that saw it due, exactly one gets True."""
        due = {k: float(v) for k, v in table_due.items()}
        row = await self._one(
            "UPDATE connections SET table_due = %s, next_sync_at = %s"
            " WHERE id = %s AND next_sync_at = %s AND table_due = %s RETURNING id",
            (
                Jsonb(due),
                min(due.values()) if due else None,
                connection.id,
                connection.next_sync_at,
                Jsonb(connection.table_due),
            ),
        )
        return row is not None

    async def delete_connection(self, sub_account_id: int, connection_id: int) -> bool:
        row = await self._one(
            "DELETE FROM connections WHERE id = %s AND sub_account_id = %s RETURNING id",
            (connection_id, sub_account_id),
        )
        return row is not None

    # -- runs ---------------------------------------------------------------------------------

    async def create_run(
        self,
        connection_id: int,
        sub_account_id: int,
        *,
        task_id: str,
        tables: Sequence[str] | None,
        full_sync: bool = False,
        trigger: str = "api",
        categories: Sequence[str] | None = None,
    ) -> Run:
        """Queue a run; raises :class:`RunAlreadyActive` if one is queued, running or waiting."""
        try:
            row = await self._one(
                "INSERT INTO runs (connection_id, sub_account_id, status, task_id, tables, created_at, full_sync,"
                f" trigger, categories) VALUES (%s, %s, 'queued', %s, %s, %s, %s, %s, %s) RETURNING {_RUN_COLUMNS}",
                (
                    connection_id,
                    sub_account_id,
                    task_id,
                    Jsonb(list(tables)) if tables else None,
                    self.now(),
                    full_sync,
                    trigger,
                    Jsonb(list(categories)) if categories else None,
                ),
            )
        except psycopg.errors.UniqueViolation:
            active = await self.active_run(connection_id)
            raise RunAlreadyActive(active.id if active else None) from None
        assert row is not None
        return Run(**row)

    async def delete_run(self, run_id: int) -> None:
        """Forget a run that never started (its job could not be queued)."""
        async with self.pool.connection() as conn:
            await conn.execute("DELETE FROM runs WHERE id = %s AND status = 'queued'", (run_id,))

    async def get_run(self, run_id: int) -> Run | None:
        return _build(Run, await self._one(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = %s", (run_id,)))

    async def active_run(self, connection_id: int) -> Run | None:
        return _build(
            Run,
            await self._one(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE connection_id = %s AND status IN ('queued', 'running', 'waiting')",
                (connection_id,),
            ),
        )

    async def last_run(self, connection_id: int) -> Run | None:
        return _build(
            Run,
            await self._one(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE connection_id = %s ORDER BY id DESC LIMIT 1", (connection_id,)
            ),
        )

    async def last_runs(self, connection_ids: Sequence[int]) -> dict[int, Run]:
        """The last run of each of these connections (those that ran), in one query."""
        if not connection_ids:
            return {}
        rows = await self._all(
            f"SELECT DISTINCT ON (connection_id) {_RUN_COLUMNS} FROM runs WHERE connection_id = ANY(%s)"
            " ORDER BY connection_id, id DESC",
            (list(connection_ids),),
        )
        return {int(row["connection_id"]): Run(**row) for row in rows}

    async def list_runs(self, connection_id: int, *, offset: int, limit: int) -> tuple[int, list[Run]]:
        count = await self._one("SELECT COUNT(*) AS n FROM runs WHERE connection_id = %s", (connection_id,))
        rows = await self._all(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE connection_id = %s ORDER BY id DESC LIMIT %s OFFSET %s",
            (connection_id, limit, offset),
        )
        return int(count["n"] if count else 0), [Run(**row) for row in rows]

    async def update_run(
        self,
        run_id: int,
        *,
        status: str | None = None,
        records: Mapping[str, int] | None = None,
        error: str | None | Unset = UNSET,
        pid: int | None = None,
        job_id: int | None = None,
        resume_at: float | None | Unset = UNSET,
        progress: Mapping[str, Any] | None = None,
        started: bool = False,
        attempt: bool = False,
    ) -> None:
        sets, params = _assignments(
            {
                "status": _given(status),
                "records": _given(records),
                "error": error,
                "pid": _given(pid),
                "job_id": _given(job_id),
                "resume_at": resume_at,
                "progress": _given(progress),
            }
        )
        params.update(id=run_id, now=self.now())
        if started:
            sets.append("started_at = COALESCE(started_at, %(now)s)")
        if attempt:
            sets.append("attempts = attempts + 1")
        if sets:
            await self._one(f"UPDATE runs SET {', '.join(sets)} WHERE id = %(id)s RETURNING id", params)

    async def finish_run(
        self,
        run_id: int,
        *,
        status: str,
        records: Mapping[str, int] | None,
        error: str | None,
        connection_id: int,
        health_status: str,
        health_from: Sequence[str],
        detail: str | None,
        logs: Sequence[tuple[str, str]] = (),
    ) -> tuple[bool, HealthChange | None]:
        """End a run: its status, the connection's health and the last log lines, atomically.
        (False, None) when the run had already ended (another worker, or a delete, got there
        first); else (True, the connection's health before and after, None if it is gone)."""
        now = self.now()
        async with self.transaction() as conn:
            cur = await conn.execute(
                "UPDATE runs SET status = %(status)s, records = COALESCE(%(records)s, records), error = %(error)s,"
                " resume_at = NULL, finished_at = %(now)s"
                " WHERE id = %(id)s AND status IN ('queued', 'running', 'waiting') RETURNING id",
                {
                    "status": status,
                    "records": Jsonb(dict(records)) if records is not None else None,
                    "error": error,
                    "now": now,
                    "id": run_id,
                },
            )
            if await cur.fetchone() is None:
                return False, None
            cur = await conn.execute(
                # The health changes only from ``health_from`` (bff.lifecycle: not from DISABLED).
                f"UPDATE connections c SET {_guarded('health_status = %(h)s')}, {_guarded('detail = %(d)s')},"
                " updated_at = %(now)s"
                " FROM (SELECT id, health_status AS old FROM connections WHERE id = %(id)s FOR UPDATE) o"
                " WHERE c.id = o.id RETURNING c.id, c.sub_account_id, o.old, c.health_status, c.detail",
                {"h": health_status, "d": detail, "now": now, "id": connection_id, "health_from": list(health_from)},
            )
            changed = await cur.fetchone()
            if changed is not None:  # deleted mid-run: its logs went with it
                await self._insert_logs(conn, connection_id, logs, run_id)
        return True, _change(changed)

    # -- logs ----------------------------------------------------------------------------------

    async def add_log(self, connection_id: int, level: str, message: str, *, run_id: int | None = None) -> None:
        await self.add_logs(connection_id, [(level, message)], run_id=run_id)

    async def add_logs(
        self, connection_id: int, lines: Sequence[tuple[str, str]], *, run_id: int | None = None
    ) -> None:
        """Several ``(level, message)`` log lines in one transaction, in order. Lines of a
        connection deleted meanwhile are dropped (they would have gone with it)."""
        if not lines:
            return
        try:
            async with self.transaction() as conn:
                await self._insert_logs(conn, connection_id, lines, run_id)
        except psycopg.errors.ForeignKeyViolation:
            pass

    async def list_logs(self, connection_id: int, *, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
        count = await self._one("SELECT COUNT(*) AS n FROM logs WHERE connection_id = %s", (connection_id,))
        rows = await self._all(
            "SELECT ts, level, message, run_id FROM logs WHERE connection_id = %s ORDER BY id DESC LIMIT %s OFFSET %s",
            (connection_id, limit, offset),
        )
        return int(count["n"] if count else 0), [
            {"ts": iso(row["ts"]), "level": row["level"], "message": row["message"], "pipeline_run_id": row["run_id"]}
            for row in rows
        ]

    async def _insert_logs(
        self, conn: AsyncConnection[Any], connection_id: int, lines: Sequence[tuple[str, str]], run_id: int | None
    ) -> None:
        if lines:
            now = self.now()
            async with conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO logs (connection_id, run_id, ts, level, message) VALUES (%s, %s, %s, %s, %s)",
                    [(connection_id, run_id, now, level, message) for level, message in lines],
                )


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
