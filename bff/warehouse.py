"""The per-customer warehouse: one SQLite file per sub-account.

``<data_dir>/warehouse/<sub_account_id>.sqlite3`` holds every table synced for
that sub-account, so a customer's query can never touch another customer's
rows: the file a request opens is chosen from the caller's own sub-account id.
Each file is self-contained:

* ``_tables``: one row per (connection, stream): the table's global id, its
  physical name (``c<connection>_<stream>``) and primary key;
* ``_fields``: the columns of each table, with the ids the rows API uses
  (``field_<id>``);
* ``_state``: the incremental cursor of each (connection, stream), written in
  the same transaction as the page it belongs to, so a crash can never leave a
  cursor ahead of the data or half a page behind.

Data tables have the stream's fields as columns, plus ``_synced_at`` (epoch
seconds) and ``_run_id``; a unique index on the primary key makes every write an
upsert, so a re-sync never duplicates a record.

Table ids come from the control database (``store.allocate_warehouse_table``),
which makes them unique across all files and lets the API check ownership
before opening any file.

All SQLite work runs in worker threads (the loop's default executor) with the stdlib
driver: ``executemany`` over a prepared upsert is the fast path. Writes to one
file are serialised by an asyncio lock per sub-account; reads use their own
short-lived connections and never wait for writers (WAL).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import operator
import re
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .connectors import Stream
from .store import Store

T = TypeVar("T")

FILE_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS _tables (
        id INTEGER PRIMARY KEY,
        connection_id INTEGER NOT NULL,
        stream TEXT NOT NULL,
        physical TEXT NOT NULL UNIQUE,
        primary_key TEXT NOT NULL,
        created_at REAL NOT NULL,
        UNIQUE (connection_id, stream)
    )""",
    """CREATE TABLE IF NOT EXISTS _fields (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        table_id INTEGER NOT NULL REFERENCES _tables(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        type TEXT NOT NULL,
        position INTEGER NOT NULL,
        UNIQUE (table_id, name)
    )""",
    """CREATE TABLE IF NOT EXISTS _state (
        connection_id INTEGER NOT NULL,
        stream TEXT NOT NULL,
        state TEXT NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (connection_id, stream)
    )""",
)

# Writer connections kept open (least recently used ones are closed beyond this):
# a server with thousands of customers must not hold thousands of open files.
MAX_OPEN_WRITERS = 32

# Declared column types; "number" is REAL so amounts read back as floats consistently.
SQL_TYPES = {"text": "TEXT", "integer": "INTEGER", "number": "REAL", "boolean": "INTEGER", "datetime": "TEXT", "json": "TEXT"}
META_COLUMNS = ("_synced_at", "_run_id")


def quote(identifier: str) -> str:
    """An SQL identifier, quoted: field names come from connector definitions, not from SQL."""
    return '"' + identifier.replace('"', '""') + '"'


def physical_name(connection_id: int, stream: str) -> str:
    return f"c{int(connection_id)}_{re.sub(r'[^0-9A-Za-z_]', '_', stream)}"


def iso_seconds(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


@dataclasses.dataclass(frozen=True)
class WarehouseField:
    id: int
    name: str
    type: str
    primary: bool

    def public_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "type": self.type, "primary": self.primary}


@dataclasses.dataclass(frozen=True)
class WarehouseTable:
    """One synced table: a connection's stream inside a sub-account's warehouse file."""

    id: int
    connection_id: int
    stream: str
    physical: str
    primary_key: tuple[str, ...]
    fields: tuple[WarehouseField, ...]
    created_at: float

    def public_dict(self, *, database_id: int, row_count: int) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.stream,
            "connection": self.connection_id,
            "database_id": database_id,
            "row_count": row_count,
            "primary_key": list(self.primary_key),
            "fields": [f.public_dict() for f in self.fields],
            "created_at": iso_seconds(self.created_at),
        }


