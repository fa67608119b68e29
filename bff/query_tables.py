"""Query tables (saved SQL as views in a customer's schema) and SQL access per customer.

The wall is PostgreSQL, and the wall has to hold against the customer's own SQL. ``SET ROLE``
alone is not enough on a connection authenticated as a superuser (the embedded server's BFF
connection is one): any query may call ``set_config('role', 'none', true)`` and every later
expression of the same statement — ``query_to_xml('…')`` runs SQL text — runs as the session
user again. So customer SQL never runs on the BFF's own connections. It runs on a connection
*logged in* as the customer's runner role ``<schema>_q``: a LOGIN role that is a member of the
customer's read role (``<schema>``, NOLOGIN, SELECT on its own schema only), owns the views,
and may create in that schema and nowhere else. ``RESET ROLE`` there goes back to the runner,
which can reach nothing more. Its password is derived from the encryption key (HMAC), so no
process stores it.

Creating a query table, on the runner's connection:

1. a read-only transaction with a 10 s ``statement_timeout``: ``PREPARE … AS <query>`` sent with
   the extended protocol — the database parses it and refuses several statements, and anything
   that is not a query, before anything runs;
2. a transaction with the same timeout: ``CREATE VIEW <schema>.q_<id> AS <query>`` (again one
   statement), then the transaction is made read-only and the view is read (``LIMIT 1``): the
   query's own permissions, functions and running time are checked by running it.

Any database error on the way is ``400 query_invalid`` with the database's message; a statement
that changes data (``DELETE``…, which ``PREPARE`` parses too) is told that only a query can be saved.

SQL access (``BFF_SQL_ACCESS=true``) gives the partner a LOGIN role ``<schema>_sql``, a member
of the read role with ``default_transaction_read_only``; asking again sets a new password.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import psycopg
from psycopg import AsyncConnection, sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb

from .errors import BFFError, Conflict, Invalid
from .store import Store, iso
from .store.placements import Placement
from .warehouse import PG_TYPE_FIELDS, WAREHOUSE_TABLE_ID_MAX, WAREHOUSE_TABLE_ID_MIN, RowCounts, Warehouse
from .warehouse_reader import ReadField, RowQuery, json_value, read_page
from .warehouse_servers import (
    CUSTOMER_CONNECTIONS,
    CUSTOMER_WAIT_SECONDS,
    WRITER_SUFFIX,
    DatabaseBusy,
    TooManyQueries,
)

logger = logging.getLogger("bff.query_tables")

QUERY_TIMEOUT_MS = 10_000
# Limits on every customer SQL role (the runner and the SQL-access login), set on the role itself.
TEMP_FILE_LIMIT = "256MB"  # what one session may spill to disk (sorts, hashes); superuser-only to change
RUNNER_CONNECTION_LIMIT = 16  # the runner's sessions, all BFF processes together
SQL_LOGIN_CONNECTION_LIMIT = 5  # a BI tool's sessions on the SQL-access login
MAX_QUERY_LENGTH = 100_000
RUNNER_SUFFIX = "_q"
WRITE_RUNNER_SUFFIX = "_qw"  # runs a customer's writes (POST /api/database/query/ {"write": true}, scripts)
SQL_LOGIN_SUFFIX = "_sql"
SQL_WRITER_SUFFIX = "_sqlw"


class QueryInvalid(BFFError):
    """The customer's query was refused; ``message`` is the database's own words."""

    status = 400
    code = "query_invalid"

    def __init__(self, message: str) -> None:
        super().__init__(f"The query was refused: {message}", errors={"query": message})
        self.message = message


class QueryTableBroken(Conflict):
    """A saved query no longer runs (a table it read went with its connection, say)."""

    code = "query_table_broken"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class FilterValueRejected(Invalid):
    """A filter value the column's type cannot take (``filter__day__equal=someday`` on a date):
    reported on each filter of the request."""

    def __init__(self, message: str, filters: Sequence[str]) -> None:
        super().__init__({key: message for key in filters} or {"filter": message}, message)
        self.message = message


class NameTaken(Conflict):
    code = "name_taken"

    def __init__(self, name: str) -> None:
        super().__init__(f"There is already a query table named {name!r}.", errors={"name": "Already in use."})


VIEW_SCHEMA = "public"  # query tables are views there, named as the customer named them


def view_name(name: str) -> str:
    return name.encode()[:63].decode(errors="ignore")


@dataclasses.dataclass(frozen=True)
class QueryTable:
    id: int
    sub_account_id: int
    placement: Placement
    schema: str
    name: str
    query: str
    view: str
    fields: tuple[ReadField, ...]
    created_at: float
    updated_at: float

    @property
    def identifier(self) -> sql.Composed:
        return sql.SQL("{}.{}").format(sql.Identifier(self.schema), sql.Identifier(self.view))

    @property
    def has_synced_at(self) -> bool:
        return any(f.name == "_synced_at" for f in self.fields)

    @property
    def has_deleted_at(self) -> bool:
        return any(f.name == "_deleted_at" for f in self.fields)

    def public_dict(self, *, counts: RowCounts | None = None, error: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "type": "query",
            "query": self.query,
            "connection": None,
            "database_id": self.sub_account_id,
            "primary_key": [],
            "fields": [{"id": f.id, "name": f.name, "type": f.type, "primary": False} for f in self.fields],
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }
        # Live and deleted rows are told apart by a ``_deleted_at`` column, when the query has one.
        body["row_count"] = counts.total if counts else None
        known = counts is not None and self.has_deleted_at
        body["live_count"] = counts.total - counts.deleted if counts and known else None
        body["deleted_count"] = counts.deleted if counts and known else None
        if error is not None:
            body["error"] = error
        return body


def _refused(exc: psycopg.Error, *, parsed: bool, done: str) -> QueryInvalid:
    """The refusal of a customer's query. PREPARE parses INSERT/UPDATE/DELETE/MERGE as well as
    queries; a statement it took that a view (or a cursor) then cannot be made of is one of those."""
    if parsed and isinstance(exc, psycopg.errors.SyntaxError):
        return QueryInvalid(
            f"Only a query (SELECT, or WITH … SELECT) can be {done}; INSERT, UPDATE, DELETE and MERGE change data."
        )
    return QueryInvalid(_message(exc))


def _message(exc: psycopg.Error) -> str:
    diag = exc.diag
    if diag.message_primary:
        return diag.message_primary + (f" ({diag.message_detail})" if diag.message_detail else "")
    return str(exc).strip() or type(exc).__name__


@dataclasses.dataclass(frozen=True)
class StatementResult:
    """What a statement run with ``write`` gave: its rows (if it returns any) and its status."""

    fields: list[dict[str, str]]
    rows: list[dict[str, Any]]
    truncated: bool
    status: str  # PostgreSQL's command tag: "DELETE 3", "CREATE TABLE"
    rowcount: int


@dataclasses.dataclass(frozen=True)
class DatabaseCredentials:
    host: str
    port: int
    database: str
    user: str
    password: str
    schema: str

    def public_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class QueryTables:
    """Query tables of every sub-account, and their SQL-access logins."""

    def __init__(
        self,
        store: Store,
        warehouse: Warehouse,
        *,
        role_secret: bytes,
        timeout_ms: int = QUERY_TIMEOUT_MS,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.store = store
        self.warehouse = warehouse
        self._secret = role_secret
        self.timeout_ms = timeout_ms
        self._clock = clock or warehouse.now
        self._ready: set[tuple[str, str]] = set()
        self.connection_cap = CUSTOMER_CONNECTIONS
        self.wait_seconds = CUSTOMER_WAIT_SECONDS

    # -- roles ----------------------------------------------------------------------------

    def _runner_password(self, role: str) -> str:
        return hmac.new(self._secret, f"runner:{role}".encode(), hashlib.sha256).hexdigest()

    async def _runner(self, sub_account_id: int, *, write: bool = False) -> tuple[Placement, str]:
        """``(placement, runner role)`` of a sub-account, made on first use, on the customer's server:
        the read runner, or with ``write`` the one that may write (a member of the writer role)."""
        placement = await self.warehouse.placement(sub_account_id, create=True)
        assert placement is not None
        runner = placement.database + (WRITE_RUNNER_SUFFIX if write else RUNNER_SUFFIX)
        if (placement.server, runner) in self._ready:
            return placement, runner
        async with self.warehouse.servers.transaction(placement) as conn:
            await self._login(
                conn,
                placement,
                runner,
                self._runner_password(runner),
                write=write,
                connection_limit=RUNNER_CONNECTION_LIMIT,
            )
            if not write:
                # The runner owns the query tables' views (in public); the owner role reads them.
                await conn.execute(
                    sql.SQL("GRANT USAGE, CREATE ON SCHEMA {} TO {}").format(
                        sql.Identifier(VIEW_SCHEMA), sql.Identifier(runner)
                    )
                )
        self._ready.add((placement.server, runner))
        return placement, runner

    async def _login(
        self,
        conn: AsyncConnection[Any],
        placement: Placement,
        login: str,
        password: str,
        *,
        write: bool,
        connection_limit: int,
    ) -> None:
        """A LOGIN role of the customer (made, or given ``password``), a member of its owner role
        (reads) or of its writer role (``write``: also writes the synced tables and makes schemas of
        its own). What a writer login makes, the customer's other writers may change and its readers
        read (default privileges)."""
        member_of = placement.database + (WRITER_SUFFIX if write else "")
        role = sql.Identifier(login)
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (login,))
        cur = await conn.execute("SELECT 1 AS found FROM pg_roles WHERE rolname = %s", (login,))
        if await cur.fetchone() is None:
            await conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
                    role, sql.Literal(password), sql.Identifier(member_of)
                )
            )
        else:  # another key, or made by another process: make sure the password is ours
            await conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(role, sql.Literal(password)))
        if write:
            owner, writer = sql.Identifier(placement.database), sql.Identifier(member_of)
            for grant in (
                sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} GRANT ALL ON TABLES TO {}").format(role, writer),
                sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} GRANT SELECT ON TABLES TO {}").format(role, owner),
                sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} GRANT ALL ON SEQUENCES TO {}").format(role, writer),
                sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} GRANT USAGE, CREATE ON SCHEMAS TO {}").format(
                    role, writer
                ),
                sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} GRANT USAGE ON SCHEMAS TO {}").format(role, owner),
            ):
                await conn.execute(grant)
        await self._limit_role(conn, login, connection_limit=connection_limit, read_only=not write)

    async def _limit_role(
        self, conn: AsyncConnection[Any], role: str, *, connection_limit: int, read_only: bool = True
    ) -> None:
        """The limits of a customer SQL role, on the role (every session gets them at login). Read-only
        holds by privileges too, whatever a session sets: no temporary tables (``TEMPORARY`` on the
        database is not granted), ``SELECT`` on the synced schemas and nothing else."""
        ident = sql.Identifier(role)
        for statement in (
            sql.SQL("ALTER ROLE {} SET default_transaction_read_only = {}").format(
                ident, sql.SQL("on" if read_only else "off")
            ),
            sql.SQL("ALTER ROLE {} SET statement_timeout = {}").format(ident, sql.Literal(self.timeout_ms)),
            sql.SQL("ALTER ROLE {} SET search_path = {}").format(ident, sql.Identifier(VIEW_SCHEMA)),
            sql.SQL("ALTER ROLE {} CONNECTION LIMIT {}").format(ident, sql.Literal(connection_limit)),
            # Superuser-only settings: the customer cannot raise them in its session.
            sql.SQL("ALTER ROLE {} SET temp_file_limit = {}").format(ident, sql.Literal(TEMP_FILE_LIMIT)),
        ):
            try:
                async with conn.transaction():  # a savepoint: a refusal leaves the rest standing
                    await conn.execute(statement)
            except psycopg.errors.InsufficientPrivilege as exc:
                logger.warning("could not limit the customer SQL role %s: %s", role, _message(exc))

    def _as_runner(
        self, placement: Placement, runner: str
    ) -> contextlib.AbstractAsyncContextManager[AsyncConnection[Any]]:
        """A connection logged in as the customer's runner role (never the BFF's own role), at most
        :attr:`connection_cap` at once per customer in this process."""
        connections = self.warehouse.servers.customer(
            placement, runner, self._runner_password(runner), cap=self.connection_cap, wait_seconds=self.wait_seconds
        )
        return connections.connection()

    @contextlib.asynccontextmanager
    async def _read_only(self, conn: AsyncConnection[Any]) -> AsyncIterator[AsyncConnection[Any]]:
        async with conn.transaction():
            await conn.execute("SET TRANSACTION READ ONLY")
            await conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(self.timeout_ms)))
            yield conn

    # -- defining views --------------------------------------------------------------------

    async def _define(
        self, placement: Placement, runner: str, view: str, query: str, *, replace: bool
    ) -> tuple[tuple[str, str], ...]:
        """Check ``query`` and (re)create the view; returns its columns ``(name, type)``."""
        target = sql.SQL("{}.{}").format(sql.Identifier(VIEW_SCHEMA), sql.Identifier(view))
        async with self._as_runner(placement, runner) as conn:
            parsed = False
            try:
                async with self._read_only(conn):
                    # Parsed, not run: several statements or anything but a query stop here.
                    await conn.execute("PREPARE bff_query_check AS " + query, prepare=True)
                    await conn.execute("DEALLOCATE bff_query_check")
                parsed = True
                async with conn.transaction():
                    await conn.execute("SET TRANSACTION READ WRITE")
                    await conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(self.timeout_ms)))
                    if replace:
                        await conn.execute(sql.SQL("DROP VIEW IF EXISTS {}").format(target))
                    create = sql.SQL("CREATE VIEW {} AS ").format(target).as_string(conn) + query
                    await conn.execute(create, prepare=True)
                    # The owner (the runner) lets the owner role, and so SQL-access logins, read it.
                    await conn.execute(
                        sql.SQL("GRANT SELECT ON {} TO {}").format(target, sql.Identifier(placement.database))
                    )
                    cur = await conn.execute(
                        "SELECT attname, atttypid FROM pg_attribute WHERE attrelid = %s::regclass"
                        " AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                        (target.as_string(conn),),
                    )
                    columns = tuple(
                        (str(r["attname"]), PG_TYPE_FIELDS.get(int(r["atttypid"]), "text"))
                        for r in await cur.fetchall()
                    )
                    # From here on nothing may write; then the query runs once, as the customer.
                    await conn.execute("SET LOCAL transaction_read_only = on")
                    await conn.execute(sql.SQL("SELECT * FROM {} LIMIT 1").format(target))
            except psycopg.Error as exc:
                raise _refused(exc, parsed=parsed, done="saved") from None
        return columns

    async def remake_view(self, sub_account_id: int, view: str, query: str) -> None:
        """Make a query table's view again from its saved query (a warehouse moved by an upgrade)."""
        placement, runner = await self._runner(sub_account_id)
        await self._define(placement, runner, view, query, replace=True)

    async def _field_ids(
        self, columns: tuple[tuple[str, str], ...], previous: tuple[ReadField, ...] = ()
    ) -> tuple[ReadField, ...]:
        known = {f.name: f.id for f in previous}
        fields = []
        async with self.store.connection() as conn:
            for name, kind in columns:
                field_id = known.get(name)
                if field_id is None:
                    cur = await conn.execute("SELECT nextval(pg_get_serial_sequence('warehouse_fields', 'id')) AS id")
                    row = await cur.fetchone()
                    assert row is not None
                    field_id = int(row["id"])
                fields.append(ReadField(field_id, name, kind))
        return tuple(fields)

    async def create(self, sub_account_id: int, name: str, query: str) -> QueryTable:
        if await self._name_taken(sub_account_id, name):
            raise NameTaken(name)
        placement, runner = await self._runner(sub_account_id)
        table_id = await self._new_id()
        view = view_name(name)
        columns = await self._define(placement, runner, view, query, replace=False)
        fields = await self._field_ids(columns)
        now = self._clock()
        try:
            async with self.store.connection() as conn:
                await conn.execute(
                    "INSERT INTO query_tables (id, sub_account_id, name, query, view_name, fields, created_at, updated_at)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    (table_id, sub_account_id, name, query, view, Jsonb(_fields_json(fields)), now, now),
                )
        except psycopg.errors.UniqueViolation:
            await self._drop_view(placement, view)
            raise NameTaken(name) from None
        except BaseException:
            await self._drop_view(placement, view)
            raise
        return QueryTable(table_id, sub_account_id, placement, VIEW_SCHEMA, name, query, view, fields, now, now)

    async def update(self, table: QueryTable, *, name: str | None, query: str | None) -> QueryTable:
        if name is not None and name != table.name and await self._name_taken(table.sub_account_id, name):
            raise NameTaken(name)
        fields = table.fields
        if query is not None:
            placement, runner = await self._runner(table.sub_account_id)
            columns = await self._define(placement, runner, table.view, query, replace=True)
            fields = await self._field_ids(columns, table.fields)
        view = table.view
        if name is not None and name != table.name:
            view = await self._rename_view(table, view_name(name))
        now = self._clock()
        changed = dataclasses.replace(
            table,
            view=view,
            name=name if name is not None else table.name,
            query=query if query is not None else table.query,
            fields=fields,
            updated_at=now,
        )
        try:
            async with self.store.connection() as conn:
                await conn.execute(
                    "UPDATE query_tables SET name = %s, query = %s, view_name = %s, fields = %s, updated_at = %s"
                    " WHERE id = %s",
                    (changed.name, changed.query, view, Jsonb(_fields_json(fields)), now, table.id),
                )
        except psycopg.errors.UniqueViolation:
            raise NameTaken(changed.name) from None
        return changed

    async def delete(self, table: QueryTable) -> None:
        await self._drop_view(table.placement, table.view)
        async with self.store.connection() as conn:
            await conn.execute("DELETE FROM query_tables WHERE id = %s", (table.id,))

    async def _drop_view(self, placement: Placement, view: str) -> None:
        async with self.warehouse.servers.connection(placement) as conn:  # no customer SQL runs here
            await conn.execute(
                sql.SQL("DROP VIEW IF EXISTS {}.{}").format(sql.Identifier(VIEW_SCHEMA), sql.Identifier(view))
            )

    async def _rename_view(self, table: QueryTable, view: str) -> str:
        """The view follows the table's new name (a view of that name already there: a 409)."""
        async with self.warehouse.servers.connection(table.placement) as conn:
            try:
                await conn.execute(
                    sql.SQL("ALTER VIEW IF EXISTS {}.{} RENAME TO {}").format(
                        sql.Identifier(VIEW_SCHEMA), sql.Identifier(table.view), sql.Identifier(view)
                    )
                )
            except psycopg.errors.DuplicateTable:
                raise NameTaken(view) from None
        return view

    async def _name_taken(self, sub_account_id: int, name: str) -> bool:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "SELECT 1 AS found FROM query_tables WHERE sub_account_id = %s AND name = %s", (sub_account_id, name)
            )
            return await cur.fetchone() is not None

    async def _new_id(self) -> int:
        async with self.store.connection() as conn:
            for _ in range(20):
                candidate = WAREHOUSE_TABLE_ID_MIN + secrets.randbelow(WAREHOUSE_TABLE_ID_MAX - WAREHOUSE_TABLE_ID_MIN)
                cur = await conn.execute(
                    "SELECT 1 AS found FROM warehouse_tables WHERE id = %s UNION ALL SELECT 1 FROM query_tables WHERE id = %s",
                    (candidate, candidate),
                )
                if await cur.fetchone() is None:
                    return candidate
        raise RuntimeError("could not allocate a table id")  # pragma: no cover - 20 collisions in 2**31

    # -- reading -------------------------------------------------------------------------------

    async def owner(self, table_id: int) -> tuple[int, str] | None:
        """``(sub-account, "synced" | "query")`` of any table id, in one query."""
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "SELECT sub_account_id, 'query' AS kind FROM query_tables WHERE id = %s"
                " UNION ALL SELECT sub_account_id, 'synced' FROM warehouse_tables WHERE id = %s",
                (table_id, table_id),
            )
            row = await cur.fetchone()
        return (int(row["sub_account_id"]), str(row["kind"])) if row else None

    async def get(self, sub_account_id: int, table_id: int) -> QueryTable | None:
        found = await self._load(sub_account_id, table_id)
        return found[0] if found else None

    async def _load(self, sub_account_id: int, table_id: int | None = None) -> list[QueryTable]:
        async with self.store.connection() as conn:
            cur = await conn.execute(
                "SELECT q.id, q.name, q.query, q.view_name, q.fields, q.created_at, q.updated_at, p.server, p.database"
                " FROM query_tables q JOIN warehouse_placements p ON p.sub_account_id = q.sub_account_id"
                " WHERE q.sub_account_id = %s AND (%s::bigint IS NULL OR q.id = %s) ORDER BY q.name, q.id",
                (sub_account_id, table_id, table_id),
            )
            rows = await cur.fetchall()
        return [
            QueryTable(
                int(r["id"]),
                sub_account_id,
                Placement(sub_account_id=sub_account_id, server=r["server"], database=r["database"]),
                VIEW_SCHEMA,
                r["name"],
                r["query"],
                r["view_name"],
                tuple(ReadField(int(f["id"]), f["name"], f["type"]) for f in r["fields"]),
                float(r["created_at"]),
                float(r["updated_at"]),
            )
            for r in rows
        ]

    async def list_tables(self, sub_account_id: int) -> list[tuple[QueryTable, RowCounts | None, str | None]]:
        """Every query table with its row counts; a table whose query no longer runs gets its error instead."""
        tables = await self._load(sub_account_id)
        if not tables:
            return []
        placement, runner = await self._runner(sub_account_id)
        listed: list[tuple[QueryTable, RowCounts | None, str | None]] = []
        async with self._as_runner(placement, runner) as conn:
            for table in tables:
                deleted = sql.SQL("COUNT(_deleted_at)" if table.has_deleted_at else "0")
                try:
                    async with self._read_only(conn):
                        cur = await conn.execute(
                            sql.SQL("SELECT COUNT(*) AS n, {} AS deleted FROM {}").format(deleted, table.identifier)
                        )
                        row = await cur.fetchone()
                    listed.append((table, RowCounts(int(row["n"]), int(row["deleted"])) if row else None, None))
                except psycopg.Error as exc:
                    listed.append((table, None, broken_message(exc)))
        return listed

    async def read_rows(
        self, table: QueryTable, query: RowQuery, *, offset: int, limit: int
    ) -> tuple[int, list[dict[str, Any]]]:
        placement, runner = await self._runner(table.sub_account_id)
        # Ties (and queries without order_by) are ordered by every orderable column, so pages are stable.
        ties = [sql.Identifier(f.name) for f in table.fields if f.type != "json"]
        async with self._as_runner(placement, runner) as conn:
            try:
                async with self._read_only(conn):
                    count, rows = await read_page(
                        conn, table.identifier, query, extra_columns=(), tie_breakers=ties, offset=offset, limit=limit
                    )
            except psycopg.errors.DataError as exc:
                raise FilterValueRejected(_message(exc), query.filters) from None
            except psycopg.Error as exc:
                raise QueryTableBroken(broken_message(exc)) from None
        return count, [{k: json_value(v) for k, v in row.items()} for row in rows]

    async def run_statement(self, sub_account_id: int, statement: str, *, limit: int) -> StatementResult:
        """One statement that may write, as the customer's write runner (a member of its writer
        role), in its own transaction with the 10 s timeout: ``INSERT``/``UPDATE``/``DELETE`` in the
        synced tables, DDL in schemas of the customer's own; what the writer role may not do (DDL of
        a synced schema, the BFF's ``_bff``) is refused by PostgreSQL. One statement only (the
        extended protocol refuses several); at most ``limit`` rows it returns come back."""
        placement, runner = await self._runner(sub_account_id, write=True)
        async with self._as_runner(placement, runner) as conn:
            try:
                async with conn.transaction():
                    await conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(self.timeout_ms)))
                    # prepare: the extended protocol, which takes one statement only (the simple one
                    # would run "SELECT 1; DROP …" as two).
                    cur = await conn.execute(statement, prepare=True)
                    rows = await cur.fetchmany(limit + 1) if cur.description else []
                    description = cur.description or []
                    status, rowcount = cur.statusmessage or "", cur.rowcount
            except psycopg.Error as exc:
                raise QueryInvalid(_message(exc)) from None
        fields = [{"name": col.name, "type": PG_TYPE_FIELDS.get(int(col.type_code), "text")} for col in description]
        return StatementResult(
            fields,
            [{k: json_value(v) for k, v in row.items()} for row in rows[:limit]],
            len(rows) > limit,
            status,
            rowcount,
        )

    async def run_query(
        self, sub_account_id: int, query: str, *, limit: int
    ) -> tuple[list[dict[str, str]], list[dict[str, Any]], bool]:
        """One read-only query as the customer's runner role: ``(fields, rows, truncated)``.

        The query is a server-side cursor (``DECLARE … CURSOR FOR``): only a query can be one,
        and only ``limit`` rows are fetched however many it would return.
        """
        placement, runner = await self._runner(sub_account_id)
        async with self._as_runner(placement, runner) as conn:
            parsed = False
            try:
                async with self._read_only(conn):
                    await conn.execute("PREPARE bff_query_check AS " + query, prepare=True)
                    await conn.execute("DEALLOCATE bff_query_check")
                    parsed = True
                    async with conn.cursor(name="bff_query") as cur:
                        await cur.execute(query)
                        rows = await cur.fetchmany(limit + 1)
                        description = cur.description or []
            except psycopg.Error as exc:
                raise _refused(exc, parsed=parsed, done="run") from None
        fields = [{"name": col.name, "type": PG_TYPE_FIELDS.get(int(col.type_code), "text")} for col in description]
        return fields, [{k: json_value(v) for k, v in row.items()} for row in rows[:limit]], len(rows) > limit

    # -- SQL access -----------------------------------------------------------------------------

    async def database_credentials(
        self, sub_account_id: int, *, write: bool = False, public_host: str | None = None
    ) -> DatabaseCredentials:
        """A LOGIN role for the customer's own database, read-only (or with ``write`` one that may also
        write it); a new password on every call."""
        placement = await self.warehouse.placement(sub_account_id, create=True)
        assert placement is not None
        login = placement.database + (SQL_WRITER_SUFFIX if write else SQL_LOGIN_SUFFIX)
        password = secrets.token_urlsafe(24)
        async with self.warehouse.servers.transaction(placement) as conn:
            await self._login(
                conn, placement, login, password, write=write, connection_limit=SQL_LOGIN_CONNECTION_LIMIT
            )
            cur = await conn.execute(
                "SELECT current_setting('port') AS port, current_setting('listen_addresses') <> '' AS tcp"
            )
            port_row = await cur.fetchone()
        parts = conninfo_to_dict(self.warehouse.servers.url(placement.server))
        host = public_host or str(parts.get("host") or "localhost")
        if host.startswith("/") and port_row and port_row["tcp"]:  # a socket, and TCP too (the embedded server)
            host = "127.0.0.1"
        return DatabaseCredentials(
            host=host,
            port=int(port_row["port"]) if port_row else int(parts.get("port") or 5432),
            database=placement.database,
            user=login,
            password=password,
            schema=VIEW_SCHEMA,
        )


def broken_message(exc: psycopg.Error) -> str:
    return f"The query of this table no longer runs: {_message(exc)}. Change its query or delete it."


def _fields_json(fields: tuple[ReadField, ...]) -> list[dict[str, Any]]:
    return [{"id": f.id, "name": f.name, "type": f.type} for f in fields]


__all__ = [
    "DatabaseBusy",
    "DatabaseCredentials",
    "FilterValueRejected",
    "NameTaken",
    "QueryInvalid",
    "QueryTable",
    "QueryTableBroken",
    "QueryTables",
    "TooManyQueries",
]