@dataclasses.dataclass(frozen=True)
class _WritePlan:
    """Everything a page write needs, computed once per table and stream definition."""

    upsert_prefix: str  # "INSERT … VALUES (?, …, " — the constant metadata values end it per page
    upsert_suffix: str  # ") ON CONFLICT … DO UPDATE SET …"
    getter: Callable[[Mapping[str, Any]], Any]
    single: bool  # one column: itemgetter returns a scalar, not a tuple
    json_positions: tuple[int, ...]
    key_positions: tuple[int, ...]

    def rows(self, records: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
        getter = self.getter
        rows = [(getter(r),) for r in records] if self.single else list(map(getter, records))
        # A record without its primary key cannot be upserted (NULLs never conflict),
        # so it would be duplicated on every sync: leave it out.
        positions = self.key_positions
        if len(positions) == 1:
            (k,) = positions
            rows = [row for row in rows if row[k] is not None]
        else:
            rows = [row for row in rows if all(row[k] is not None for k in positions)]
        if self.json_positions:
            rows = [self._encode_json(row) for row in rows]
        return rows

    def _encode_json(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        values = list(row)
        for i in self.json_positions:
            if values[i] is not None:
                values[i] = json.dumps(values[i], separators=(",", ":"), ensure_ascii=False)
        return tuple(values)


def _plan(table: WarehouseTable, stream: Stream) -> _WritePlan:
    names = [f.name for f in stream.fields]
    columns = ", ".join(quote(n) for n in [*names, *META_COLUMNS])
    placeholders = ", ".join("?" for _ in names)
    conflict = ", ".join(quote(k) for k in table.primary_key)
    updates = ", ".join(f"{quote(n)} = excluded.{quote(n)}" for n in [*names, *META_COLUMNS] if n not in table.primary_key)
    return _WritePlan(
        upsert_prefix=f"INSERT INTO {quote(table.physical)} ({columns}) VALUES ({placeholders}, ",
        upsert_suffix=f") ON CONFLICT ({conflict}) DO UPDATE SET {updates}",
        getter=operator.itemgetter(*names),
        single=len(names) == 1,
        json_positions=tuple(i for i, f in enumerate(stream.fields) if f.type == "json"),
        key_positions=tuple(names.index(k) for k in table.primary_key),
    )


class TableWriter:
    """Writes pages of one stream into its table; returned by :meth:`Warehouse.open_table`."""

    def __init__(self, warehouse: Warehouse, sub_account_id: int, table: WarehouseTable, plan: _WritePlan) -> None:
        self.warehouse = warehouse
        self.sub_account_id = sub_account_id
        self.table = table
        self._plan = plan

    async def load_state(self) -> dict[str, Any]:
        """The incremental state saved with the last written page (``{}`` before the first)."""
        table, states, key = self.table, self.warehouse._states, self._state_key
        if key in states:
            return json.loads(states[key])

        def read(conn: sqlite3.Connection) -> dict[str, Any]:
            row = conn.execute(
                "SELECT state FROM _state WHERE connection_id = ? AND stream = ?", (table.connection_id, table.stream)
            ).fetchone()
            states[key] = row[0] if row else "{}"
            return dict(json.loads(states[key]))

        return await self.warehouse._with_writer(self.sub_account_id, read)

    @property
    def _state_key(self) -> tuple[int, int, str]:
        return (self.sub_account_id, self.table.connection_id, self.table.stream)

    async def write(self, records: Sequence[Mapping[str, Any]], state: Mapping[str, Any], run_id: int | None) -> int:
        """Upsert ``records`` and save ``state`` in one transaction; returns how many rows were written."""
        plan, table, states, key = self._plan, self.table, self.warehouse._states, self._state_key
        now = self.warehouse.now()
        state_json = json.dumps(dict(state), separators=(",", ":"))
        # The metadata values are the same for the whole page: bake them into the
        # statement (they are numbers we produced) instead of binding them per row.
        sql = f"{plan.upsert_prefix}{float(now)!r}, {int(run_id) if run_id is not None else 'NULL'}{plan.upsert_suffix}"

        def write(conn: sqlite3.Connection) -> int:
            rows = plan.rows(records)
            conn.execute("BEGIN IMMEDIATE")
            try:
                if rows:
                    conn.executemany(sql, rows)
                conn.execute(
                    "INSERT INTO _state (connection_id, stream, state, updated_at) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (connection_id, stream) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
                    (table.connection_id, table.stream, state_json, now),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            states[key] = state_json  # only once committed
            return len(rows)

        return await self.warehouse._with_writer(self.sub_account_id, write)


class Warehouse:
    """The warehouse files of every sub-account under ``root``."""

    def __init__(self, root: Path, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self.root = Path(root)
        self.store = store
        self._clock = clock
        self._writers: dict[int, sqlite3.Connection] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self._open: dict[tuple[Any, ...], tuple[WarehouseTable, _WritePlan]] = {}
        # (sub-account, connection, stream) → the state JSON last committed: this
        # process is the only writer of its warehouse files, so reads can skip a thread hop.
        self._states: dict[tuple[int, int, str], str] = {}
        self._closed = False

    def now(self) -> float:
        return float(self._clock())

    def path(self, sub_account_id: int) -> Path:
        """The sub-account's file; the id is an int, so it cannot point elsewhere."""
        return self.root / f"{int(sub_account_id)}.sqlite3"

    # -- plumbing ---------------------------------------------------------------------

    def _open_writer(self, sub_account_id: int) -> sqlite3.Connection:
        self.root.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path(sub_account_id), check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a power cut may lose the last commits, never consistency;
        # the cursor is in the same transaction, so a lost page is simply fetched again.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=10000")
        for statement in FILE_SCHEMA:
            conn.execute(statement)
        return conn

    async def _with_writer(self, sub_account_id: int, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(writer connection)`` in a worker thread, one at a time per file.

        If the awaiting task is cancelled, the thread still finishes its
        transaction; we wait for it so the connection is never closed under it.
        """
        if self._closed:
            raise RuntimeError("the warehouse is closed")
        lock = self._locks.setdefault(sub_account_id, asyncio.Lock())
        async with lock:
            conn = self._writers.get(sub_account_id)

            def call() -> T:
                nonlocal conn
                if conn is None:
                    conn = self._open_writer(sub_account_id)
                return fn(conn)

            # Most recently used last: the eviction below closes from the front.
            self._writers.pop(sub_account_id, None)
            future = asyncio.get_running_loop().run_in_executor(None, call)
            try:
                result = await asyncio.shield(future)
            except asyncio.CancelledError:
                with contextlib.suppress(BaseException):
                    await future
                raise
            finally:
                if conn is not None:
                    self._writers[sub_account_id] = conn
        if len(self._writers) > MAX_OPEN_WRITERS:
            await self._evict()
        return result

    async def _evict(self) -> None:
        """Close the least recently used idle writer connections beyond MAX_OPEN_WRITERS."""
        loop = asyncio.get_running_loop()
        while len(self._writers) > MAX_OPEN_WRITERS:
            victim = next((sid for sid in self._writers if not self._locks[sid].locked()), None)
            if victim is None:
                return
            async with self._locks[victim]:
                conn = self._writers.pop(victim, None)
                if conn is not None:
                    await loop.run_in_executor(None, conn.close)  # may checkpoint the WAL: not on the loop

    async def _read(self, sub_account_id: int, fn: Callable[[sqlite3.Connection], T], default: T) -> T:
        """Run ``fn`` on a fresh read-only connection; ``default`` when the file does not exist yet."""
        path = self.path(sub_account_id)

        def call() -> T:
            if not path.exists():  # never create a file just to read it
                return default
            conn = sqlite3.connect(path, isolation_level=None)
            try:
                conn.execute("PRAGMA query_only=ON")
                conn.execute("PRAGMA busy_timeout=5000")
                if conn.execute("SELECT 1 FROM sqlite_master WHERE name = '_tables'").fetchone() is None:
                    return default
                return fn(conn)
            finally:
                conn.close()

        return await asyncio.to_thread(call)

    async def close(self) -> None:
        """Close the writer connections, after any write in progress."""
        self._closed = True
        for sub_account_id, lock in list(self._locks.items()):
            async with lock:
                conn = self._writers.pop(sub_account_id, None)
                if conn is not None:
                    conn.close()

    # -- tables -------------------------------------------------------------------------

    async def open_table(self, sub_account_id: int, connection_id: int, stream: Stream) -> TableWriter:
        """The table for ``stream`` of a connection, created (or given new columns) as needed."""
        # Cached per definition: a connector's streams rarely change, and each
        # check costs a control-database read and a thread hop.
        key = (sub_account_id, connection_id, stream.name, stream.fields, stream.primary_key)
        cached = self._open.get(key)
        if cached is None:
            table_id = await self.store.allocate_warehouse_table(sub_account_id, connection_id, stream.name)

            def ensure(conn: sqlite3.Connection) -> WarehouseTable:
                return _ensure_table(conn, table_id, connection_id, stream, self.now())

            table = await self._with_writer(sub_account_id, ensure)
            cached = self._open[key] = (table, _plan(table, stream))
        return TableWriter(self, sub_account_id, *cached)

    async def reset_state(self, sub_account_id: int, connection_id: int, streams: Sequence[str] | None = None) -> None:
        """Forget the cursors so the next sync reads everything again (rows stay; upserts dedupe)."""

        def reset(conn: sqlite3.Connection) -> None:
            if streams is None:
                conn.execute("DELETE FROM _state WHERE connection_id = ?", (connection_id,))
            else:
                conn.executemany(
                    "DELETE FROM _state WHERE connection_id = ? AND stream = ?", [(connection_id, s) for s in streams]
                )

        if self.path(sub_account_id).exists():
            await self._with_writer(sub_account_id, reset)
        for key in self._states:
            if key[:2] == (sub_account_id, connection_id) and (streams is None or key[2] in streams):
                self._states[key] = "{}"

    async def drop_connection_tables(self, sub_account_id: int, connection_id: int) -> int:
        """Drop every table (and cursor) of a connection; returns how many tables went."""

        def drop(conn: sqlite3.Connection) -> list[int]:
            rows = conn.execute("SELECT id, physical FROM _tables WHERE connection_id = ?", (connection_id,)).fetchall()
            conn.execute("BEGIN IMMEDIATE")
            try:
                for _, physical in rows:
                    conn.execute(f"DROP TABLE IF EXISTS {quote(physical)}")
                conn.execute("DELETE FROM _fields WHERE table_id IN (SELECT id FROM _tables WHERE connection_id = ?)", (connection_id,))
                conn.execute("DELETE FROM _tables WHERE connection_id = ?", (connection_id,))
                conn.execute("DELETE FROM _state WHERE connection_id = ?", (connection_id,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return [table_id for table_id, _ in rows]

        self._forget(sub_account_id, connection_id)
        dropped = await self._with_writer(sub_account_id, drop) if self.path(sub_account_id).exists() else []
        await self.store.delete_warehouse_tables(connection_id)
        self._forget(sub_account_id, connection_id)  # a write that raced the drop may have cached it again
        return len(dropped)

    def _forget(self, sub_account_id: int, connection_id: int) -> None:
        self._open = {k: v for k, v in self._open.items() if k[:2] != (sub_account_id, connection_id)}
        self._forget_states(sub_account_id, connection_id)

    def _forget_states(self, sub_account_id: int, connection_id: int) -> None:
        for key in [k for k in self._states if k[:2] == (sub_account_id, connection_id)]:
            self._states.pop(key, None)

    # -- reads (the data API) ----------------------------------------------------------------

    async def list_tables(self, sub_account_id: int) -> list[tuple[WarehouseTable, int]]:
        """Every table of the sub-account with its row count, ordered by connection and stream."""

        def read(conn: sqlite3.Connection) -> list[tuple[WarehouseTable, int]]:
            tables = _load_tables(conn)
            return [(t, conn.execute(f"SELECT COUNT(*) FROM {quote(t.physical)}").fetchone()[0]) for t in tables]

        return await self._read(sub_account_id, read, [])

    async def get_table(self, sub_account_id: int, table_id: int) -> WarehouseTable | None:
        def read(conn: sqlite3.Connection) -> WarehouseTable | None:
            found = _load_tables(conn, table_id=table_id)
            return found[0] if found else None

        return await self._read(sub_account_id, read, None)

    async def read_rows(
        self, sub_account_id: int, table: WarehouseTable, *, offset: int, limit: int
    ) -> tuple[int, list[dict[str, Any]]]:
        """``(total rows, rows)``: each row maps field name → value plus ``_synced_at``/``_run_id``,
        in insertion order (stable across pages)."""
        columns = ", ".join(quote(c) for c in [*(f.name for f in table.fields), *META_COLUMNS])
        decoders = [_decoder(f.type) for f in table.fields]
        names = [f.name for f in table.fields]

        def read(conn: sqlite3.Connection) -> tuple[int, list[dict[str, Any]]]:
            count = conn.execute(f"SELECT COUNT(*) FROM {quote(table.physical)}").fetchone()[0]
            cursor = conn.execute(
                f"SELECT {columns} FROM {quote(table.physical)} ORDER BY rowid LIMIT ? OFFSET ?", (limit, offset)
            )
            rows = []
            for values in cursor:
                row = {name: (decode(v) if decode and v is not None else v) for name, decode, v in zip(names, decoders, values)}
                row["_synced_at"] = iso_seconds(values[-2])
                row["_run_id"] = values[-1]
                rows.append(row)
            return int(count), rows

        return await self._read(sub_account_id, read, (0, []))


# -- helpers running inside the worker thread --------------------------------------------------


def _decoder(field_type: str) -> Callable[[Any], Any] | None:
    if field_type == "json":
        return json.loads
    if field_type == "boolean":
        return bool
    return None


def _load_tables(conn: sqlite3.Connection, *, table_id: int | None = None) -> list[WarehouseTable]:
    where, params = ("WHERE id = ?", (table_id,)) if table_id is not None else ("", ())
    rows = conn.execute(
        f"SELECT id, connection_id, stream, physical, primary_key, created_at FROM _tables {where} ORDER BY connection_id, stream, id",
        params,
    ).fetchall()
    if not rows:
        return []
    fields: dict[int, list[tuple[int, str, str]]] = {}
    ids = [r[0] for r in rows]
    marks = ", ".join("?" for _ in ids)
    for tid, fid, name, ftype in conn.execute(
        f"SELECT table_id, id, name, type FROM _fields WHERE table_id IN ({marks}) ORDER BY table_id, position, id", ids
    ):
        fields.setdefault(tid, []).append((fid, name, ftype))
    tables = []
    for tid, connection_id, stream, physical, pk_json, created_at in rows:
        pk = tuple(json.loads(pk_json))
        table_fields = tuple(WarehouseField(fid, name, ftype, name in pk) for fid, name, ftype in fields.get(tid, []))
        tables.append(WarehouseTable(tid, connection_id, stream, physical, pk, table_fields, created_at))
    return tables


def _ensure_table(conn: sqlite3.Connection, table_id: int, connection_id: int, stream: Stream, now: float) -> WarehouseTable:
    """Create the table on first use; add columns a newer connector definition declares."""
    existing = _load_tables(conn, table_id=table_id)
    conn.execute("BEGIN IMMEDIATE")
    try:
        if existing:
            table = existing[0]
            known = {f.name for f in table.fields}
            position = len(table.fields)
            for spec in stream.fields:
                if spec.name in known:
                    continue
                conn.execute(f"ALTER TABLE {quote(table.physical)} ADD COLUMN {quote(spec.name)} {SQL_TYPES[spec.type]}")
                conn.execute(
                    "INSERT INTO _fields (table_id, name, type, position) VALUES (?, ?, ?, ?)", (table_id, spec.name, spec.type, position)
                )
                position += 1
        else:
            physical = physical_name(connection_id, stream.name)
            pk = list(stream.primary_key) or [stream.fields[0].name]
            columns = [f"{quote(f.name)} {SQL_TYPES[f.type]}" for f in stream.fields]
            columns += ["_synced_at REAL NOT NULL", "_run_id INTEGER"]
            # Leftovers of a connection whose index rows went without its tables.
            conn.execute(f"DROP TABLE IF EXISTS {quote(physical)}")
            conn.execute(
                "DELETE FROM _tables WHERE physical = ? OR (connection_id = ? AND stream = ?)", (physical, connection_id, stream.name)
            )
            conn.execute(f"CREATE TABLE {quote(physical)} ({', '.join(columns)})")
            conn.execute(
                f"CREATE UNIQUE INDEX {quote(physical + '__pk')} ON {quote(physical)} ({', '.join(quote(k) for k in pk)})"
            )
            conn.execute(
                "INSERT INTO _tables (id, connection_id, stream, physical, primary_key, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (table_id, connection_id, stream.name, physical, json.dumps(pk), now),
            )
            conn.executemany(
                "INSERT INTO _fields (table_id, name, type, position) VALUES (?, ?, ?, ?)",
                [(table_id, f.name, f.type, i) for i, f in enumerate(stream.fields)],
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    found = _load_tables(conn, table_id=table_id)
    return found[0]
