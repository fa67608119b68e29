"""The per-customer warehouse: one PostgreSQL schema and one read-only role per sub-account.

The first table of a sub-account creates its schema (a random name, ``wh_…``,
recorded on the sub-account) and a ``NOLOGIN`` role of the same name that may
read that schema and nothing else. Query tables, SQL access and scripts run as
that role, so isolation is enforced by PostgreSQL, not only by this code.

The index of the tables lives in the control schema (``warehouse_tables``,
``warehouse_fields``, ``warehouse_state``). Each data table has the stream's
fields as typed columns (:data:`SQL_TYPES`) plus ``_synced_at`` and ``_deleted_at``
(``timestamptz``), ``_run_id`` and a hidden ``_seq`` (insertion order, the rows API's stable
order); a unique index on the primary key makes every write an upsert.

A page is written in one transaction: COPY into a temporary table, then
``INSERT … SELECT … ON CONFLICT DO UPDATE``, then the stream's cursor (on a first
load, COPY straight into the table, then the cursor). A crash therefore never
leaves a cursor ahead of its data, and a page fetched twice never duplicates a row.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import functools
import itertools
import json
import logging
import operator
import secrets
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, NamedTuple

import psycopg
from psycopg import AsyncConnection, sql
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb

from .connectors import Stream
from .store import Store, iso
from .store.placements import Placement
from .warehouse_servers import RESERVED_SCHEMAS, WRITER_SUFFIX, WarehouseServers

logger = logging.getLogger("bff.warehouse")

# Random table ids stay below 2**31 so every client (JavaScript included) reads them exactly.
WAREHOUSE_TABLE_ID_MIN = 1_000_000
WAREHOUSE_TABLE_ID_MAX = 2**31 - 1

# A connector field's type → its column type. Money is ``decimal`` (never a float); values are
# parsed by PostgreSQL itself (COPY into typed columns), a naive datetime as UTC.
SQL_TYPES = {
    "text": "text",
    "integer": "bigint",
    "decimal": "numeric",
    "number": "double precision",
    "boolean": "boolean",
    "date": "date",
    "datetime": "timestamptz",
    "json": "jsonb",
}
META_COLUMNS = ("_synced_at", "_run_id")
TABLE_FILLFACTOR = 50  # percent of each heap page filled by inserts; see _create_table


# PostgreSQL type OIDs → field types, for the columns of views (query tables); anything else is text.
PG_TYPE_FIELDS = {
    16: "boolean",
    20: "integer",
    21: "integer",
    23: "integer",
    700: "number",
    701: "number",
    1700: "decimal",
    114: "json",
    3802: "json",
    1082: "date",
    1114: "datetime",
    1184: "datetime",
}


def cast_using(column: str, sql_type: str, *, old_type: str = "text") -> sql.Composed:
    """``USING`` for a column retyped from ``old_type`` to ``sql_type``: numbers that become
    times are epoch seconds; otherwise a value that does not parse becomes NULL (a text
    ``created_at`` of ``"n/a"`` cannot stop an upgrade)."""
    col = sql.Identifier(column)
    numbers = ("bigint", "double precision", "numeric")
    if old_type in numbers[:2] and sql_type in ("timestamptz", "date"):
        return sql.SQL("to_timestamp({})::{}").format(col, sql.SQL(sql_type))
    if old_type in numbers and sql_type in numbers:
        return sql.SQL("{}::{}").format(col, sql.SQL(sql_type))
    # pg_temp.bff_valid: made by the statement of retype_statement (PostgreSQL 14+).
    return sql.SQL("CASE WHEN pg_temp.bff_valid({}::text, {}) THEN {}::text::{} END").format(
        col, sql.Literal(sql_type), col, sql.SQL(sql_type)
    )


# ``pg_temp.bff_valid(value, type)``: whether a text parses as that type. PostgreSQL 16+ says so
# itself (``pg_input_is_valid``); before, a cast is tried in a subtransaction (slower, same answer).
VALID_INPUT_FUNCTIONS = (
    "CREATE OR REPLACE FUNCTION pg_temp.bff_valid(value text, kind text) RETURNS boolean"
    " LANGUAGE sql STABLE AS 'SELECT pg_input_is_valid(value, kind)'",
    "CREATE OR REPLACE FUNCTION pg_temp.bff_valid(value text, kind text) RETURNS boolean"
    " LANGUAGE plpgsql STABLE AS $valid$ BEGIN EXECUTE format('SELECT %L::%s', value, kind); RETURN true;"
    " EXCEPTION WHEN data_exception THEN RETURN false; END $valid$",
)


def retype_statement(
    schema: str, physical: str, changes: Sequence[tuple[str, str, sql.Composable]], *, control_database: bool = True
) -> sql.Composed:
    """One ``DO`` block that changes column types of ``schema.physical``: ``(column, SQL type,
    USING expression)``. Views that read the table (query tables, and views over those) would stop
    ``ALTER … TYPE``; they are kept as they are defined (``pg_get_viewdef``), dropped, and made
    again with their owner and grants. In the control database (the typed-columns migration, when
    warehouses were schemas there) each query table's field types follow its columns in the same
    block; in a customer's database (a connector definition changed a field's type) the caller
    updates them (:meth:`Warehouse._refresh_query_fields`)."""
    target = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(physical))
    alter = sql.SQL("ALTER TABLE {} {}").format(
        target,
        sql.SQL(", ").join(
            sql.SQL("ALTER COLUMN {} TYPE {} USING {}").format(sql.Identifier(c), sql.SQL(t), using)
            for c, t, using in changes
        ),
    )
    kinds = sql.SQL(" ").join(
        sql.SQL("WHEN {} THEN {}").format(sql.Literal(oid), sql.Literal(kind)) for oid, kind in PG_TYPE_FIELDS.items()
    )
    update_fields = sql.SQL(
        """
    UPDATE query_tables q SET fields = (
        SELECT COALESCE(jsonb_agg(f.value || jsonb_build_object('type',
                 CASE a.atttypid {kinds} ELSE 'text' END) ORDER BY f.i), '[]')
          FROM jsonb_array_elements(q.fields) WITH ORDINALITY AS f(value, i)
          JOIN pg_attribute a ON a.attrelid = {view_oid} AND a.attname = f.value->>'name')
     WHERE q.view_name = v->>'name'
       AND q.sub_account_id IN (SELECT id FROM sub_accounts WHERE warehouse_schema = v->>'schema');"""
    ).format(kinds=kinds, view_oid=sql.SQL("format('%I.%I', v->>'schema', v->>'name')::regclass"))
    body = sql.SQL(
        """
DECLARE
  views jsonb := '[]';
  v jsonb;
  acl record;
BEGIN
  PERFORM set_config('TimeZone', 'UTC', true);
  IF current_setting('server_version_num')::int >= 160000 THEN
    EXECUTE {valid_16};
  ELSE
    EXECUTE {valid_14};
  END IF;
  SELECT COALESCE(jsonb_agg(jsonb_build_object('schema', n.nspname, 'name', c.relname, 'owner',
           pg_get_userbyid(c.relowner), 'definition', pg_get_viewdef(c.oid), 'acl', COALESCE(c.relacl::text[], '{{}}'))
           ORDER BY d.depth), '[]')
    INTO views
    FROM (WITH RECURSIVE deps(oid, depth) AS (
            SELECT r.ev_class, 1 FROM pg_depend p JOIN pg_rewrite r ON r.oid = p.objid
             WHERE p.classid = 'pg_rewrite'::regclass AND p.refobjid = {regclass}::regclass
               AND r.ev_class <> p.refobjid
            UNION
            SELECT r.ev_class, deps.depth + 1 FROM deps JOIN pg_depend p ON p.refobjid = deps.oid
              JOIN pg_rewrite r ON r.oid = p.objid
             WHERE p.classid = 'pg_rewrite'::regclass AND r.ev_class <> p.refobjid)
          SELECT oid, max(depth) AS depth FROM deps GROUP BY oid) d
    JOIN pg_class c ON c.oid = d.oid JOIN pg_namespace n ON n.oid = c.relnamespace;
  FOR v IN SELECT value FROM jsonb_array_elements(views) WITH ORDINALITY AS e(value, i) ORDER BY i DESC LOOP
    EXECUTE format('DROP VIEW IF EXISTS %I.%I', v->>'schema', v->>'name');
  END LOOP;
  {alter};
  FOR v IN SELECT value FROM jsonb_array_elements(views) LOOP
    EXECUTE format('CREATE VIEW %I.%I AS %s', v->>'schema', v->>'name', v->>'definition');
    EXECUTE format('ALTER VIEW %I.%I OWNER TO %I', v->>'schema', v->>'name', v->>'owner');
    FOR acl IN SELECT x.grantee, x.privilege_type
        FROM jsonb_array_elements_text(v->'acl') AS item, aclexplode(ARRAY[item::aclitem]) AS x
        WHERE x.grantee <> (SELECT oid FROM pg_roles WHERE rolname = v->>'owner') LOOP
      EXECUTE format('GRANT %s ON %I.%I TO %s', acl.privilege_type, v->>'schema', v->>'name',
        CASE WHEN acl.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(acl.grantee)) END);
    END LOOP;
    {update_fields}
  END LOOP;
END"""
    ).format(
        regclass=sql.Literal(target.as_string(None)),
        valid_16=sql.Literal(VALID_INPUT_FUNCTIONS[0]),
        valid_14=sql.Literal(VALID_INPUT_FUNCTIONS[1]),
        alter=alter,
        update_fields=update_fields if control_database else sql.SQL(""),
    )
    assert "$bff_retype$" not in body.as_string(None)
    return sql.Composed([sql.SQL("DO $bff_retype$"), body, sql.SQL("$bff_retype$")])


def table_name(stream: str) -> str:
    """A stream's table: named after the stream (PostgreSQL keeps 63 bytes of a name)."""
    return stream.encode()[:63].decode(errors="ignore")


def schema_name(connection_name: str, taken: set[str]) -> str:
    """A connection's schema: its name (``"exact online"``), `` (2)``, `` (3)``… when taken (or one
    PostgreSQL or the BFF keeps), within PostgreSQL's 63 bytes."""
    base = " ".join(connection_name.split()) or "connection"
    number = 1
    while True:
        suffix = "" if number == 1 else f" ({number})"
        candidate = base.encode()[: 63 - len(suffix)].decode(errors="ignore") + suffix
        if candidate not in taken and candidate not in RESERVED_SCHEMAS and not candidate.startswith("pg_"):
            return candidate
        number += 1


def moment(epoch: float) -> dt.datetime:
    """Epoch seconds (the warehouse clock) → the aware datetime a ``timestamptz`` column takes."""
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


def iso_moment(value: dt.datetime | None) -> str | None:
    """A ``timestamptz`` bookkeeping value (``_synced_at``, ``_deleted_at``) as the API writes times."""
    return None if value is None else iso(value.timestamp())


@dataclasses.dataclass(frozen=True)
class WarehouseField:
    id: int
    name: str
    type: str
    primary: bool

    def public_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "type": self.type, "primary": self.primary}


class RowCounts(NamedTuple):
    """How many rows a table holds, and how many of them are marked deleted (``_deleted_at``)."""

    total: int
    deleted: int


@dataclasses.dataclass(frozen=True)
class WarehouseTable:
    """One synced table: a connection's stream, in the connection's schema of the customer's database."""

    id: int
    placement: Placement
    schema: str
    connection_id: int
    stream: str
    physical: str
    primary_key: tuple[str, ...]
    fields: tuple[WarehouseField, ...]
    created_at: float

    @property
    def identifier(self) -> sql.Composed:
        return sql.SQL("{}.{}").format(sql.Identifier(self.schema), sql.Identifier(self.physical))

    def public_dict(self, *, database_id: int, counts: RowCounts) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.stream,
            "type": "synced",
            "connection": self.connection_id,
            "database_id": database_id,
            "schema": self.schema,
            "table": self.physical,
            "sql_name": self.identifier.as_string(None),  # how SQL names it: "exact online"."deleted"
            "row_count": counts.total,  # every row, deleted ones included
            "live_count": counts.total - counts.deleted,
            "deleted_count": counts.deleted,
            "primary_key": list(self.primary_key),
            "fields": [f.public_dict() for f in self.fields],
            "created_at": iso(self.created_at),
        }


@dataclasses.dataclass(frozen=True)
class _WritePlan:
    """Everything a page write needs, computed once per table and stream definition."""

    begin_page: sql.Composed
    begin_direct: sql.SQL
    copy: sql.Composed
    upsert: sql.Composed  # the page's rows into the table, its cursor into _bff.state
    upsert_unique: sql.Composed  # the same for a page whose keys are all different (no DISTINCT ON sort)
    is_empty: sql.Composed
    copy_direct: sql.Composed  # straight into the table (a first load): fields, _synced_at, _run_id
    summarize: sql.Composed | None  # the BRIN index on _synced_at learns the new rows' block ranges
    ranges: sql.Composed | None  # how many of that index's block ranges the table reaches
    getter: Callable[[Mapping[str, Any]], Any]
    single: bool  # one column: itemgetter returns a scalar, not a tuple
    json_positions: tuple[int, ...]
    key_positions: tuple[int, ...]
    # Per key column, the Python type whose equality is PostgreSQL's for it (str for text, int for
    # bigint); None when a key column is of another type (``1.0`` and ``1.00`` are one numeric).
    key_types: tuple[type, ...] | None
    _rendered: dict[tuple[str, str], bytes] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def sql(self, conn: AsyncConnection[Any], name: str) -> bytes:
        """The statement ``name`` as bytes in ``conn``'s encoding, rendered once (psycopg renders a
        composed statement again on every execution: identifiers quoted, parts joined)."""
        key = (name, conn.info.encoding)
        found = self._rendered.get(key)
        if found is None:
            statement: sql.Composable = getattr(self, name)
            found = self._rendered[key] = statement.as_bytes(conn)
        return found

    def ranges_sql(self, conn: AsyncConnection[Any]) -> bytes | None:
        return None if self.ranges is None else self.sql(conn, "ranges")

    def rows(self, records: Sequence[Any], *, tuples: bool = False) -> list[tuple[Any, ...]]:
        """The page's rows in column order: ``records`` are dicts of the stream's fields, or (with
        ``tuples``) already tuples in the order of its fields (:func:`compile_row_maker`)."""
        if tuples:
            rows = records if isinstance(records, list) else list(records)
        else:
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

    def keys(self, rows: Sequence[tuple[Any, ...]]) -> set[Any]:
        """The rows' primary keys (values, or tuples of them for a key of several columns), as
        Python compares them. PostgreSQL may find two of them equal (``"01"`` and ``"1"`` into a
        ``bigint``) unless :meth:`exact` says otherwise."""
        positions = self.key_positions
        if len(positions) == 1:
            (k,) = positions
            return {row[k] for row in rows}
        return {tuple(row[k] for k in positions) for row in rows}

    def exact(self, keys: set[Any]) -> bool:
        """Whether PostgreSQL compares these keys exactly as Python does: every value of the type
        its column stores as it is (a ``str`` for text, an ``int`` for bigint)."""
        types = self.key_types
        if types is None:
            return False
        if len(types) == 1:
            (kind,) = types
            return all(type(key) is kind for key in keys)
        return all(type(v) is kind for key in keys for v, kind in zip(key, types, strict=True))

    def _encode_json(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        values = list(row)
        for i in self.json_positions:
            if values[i] is not None:
                values[i] = json.dumps(values[i], separators=(",", ":"), ensure_ascii=False)
        return tuple(values)


def _bool_text(value: bool) -> str:
    return "t" if value else "f"


def _null_text(value: None) -> str:
    return "\\N"


# COPY's text for the values a JSON page decodes to (psycopg's own dumpers write the same text).
_COPY_TEXT: dict[type, Callable[[Any], str]] = {
    int: int.__repr__,
    float: float.__repr__,  # inf, -inf and nan as PostgreSQL's numeric and float8 read them
    bool: _bool_text,
    type(None): _null_text,
}


def _text_of(value: Any) -> str:
    return value if type(value) is str else _COPY_TEXT[type(value)](value)


def copy_lines(rows: Sequence[tuple[Any, ...]]) -> list[str] | None:
    """``rows`` as lines of COPY's text format (no newline: :func:`join_lines` ends them), for a
    page whose strings need no escaping (:attr:`bff.connectors.Page.plain`): two to three times
    as fast as psycopg's row-by-row writer. ``None`` when a value is not a string, number, boolean
    or null (psycopg writes that page)."""
    if not rows:
        return []
    try:
        return _line_formatter(len(rows[0]))(rows, _COPY_TEXT)
    except (KeyError, ValueError):  # another type; a row of another width
        return None


def join_lines(lines: list[str], tail: Sequence[Any] = ()) -> bytes:
    """COPY text of ``lines`` (:func:`copy_lines`), each followed by ``tail``'s values (a first
    load's ``_synced_at`` and ``_run_id``, the same on every row of a page)."""
    if not lines:
        return b""
    end = "".join("\t" + _text_of(v) for v in tail) + "\n"
    return (end.join(lines) + end).encode()


@functools.lru_cache(maxsize=64)
def _line_formatter(width: int) -> Callable[[Sequence[tuple[Any, ...]], dict[type, Callable[[Any], str]]], list[str]]:
    """``(rows, text) -> lines`` for rows of ``width`` values: one f-string per row, strings taken
    as they are and other values through ``text`` (generated once per width: no loop or join per
    row)."""
    names = [f"v{i}" for i in range(width)]
    fields = "\\t".join(f"{{{v} if {v}.__class__ is str else text[{v}.__class__]({v})}}" for v in names)
    unpack = (", ".join(names) + ("," if width == 1 else "")) if width else "_"
    source = f'def format_rows(rows, text):\n    return [f"{fields}" for {unpack} in rows]\n'
    namespace: dict[str, Any] = {}
    exec(compile(source, f"<COPY lines of {width} columns>", "exec"), namespace)
    return namespace["format_rows"]  # type: ignore[no-any-return]


# The cursors live with the data, in the customer's database (``_bff.state``, no customer grant):
# a page and its cursor commit together, and a database moved to another server takes them along.
_SAVE_STATE = sql.SQL(
    "INSERT INTO _bff.state (connection_id, stream, state, updated_at)"
    " VALUES (%(connection)s, %(stream)s, %(state)s, %(now)s)"
    " ON CONFLICT (connection_id, stream) DO UPDATE SET state = EXCLUDED.state, updated_at = EXCLUDED.updated_at"
)
_SAVE_STATE_SQL = _SAVE_STATE.as_bytes(None)  # ASCII only: the same bytes in every encoding


@dataclasses.dataclass(frozen=True)
class _Brin:
    """The BRIN index on a table's ``_synced_at``: its oid, the table's, and its range size."""

    index: int
    table: int
    pages_per_range: int


def _plan(table: WarehouseTable, stream: Stream, *, brin: _Brin | None) -> _WritePlan:
    """``brin``: the table's BRIN index on ``_synced_at`` (tables created before it have a B-tree
    there, which needs nothing)."""
    names = [f.name for f in stream.fields]
    cols = sql.SQL(", ").join(sql.Identifier(n) for n in names)
    pk = sql.SQL(", ").join(sql.Identifier(k) for k in table.primary_key)
    updates = sql.SQL(", ").join(
        sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(n), sql.Identifier(n))
        for n in [*names, *META_COLUMNS, "_deleted_at"]
        if n not in table.primary_key
    )
    # Named after the column set: a temp table lives as long as its pooled connection.
    shape = zlib.crc32(repr([(f.name, f.type) for f in stream.fields]).encode())
    temp = sql.Identifier(f"_page_{table.id}_{shape:08x}")
    # Text COPY, one typed column per field: PostgreSQL parses numbers, booleans and JSON itself.
    temp_cols = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(f.name), sql.SQL(SQL_TYPES[f.type])) for f in stream.fields
    )
    # The cursor is saved by the same statement (a data-modifying WITH runs whether read or not).
    # Nothing is returned per row: asking which rows were new (RETURNING xmax = 0) cost about a
    # tenth of the upsert; what the BRIN summary needs is whether the table grew (``ranges``).
    upsert = sql.SQL(
        "WITH saved AS ({save_state}) INSERT INTO {target} ({cols}, _synced_at, _run_id, _deleted_at)"
        " SELECT {distinct}{cols}, %(stamp)s, %(run)s, NULL FROM {temp}{order}"
        " ON CONFLICT ({pk}) DO UPDATE SET {updates}"
    )
    statement = {"target": table.identifier, "cols": cols, "pk": pk, "temp": temp, "updates": updates}
    exact_types = {"text": str, "integer": int}
    field_types = {f.name: f.type for f in stream.fields}
    key_types = [exact_types.get(field_types[k]) for k in table.primary_key]
    return _WritePlan(
        # Both in one round trip (no parameters: the simple query protocol takes several statements).
        # The page's rows and cursor are re-fetchable from the provider, so the commit does not wait
        # for the WAL flush: a server crash can lose the last pages, rows and cursor together (never
        # one without the other), and the next run fetches them again.
        # The temporary table is there from the connection's first page on: without the lower
        # client_min_messages PostgreSQL would send a notice saying so on every page.
        begin_page=sql.SQL(
            "SET LOCAL synchronous_commit = off; SET LOCAL TimeZone = 'UTC'; SET LOCAL client_min_messages = warning;"
            " CREATE TEMP TABLE IF NOT EXISTS {} ({}) ON COMMIT DELETE ROWS"
        ).format(temp, temp_cols),
        begin_direct=sql.SQL("SET LOCAL synchronous_commit = off; SET LOCAL TimeZone = 'UTC'"),
        copy=sql.SQL("COPY {} ({}) FROM STDIN").format(temp, cols),
        # DISTINCT ON: a page listing one record twice keeps its last copy (ctid is insertion order).
        upsert=upsert.format(
            **statement,
            distinct=sql.SQL("DISTINCT ON ({}) ").format(pk),
            order=sql.SQL(" ORDER BY {}, ctid DESC").format(pk),
            save_state=_SAVE_STATE,
        ),
        # Keys all different (most pages): no sort; rows go in in the provider's order.
        upsert_unique=upsert.format(**statement, distinct=sql.SQL(""), order=sql.SQL(""), save_state=_SAVE_STATE),
        is_empty=sql.SQL("SELECT NOT EXISTS (SELECT FROM {}) AS empty").format(table.identifier),
        copy_direct=sql.SQL("COPY {} ({}, _synced_at, _run_id) FROM STDIN").format(table.identifier, cols),
        # A BRIN index only covers block ranges it has summarised (VACUUM does it, eventually); an
        # unsummarised range matches every query. Rows appended by a page are summarised after it
        # commits: this reads just the new ranges, and rows rewritten in place keep their summaries
        # current. It needs the lock VACUUM takes, so it waits briefly for it and otherwise leaves
        # the ranges to that VACUUM (or to the next page): a page write never waits on it.
        summarize=(
            sql.SQL(
                "SELECT set_config('lock_timeout', '200ms', true), brin_summarize_new_values({}::oid::regclass)"
            ).format(sql.Literal(brin.index))
            if brin is not None
            else None
        ),
        # Rows only ever need a summary in a block range the index has not summarised: one the
        # table grew into (inserted rows, or updated ones that found no room on their page).
        # Rows landing in a summarised range widen its summary as they are written.
        ranges=(
            sql.SQL(
                "SELECT ceil(pg_relation_size({}::oid::regclass)"
                " / (current_setting('block_size')::numeric * {}))::bigint AS ranges"
            ).format(sql.Literal(brin.table), sql.Literal(brin.pages_per_range))
            if brin is not None
            else None
        ),
        getter=operator.itemgetter(*names),
        single=len(names) == 1,
        json_positions=tuple(i for i, f in enumerate(stream.fields) if f.type == "json"),
        key_positions=tuple(names.index(k) for k in table.primary_key),
        key_types=None if None in key_types else tuple(t for t in key_types if t is not None),
    )


# The source documents' scripts read ``_sdc_batched_at`` (the Singer loaders' batch time): the same
# instant as ``_synced_at``, as a generated column. PostgreSQL 18 computes it when read (VIRTUAL:
# no bytes stored, nothing for a sync to write); before 18 it is STORED (8 bytes a row).
BATCHED_AT = "_sdc_batched_at"


def batched_at_column(wconn: AsyncConnection[Any]) -> sql.Composed:
    kind = "VIRTUAL" if wconn.info.server_version >= 180000 else "STORED"
    return sql.SQL("{} timestamptz GENERATED ALWAYS AS (_synced_at) {}").format(
        sql.Identifier(BATCHED_AT), sql.SQL(kind)
    )


async def add_batched_at(wconn: AsyncConnection[Any], target: sql.Composable) -> None:
    """Give a table made before the alias its ``_sdc_batched_at`` (a look at the catalogue first: an
    ``ALTER TABLE`` would lock the table even when there is nothing to add)."""
    cur = await wconn.execute(
        "SELECT 1 FROM pg_attribute WHERE attrelid = %s::regclass AND attname = %s AND NOT attisdropped",
        (target.as_string(wconn), BATCHED_AT),
    )
    if await cur.fetchone() is None:
        await wconn.execute(
            sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {}").format(target, batched_at_column(wconn))
        )


async def make_table(
    wconn: AsyncConnection[Any], schema: str, physical: str, specs: Sequence[tuple[str, str]], pk: Sequence[str]
) -> None:
    """A synced table: ``specs`` (field name, field type) as typed columns, the bookkeeping columns,
    a unique index on the primary key, ``_seq`` and a BRIN index on ``_synced_at``."""
    target = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(physical))
    columns: list[sql.Composable] = [
        sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(SQL_TYPES[kind])) for name, kind in specs
    ]
    columns += [
        sql.SQL("_synced_at timestamptz NOT NULL"),
        sql.SQL("_run_id bigint"),
        sql.SQL("_deleted_at timestamptz"),
        sql.SQL("_seq bigint GENERATED ALWAYS AS IDENTITY"),
        batched_at_column(wconn),
    ]
    await wconn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(target))  # leftovers of a crash
    # Room on every page for the next version of each of its rows: a re-sync rewrites every row
    # it reads (a page of 500 in one transaction), and with the space (and no B-tree on a column
    # it changes) PostgreSQL updates in place: a HOT update, no new index entries, and the old
    # versions are pruned on the page. Measured on a full re-sync: 99% HOT and half the backend
    # CPU per row of fillfactor 90, whose table ends twice the size (dead versions wait for vacuum).
    await wconn.execute(
        sql.SQL("CREATE TABLE {} ({}) WITH (fillfactor = {})").format(
            target, sql.SQL(", ").join(columns), sql.Literal(TABLE_FILLFACTOR)
        )
    )
    short = physical.encode()[:45].decode(errors="ignore")
    await wconn.execute(
        sql.SQL("CREATE UNIQUE INDEX {} ON {} ({})").format(
            sql.Identifier(f"{short}__pk"), target, sql.SQL(", ").join(sql.Identifier(k) for k in pk)
        )
    )
    await wconn.execute(sql.SQL("CREATE INDEX {} ON {} (_seq)").format(sql.Identifier(f"{short}__seq"), target))
    # updated_since filters. BRIN, not a B-tree: every sync changes _synced_at, and a B-tree on it
    # would make each rewritten row a new index entry in all three indexes (PostgreSQL 16+ keeps
    # an update HOT when only BRIN-indexed columns change).
    await wconn.execute(
        sql.SQL("CREATE INDEX {} ON {} USING brin (_synced_at)").format(sql.Identifier(f"{short}__synced"), target)
    )


async def _copy(
    conn: AsyncConnection[Any],
    statement: bytes,
    rows: list[tuple[Any, ...]],
    lines: list[str] | None,
    tail: tuple[Any, ...] = (),
) -> None:
    """``rows`` (each followed by ``tail``) through ``COPY … FROM STDIN``: as one block of text when
    they were made into ``lines`` (:func:`copy_lines`), else by psycopg's row-by-row writer."""
    async with conn.cursor().copy(statement) as copy:
        if lines is not None:
            if lines:
                await copy.write(join_lines(lines, tail))
        else:
            for row in rows:
                await copy.write_row(row + tail)


class _PageTransaction:
    """A page's transaction on an autocommit connection in as few round trips as PostgreSQL
    allows: ``BEGIN`` goes with the page's settings (one simple query), and ``COMMIT`` with its last
    statement (:meth:`commit_with`). Left without that commit (something failed), the transaction
    is rolled back. Each round trip saved is about 70 µs of the worker's CPU (psycopg's async
    waiting) per page."""

    def __init__(self, conn: AsyncConnection[Any], settings: bytes) -> None:
        self.conn = conn
        self.settings = settings

    async def __aenter__(self) -> _PageTransaction:
        await self.conn.execute(b"BEGIN; " + self.settings)
        return self

    async def commit_with(self, *statements: tuple[bytes | None, Mapping[str, Any] | None]) -> Any:
        """Run ``statements`` (each with its parameters; a None statement is skipped) and commit,
        all sent at once (pipeline mode keeps them prepared); the first row the last one answered
        (None if none)."""
        async with self.conn.pipeline() as pipeline:
            cur = None
            for statement, params in statements:
                if statement is not None:
                    cur = await self.conn.execute(statement, params)
            await self.conn.execute(b"COMMIT")
            await pipeline.sync()
            return await cur.fetchone() if cur is not None and cur.description else None

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        status = self.conn.info.transaction_status
        if status in (TransactionStatus.INTRANS, TransactionStatus.INERROR) and not self.conn.closed:
            with contextlib.suppress(psycopg.Error):
                await self.conn.execute("ROLLBACK")


class TableWriter:
    """Writes pages of one stream into its table; returned by :meth:`Warehouse.open_table`."""

    def __init__(self, warehouse: Warehouse, table: WarehouseTable, plan: _WritePlan) -> None:
        self.warehouse = warehouse
        self.table = table
        self._plan = plan
        # A first load: pages are copied straight into the table while it held nothing but what
        # this writer copied into it (None: not looked yet). See write.
        self._direct: bool | None = None
        # How many block ranges of the BRIN index the table reached at the last summary this
        # writer made (None: none yet; its first page's summary covers whatever an earlier run,
        # cut short, left unsummarised).
        self._summarised: int | None = None
        # The primary keys of the pages being written (None: keys PostgreSQL may compare otherwise),
        # by write; and the last _synced_at handed out.
        self._pending: dict[int, set[Any] | None] = {}
        self._writes = itertools.count()
        self._stamped = 0.0

    def _stamp(self) -> float:
        """The next page's ``_synced_at``: now, and never earlier than the page handed over before's
        (``updated_since`` reads rows synced at or after a time)."""
        self._stamped = max(self.warehouse.now(), self._stamped)
        return self._stamped

    async def load_state(self) -> dict[str, Any]:
        """The incremental state saved with the last written page (``{}`` before the first)."""
        async with self.warehouse.servers.connection(self.table.placement) as conn:
            cur = await conn.execute(
                "SELECT state FROM _bff.state WHERE connection_id = %s AND stream = %s",
                (self.table.connection_id, self.table.stream),
            )
            row = await cur.fetchone()
        return dict(row["state"]) if row else {}

    async def write(
        self,
        records: Sequence[Mapping[str, Any]],
        state: Mapping[str, Any],
        run_id: int | None,
        *,
        after: Awaitable[int] | None = None,
        tuples: bool = False,
        plain: bool = False,
    ) -> int:
        """Upsert ``records`` and save ``state`` in one transaction; returns how many rows were written.

        ``records``: dicts of the stream's fields, or with ``tuples`` tuples in their order.
        ``plain``: no string in them needs escaping (:attr:`bff.connectors.Page.plain`).

        ``after`` is the previous page's write, still running: this page commits only once that one
        has, so pages land in the order they were handed over, and so do their ``_synced_at``
        (stamped in that order): a reader of "changed since" never sees a row appear with a time
        older than one it has already read. If it failed, this one fails the same way and saves
        nothing. Meanwhile this page is copied into its connection's temporary table, to be
        upserted once the page before is in. (Upserting it into the table meanwhile too, when no
        key is shared, measured slower: the machine's cores are busy anyway.)

        A first load (the table was empty when this writer first looked) copies each page straight
        into the table: no temporary table, no ``ON CONFLICT``. It does so while the page before
        is still being written when none of its keys can be in the pages being written (so neither
        transaction can wait on the other's rows: two that did would deadlock), else once the page
        before is in. The table's unique index still guards it: a page holding a key already there
        (a record listed twice by the provider, a row a customer's script inserted meanwhile) fails
        that COPY, which is rolled back whole, and the page and every later one are upserted instead.
        """
        plan = self._plan
        rows = plan.rows(records, tuples=tuples)
        # Made now, while the page before may still be writing.
        lines = copy_lines(rows) if plain else None
        keys = plan.keys(rows)
        # Only a first load's pages go alongside (and need the pages before them to be known).
        exact = self._direct is not False and plan.exact(keys)
        alongside = exact and all(other is not None and keys.isdisjoint(other) for other in self._pending.values())
        stamp = self._stamp()
        write = next(self._writes)
        self._pending[write] = keys if exact else None
        if after is not None:
            after = asyncio.ensure_future(after)  # awaited again if the page is written a second time
        try:
            ranges: int | None = None
            written = False
            if rows and len(keys) == len(rows):
                try:
                    ranges = await self._write(
                        rows, state, run_id, after, stamp, alongside, distinct=False, lines=lines
                    )
                    written = True
                except (psycopg.errors.UniqueViolation, psycopg.errors.CardinalityViolation):
                    # Keys equal for PostgreSQL though not for Python, or already in the table.
                    self._direct = False
            if not written:
                ranges = await self._write(rows, state, run_id, after, stamp, alongside, distinct=True, lines=lines)
        finally:
            del self._pending[write]
        if ranges is not None and ranges != self._summarised and plan.summarize is not None:
            if await self._summarize(plan.summarize):
                self._summarised = ranges
        return len(rows)

    async def _write(
        self,
        rows: list[tuple[Any, ...]],
        state: Mapping[str, Any],
        run_id: int | None,
        after: Awaitable[int] | None,
        stamp: float,
        alongside: bool,
        *,
        distinct: bool,
        lines: list[str] | None = None,
    ) -> int | None:
        """One page's transaction; returns how many block ranges of the BRIN index the table reaches
        after it (None: no rows written, or no such index). ``alongside``: a first load's page may be
        copied into the table before ``after`` is done (no key in common with the pages being written)."""
        plan, table = self._plan, self.table
        params = {"connection": table.connection_id, "stream": table.stream, "state": Jsonb(dict(state)), "now": stamp}
        async with self.warehouse.servers.connection(table.placement) as conn:
            if rows and not distinct and self._direct is not False:
                if self._direct is None and after is not None:
                    await after  # the page before looks at the table first
                    after = None
                if self._direct is None:
                    cur = await conn.execute(plan.is_empty)
                    found = await cur.fetchone()
                    self._direct = bool(found and found["empty"])
                if self._direct:
                    if after is not None and not alongside:
                        await after
                        after = None
                    async with _PageTransaction(conn, plan.sql(conn, "begin_direct")) as tx:
                        await _copy(
                            conn, plan.sql(conn, "copy_direct"), rows, lines, (moment(stamp).isoformat(), run_id)
                        )
                        if after is not None:
                            await after
                        reached = await tx.commit_with((_SAVE_STATE_SQL, params), (plan.ranges_sql(conn), None))
                    return int(reached["ranges"]) if reached else None
            if not rows:  # only a cursor to save, once the page before is in: one statement
                if after is not None:
                    await after
                await conn.execute(_SAVE_STATE_SQL, params)
                return None
            async with _PageTransaction(conn, plan.sql(conn, "begin_page")) as tx:
                await _copy(conn, plan.sql(conn, "copy"), rows, lines)
                if after is not None:
                    await after
                statement = plan.sql(conn, "upsert" if distinct else "upsert_unique")
                reached = await tx.commit_with(
                    (statement, {**params, "stamp": moment(stamp), "run": run_id}), (plan.ranges_sql(conn), None)
                )
            return int(reached["ranges"]) if reached else None

    async def _summarize(self, statement: sql.Composed) -> bool:
        """Whether the index now summarises every range (False: left to VACUUM or the next page)."""
        try:
            async with self.warehouse.servers.connection(self.table.placement) as conn:
                await conn.execute(statement)
            return True
        except psycopg.errors.LockNotAvailable:
            return False  # VACUUM (or the next page's summary) has the index: it summarises these ranges
        except psycopg.Error:  # the page is committed; a summary is only an optimisation
            logger.warning("could not summarise the _synced_at index of %s", self.table.physical, exc_info=True)
            return False

    async def mark_missing_deleted(self, run_id: int) -> int:
        """After a full read by ``run_id``: rows it did not write are gone at the provider. Sets
        ``_deleted_at`` on them (once; rows already marked keep their time); returns how many."""
        async with self.warehouse.servers.connection(self.table.placement) as conn:
            cur = await conn.execute(
                sql.SQL(
                    "UPDATE {} SET _deleted_at = %s WHERE _deleted_at IS NULL AND _run_id IS DISTINCT FROM %s"
                ).format(self.table.identifier),
                (moment(self.warehouse.now()), run_id),
            )
            return cur.rowcount

    @property
    def _deletions_key(self) -> str:
        # The deleted-ids cursor sits next to the stream's own cursor, under its own key, so a
        # page's state (which replaces the stream's) never overwrites it.
        return f"{self.table.stream}:deletions"

    async def deletions_cursor(self) -> str | None:
        async with self.warehouse.servers.connection(self.table.placement) as conn:
            cur = await conn.execute(
                "SELECT state FROM _bff.state WHERE connection_id = %s AND stream = %s",
                (self.table.connection_id, self._deletions_key),
            )
            row = await cur.fetchone()
        return row["state"].get("since") if row else None

    async def mark_deleted(self, ids: Sequence[Any], cursor: str | None) -> int:
        """Set ``_deleted_at`` on the rows with these primary keys (a provider's deleted-ids list)
        and save the list's cursor, in one transaction; returns how many rows were marked."""
        key = sql.Identifier(self.table.primary_key[0])
        now = self.warehouse.now()
        async with self.warehouse.servers.transaction(self.table.placement) as conn:
            marked = 0
            if ids:
                cur = await conn.execute(
                    sql.SQL("UPDATE {} SET _deleted_at = %s WHERE _deleted_at IS NULL AND {}::text = ANY(%s)").format(
                        self.table.identifier, key
                    ),
                    (moment(now), [str(i) for i in ids]),
                )
                marked = cur.rowcount
            if cursor is not None:
                await conn.execute(
                    _SAVE_STATE_SQL,
                    {
                        "connection": self.table.connection_id,
                        "stream": self._deletions_key,
                        "state": Jsonb({"since": cursor}),
                        "now": now,
                    },
                )
        return marked

    async def mark_flagged_deleted(self, field: str) -> int:
        """Rows whose ``field`` is true are deleted at the provider (an archived flag)."""
        async with self.warehouse.servers.connection(self.table.placement) as conn:
            cur = await conn.execute(
                sql.SQL(
                    "UPDATE {} SET _deleted_at = %s WHERE _deleted_at IS NULL AND lower({}::text) IN ('true', 't', '1')"
                ).format(self.table.identifier, sql.Identifier(field)),
                (moment(self.warehouse.now()),),
            )
            return cur.rowcount


class Warehouse:
    """Every sub-account's warehouse: its own database (see :mod:`bff.warehouse_servers`), a schema
    per connection in it, a table per stream; the index of the tables in the control database."""

    def __init__(
        self, store: Store, servers: WarehouseServers | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.servers = servers or WarehouseServers(store)
        self._clock = clock
        self._plans: dict[tuple[Any, ...], tuple[WarehouseTable, _WritePlan]] = {}
        # Moves a customer of an earlier release (a schema of the control database) into its own
        # database (bff.warehouse_upgrade, set by the app): done before its first table is opened.
        self.upgrade_customer: Callable[[int], Awaitable[object]] | None = None

    def now(self) -> float:
        return float(self._clock())

    async def close(self) -> None:
        await self.servers.close()

    # -- databases --------------------------------------------------------------------------------

    async def placement(self, sub_account_id: int, *, create: bool = False) -> Placement | None:
        """Where the customer's database is; with ``create`` it is made on first need."""
        return await self.servers.placement(sub_account_id, create=create)

    async def database_of(self, sub_account_id: int) -> str | None:
        """The name of the customer's database (``wh_…``), None before its first table."""
        placement = await self.placement(sub_account_id)
        return placement.database if placement else None

    async def drop_customer(self, sub_account_id: int) -> bool:
        """The customer's database and roles, dropped, and its tables forgotten (a deleted sub-account)."""
        placement = await self.servers.placements.get(sub_account_id)
        self.forget_customer(sub_account_id)
        if placement is None:
            return False
        await self.servers.drop_database(placement)
        async with self.store.transaction() as conn:
            await conn.execute("DELETE FROM warehouse_tables WHERE sub_account_id = %s", (sub_account_id,))
        await self.servers.placements.delete(sub_account_id)
        logger.info("dropped the warehouse database of sub-account %s on %s", sub_account_id, placement.server)
        return True

    def forget_customer(self, sub_account_id: int) -> None:
        """Forget what this process knows of the customer's tables (dropped, or moved elsewhere)."""
        self._plans = {k: v for k, v in self._plans.items() if k[0] != sub_account_id}

    # -- tables -------------------------------------------------------------------------------

    async def open_table(self, sub_account_id: int, connection_id: int, stream: Stream) -> TableWriter:
        """The table for ``stream`` of a connection, created (or given new columns) as needed."""
        key = (sub_account_id, connection_id, stream.name, stream.fields, stream.primary_key)
        cached = self._plans.get(key)
        if cached is None or not await self._exists(cached[0]):
            if self.upgrade_customer is not None and await self._legacy(sub_account_id):
                # Its tables move first, or this one would be made anew, empty, beside the old one.
                await self.upgrade_customer(sub_account_id)
            placement = await self.placement(sub_account_id, create=True)
            assert placement is not None
            table = await self._ensure_table(placement, connection_id, stream)
            plan = _plan(table, stream, brin=await self._brin_index(table))
            cached = self._plans[key] = (table, plan)
        return TableWriter(self, *cached)

    async def _legacy(self, sub_account_id: int) -> bool:
        async with self.store.connection() as conn:
            cur = await conn.execute("SELECT warehouse_schema FROM sub_accounts WHERE id = %s", (sub_account_id,))
            row = await cur.fetchone()
        return bool(row and row["warehouse_schema"])

    async def _brin_index(self, table: WarehouseTable) -> _Brin | None:
        async with self.servers.connection(table.placement) as conn:
            cur = await conn.execute(
                "SELECT i.indexrelid AS index, i.indrelid AS table, COALESCE((SELECT option_value::int"
                " FROM pg_options_to_table(c.reloptions) WHERE option_name = 'pages_per_range'), 128) AS per"
                " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                " JOIN pg_am a ON a.oid = c.relam WHERE i.indrelid = %s::regclass AND a.amname = 'brin'",
                (table.identifier.as_string(conn),),
            )
            row = await cur.fetchone()
        return _Brin(int(row["index"]), int(row["table"]), int(row["per"])) if row else None

    async def _exists(self, table: WarehouseTable) -> bool:
        async with self.store.connection() as conn:
            # ... where it was made: a customer moved to another server (by another process) is written there.
            cur = await conn.execute(
                "SELECT 1 AS found FROM warehouse_tables t JOIN warehouse_placements p USING (sub_account_id)"
                " WHERE t.id = %s AND t.schema_name = %s AND p.server = %s AND p.database = %s",
                (table.id, table.schema, table.placement.server, table.placement.database),
            )
            return await cur.fetchone() is not None

    async def connection_schema(
        self, conn: AsyncConnection[Any], wconn: AsyncConnection[Any], placement: Placement, connection_id: int
    ) -> str:
        """The connection's schema in the customer's database, made on first need, named after it."""
        placements = self.servers.placements
        name = await placements.schema_of(conn, connection_id)
        if name is None:
            # One name at a time per customer (a lock in the control database, out of customers' reach).
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext('bff.schemas'), %s::int)", (placement.sub_account_id,)
            )
            name = await placements.schema_of(conn, connection_id)
        if name is None:
            cur = await conn.execute("SELECT name FROM connections WHERE id = %s", (connection_id,))
            row = await cur.fetchone()
            name = schema_name(
                str(row["name"]) if row else f"connection {connection_id}",
                await placements.schema_names(conn, placement.sub_account_id),
            )
            await placements.add_schema(conn, placement.sub_account_id, connection_id, name)
        ident, owner = sql.Identifier(name), sql.Identifier(placement.database)
        cur = await wconn.execute("SELECT 1 AS found FROM pg_namespace WHERE nspname = %s", (name,))
        if await cur.fetchone() is None:
            await wconn.execute(sql.SQL("CREATE SCHEMA {}").format(ident))
            # The customer reads (and, with the writer role, writes) the synced tables; their DDL stays ours.
            await wconn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(ident, owner))
            for grant in (
                sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT SELECT ON TABLES TO {}").format(ident, owner),
                sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT INSERT, UPDATE, DELETE ON TABLES TO {}").format(
                    ident, sql.Identifier(placement.database + WRITER_SUFFIX)
                ),
            ):
                await wconn.execute(grant)
        return name

    async def rename_connection(self, sub_account_id: int, connection_id: int, name: str) -> str | None:
        """Rename the connection's schema after the connection (`` (2)`` when taken); views over its
        tables (query tables) keep working: PostgreSQL tracks them by object, not by name."""
        placement = await self.placement(sub_account_id)
        if placement is None:
            return None
        async with self.store.transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('bff.schemas'), %s::int)", (sub_account_id,))
            old = await self.servers.placements.schema_of(conn, connection_id)
            if old is None:
                return None
            taken = await self.servers.placements.schema_names(conn, sub_account_id) - {old}
            new = schema_name(name, taken)
            if new == old:
                return old
            async with self.servers.transaction(placement) as wconn:
                await wconn.execute(
                    sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new))
                )
                await self.servers.placements.rename_schema(conn, connection_id, new)
                await conn.execute(
                    "UPDATE warehouse_tables SET schema_name = %s WHERE connection_id = %s", (new, connection_id)
                )
        self._plans = {k: v for k, v in self._plans.items() if k[:2] != (sub_account_id, connection_id)}
        return new

    async def _ensure_table(self, placement: Placement, connection_id: int, stream: Stream) -> WarehouseTable:
        """Create the table on first use; add columns a newer connector definition declares.

        The index (control database) commits after the table (customer database): a crash between
        leaves a table without index rows, which the next open makes again."""
        sub_account_id = placement.sub_account_id
        async with self.store.transaction() as conn, self.servers.transaction(placement) as wconn:
            # Serialise DDL for one connection's stream across processes (in the customer's database:
            # only this customer's own logins could hold the same key).
            await wconn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (connection_id, stream.name))
            schema = await self.connection_schema(conn, wconn, placement, connection_id)
            existing = await load_tables(
                conn, sub_account_id=sub_account_id, connection_id=connection_id, stream=stream.name, legacy=True
            )
            if existing and existing[0].schema is not None and existing[0].schema != "":
                table = existing[0]
                await add_batched_at(wconn, table.identifier)
                known = {f.name for f in table.fields}
                position = len(table.fields)
                # A newer definition changed a field's type (an amount from number to decimal).
                declared = {spec.name: spec.type for spec in stream.fields}
                retyped = [f for f in table.fields if declared.get(f.name, f.type) != f.type]
                if retyped:
                    changes = []
                    for f in retyped:
                        wanted = SQL_TYPES[declared[f.name]]
                        using = cast_using(f.name, wanted, old_type=SQL_TYPES.get(f.type, "text"))
                        changes.append((f.name, wanted, using))
                    await wconn.execute(retype_statement(table.schema, table.physical, changes, control_database=False))
                    for f in retyped:
                        await conn.execute(
                            "UPDATE warehouse_fields SET type = %s WHERE id = %s", (declared[f.name], f.id)
                        )
                    await self._refresh_query_fields(conn, wconn, sub_account_id)
                for spec in stream.fields:
                    if spec.name in known:
                        continue
                    await wconn.execute(
                        sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
                            table.identifier, sql.Identifier(spec.name), sql.SQL(SQL_TYPES[spec.type])
                        )
                    )
                    await conn.execute(
                        "INSERT INTO warehouse_fields (table_id, name, type, position) VALUES (%s, %s, %s, %s)",
                        (table.id, spec.name, spec.type, position),
                    )
                    position += 1
            else:
                await self._create_table(
                    conn, wconn, placement, schema, connection_id, stream, existing[0] if existing else None
                )
            found = await load_tables(
                conn, sub_account_id=sub_account_id, connection_id=connection_id, stream=stream.name
            )
        return found[0]

    async def _refresh_query_fields(
        self, conn: AsyncConnection[Any], wconn: AsyncConnection[Any], sub_account_id: int
    ) -> None:
        """Each query table's field types follow its view's columns (after a column changed type)."""
        cur = await conn.execute(
            "SELECT id, view_name, fields FROM query_tables WHERE sub_account_id = %s", (sub_account_id,)
        )
        for row in await cur.fetchall():
            found = await wconn.execute(
                "SELECT attname, atttypid FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0",
                (sql.SQL("public.{}").format(sql.Identifier(row["view_name"])).as_string(wconn),),
            )
            types = {str(r["attname"]): PG_TYPE_FIELDS.get(int(r["atttypid"]), "text") for r in await found.fetchall()}
            fields = [{**f, "type": types.get(f["name"], f["type"])} for f in row["fields"]]
            if fields != row["fields"]:
                await conn.execute("UPDATE query_tables SET fields = %s WHERE id = %s", (Jsonb(fields), row["id"]))

    async def _create_table(
        self,
        conn: AsyncConnection[Any],
        wconn: AsyncConnection[Any],
        placement: Placement,
        schema: str,
        connection_id: int,
        stream: Stream,
        legacy: WarehouseTable | None,
    ) -> None:
        """The stream's table in the connection's schema. ``legacy``: the index rows of the same
        stream's table in the shared database (before customer databases): its id and field ids
        are kept, so table and field ids the partner saved keep working."""
        physical = table_name(stream.name)
        pk = list(stream.primary_key) or [stream.fields[0].name]
        specs = [(f.name, f.type) for f in stream.fields]
        if legacy is not None:
            declared = {name for name, _ in specs}
            specs += [(f.name, f.type) for f in legacy.fields if f.name not in declared]
        await make_table(wconn, schema, physical, specs, pk)
        if legacy is not None:
            await conn.execute(
                "UPDATE warehouse_tables SET schema_name = %s, physical = %s, primary_key = %s WHERE id = %s",
                (schema, physical, Jsonb(pk), legacy.id),
            )
            known = {f.name: f for f in legacy.fields}
            for position, (name, kind) in enumerate(specs):
                if name in known:
                    await conn.execute(
                        "UPDATE warehouse_fields SET type = %s, position = %s WHERE id = %s",
                        (kind, position, known[name].id),
                    )
                else:
                    await conn.execute(
                        "INSERT INTO warehouse_fields (table_id, name, type, position) VALUES (%s, %s, %s, %s)",
                        (legacy.id, name, kind, position),
                    )
            return
        for _ in range(20):
            table_id = WAREHOUSE_TABLE_ID_MIN + secrets.randbelow(WAREHOUSE_TABLE_ID_MAX - WAREHOUSE_TABLE_ID_MIN)
            cur = await conn.execute(
                "INSERT INTO warehouse_tables (id, sub_account_id, connection_id, stream, physical, schema_name,"
                " primary_key, created_at) SELECT %s, %s, %s, %s, %s, %s, %s, %s"
                # Query tables share the id space (the rows API reads both by id).
                " WHERE NOT EXISTS (SELECT 1 FROM query_tables WHERE id = %s) ON CONFLICT (id) DO NOTHING RETURNING id",
                (
                    table_id,
                    placement.sub_account_id,
                    connection_id,
                    stream.name,
                    physical,
                    schema,
                    Jsonb(pk),
                    self.now(),
                    table_id,
                ),
            )
            if await cur.fetchone() is not None:
                break
        else:  # pragma: no cover - 20 collisions in 2**31
            raise RuntimeError("could not allocate a warehouse table id")
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO warehouse_fields (table_id, name, type, position) VALUES (%s, %s, %s, %s)",
                [(table_id, name, kind, i) for i, (name, kind) in enumerate(specs)],
            )

    async def reset_state(self, sub_account_id: int, connection_id: int, streams: Sequence[str] | None = None) -> None:
        """Forget the cursors so the next sync reads everything again (rows stay; upserts dedupe)."""
        placement = await self.placement(sub_account_id)
        if placement is None:
            return
        async with self.servers.connection(placement) as conn:
            if streams is None:
                await conn.execute("DELETE FROM _bff.state WHERE connection_id = %s", (connection_id,))
            else:
                await conn.execute(
                    "DELETE FROM _bff.state WHERE connection_id = %s AND stream = ANY(%s)",
                    (connection_id, list(streams)),
                )

    async def drop_connection_tables(self, sub_account_id: int, connection_id: int) -> int:
        """Drop the connection's schema with its tables; returns how many tables went. Called after
        the connection's row is deleted, so it finds the schema by the connection's id."""
        self._plans = {k: v for k, v in self._plans.items() if k[:2] != (sub_account_id, connection_id)}
        placement = await self.placement(sub_account_id)
        async with self.store.transaction() as conn:
            schema = await self.servers.placements.forget_schema(conn, connection_id)
            await conn.execute(
                "DELETE FROM warehouse_tables WHERE connection_id = %s AND sub_account_id = %s",
                (connection_id, sub_account_id),
            )
            if placement is None or schema is None:
                return 0
            async with self.servers.transaction(placement) as wconn:
                cur = await wconn.execute("SELECT COUNT(*) AS n FROM pg_tables WHERE schemaname = %s", (schema,))
                row = await cur.fetchone()
                # CASCADE: query tables reading it lose their view; they then report themselves broken.
                await wconn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
                await wconn.execute("DELETE FROM _bff.state WHERE connection_id = %s", (connection_id,))
        return int(row["n"]) if row else 0

    # -- reads (the data API) --------------------------------------------------------------------

    async def table_owner(self, table_id: int) -> int | None:
        """The sub-account a warehouse table belongs to (checked before anything is read)."""
        async with self.store.connection() as conn:
            cur = await conn.execute("SELECT sub_account_id FROM warehouse_tables WHERE id = %s", (table_id,))
            row = await cur.fetchone()
        return int(row["sub_account_id"]) if row else None

    async def list_tables(self, sub_account_id: int) -> list[tuple[WarehouseTable, RowCounts]]:
        """Every table of the sub-account with its row counts, ordered by connection and stream."""
        async with self.store.connection() as conn:
            tables = await load_tables(conn, sub_account_id=sub_account_id)
        if not tables:
            return []
        counted = []
        async with self.servers.connection(tables[0].placement) as conn:
            for table in tables:
                cur = await conn.execute(
                    sql.SQL("SELECT COUNT(*) AS n, COUNT(_deleted_at) AS deleted FROM {}").format(table.identifier)
                )
                row = await cur.fetchone()
                counted.append((table, RowCounts(int(row["n"]), int(row["deleted"])) if row else RowCounts(0, 0)))
        return counted

    async def live_counts(self, sub_account_id: int, connection_ids: Sequence[int]) -> dict[int, int]:
        """Live rows (not marked deleted) each of these connections holds over all its tables, as
        the tables API's ``live_count`` adds up: one statement for all of them, whatever their
        number (the connection answers carry it; the panel shows it on every card). A connection
        without tables is absent."""
        if not connection_ids:
            return {}
        try:
            return await self._live_counts(sub_account_id, connection_ids)
        except psycopg.errors.UndefinedTable:  # a table dropped (its connection deleted) in between: read again
            return await self._live_counts(sub_account_id, connection_ids)

    async def _live_counts(self, sub_account_id: int, connection_ids: Sequence[int]) -> dict[int, int]:
        async with self.store.connection() as conn:
            tables = [
                t for t in await load_tables(conn, sub_account_id=sub_account_id) if t.connection_id in connection_ids
            ]
        if not tables:
            return {}
        counts = sql.SQL(" UNION ALL ").join(
            sql.SQL("SELECT {}::bigint AS connection_id, COUNT(*) AS n FROM {} WHERE _deleted_at IS NULL").format(
                sql.Literal(t.connection_id), t.identifier
            )
            for t in tables
        )
        async with self.servers.connection(tables[0].placement) as conn:
            cur = await conn.execute(
                sql.SQL("SELECT connection_id, SUM(n)::bigint AS n FROM ({}) c GROUP BY connection_id").format(counts)
            )
            return {int(r["connection_id"]): int(r["n"]) for r in await cur.fetchall()}

    async def get_table(self, sub_account_id: int, table_id: int) -> WarehouseTable | None:
        """A synced table of this sub-account, with its fields and place, in one query."""
        async with self.store.connection() as conn:
            found = await load_tables(conn, sub_account_id=sub_account_id, table_id=table_id)
        return found[0] if found else None

    async def read_rows(
        self, sub_account_id: int, table: WarehouseTable, *, offset: int, limit: int
    ) -> tuple[int, list[dict[str, Any]]]:
        """``(total rows, rows)``: each row maps field name → value plus ``_synced_at``/``_run_id``,
        in insertion order (stable across pages)."""
        names = [f.name for f in table.fields]
        columns = sql.SQL(", ").join(sql.Identifier(c) for c in [*names, *META_COLUMNS])
        async with self.servers.connection(table.placement) as conn:
            cur = await conn.execute(sql.SQL("SELECT COUNT(*) AS n FROM {}").format(table.identifier))
            count_row = await cur.fetchone()
            cur = await conn.execute(
                sql.SQL("SELECT {} FROM {} ORDER BY _seq LIMIT %s OFFSET %s").format(columns, table.identifier),
                (limit, offset),
            )
            rows = []
            for values in await cur.fetchall():
                row = {name: values[name] for name in names}
                row["_synced_at"] = iso_moment(values["_synced_at"])
                row["_run_id"] = values["_run_id"]
                rows.append(row)
        return int(count_row["n"]) if count_row else 0, rows


async def load_tables(
    conn: AsyncConnection[Any],
    *,
    sub_account_id: int | None = None,
    table_id: int | None = None,
    connection_id: int | None = None,
    stream: str | None = None,
    legacy: bool = False,
) -> list[WarehouseTable]:
    """Tables of the index with their fields and placement. ``legacy``: also those still in the shared
    database of before (``schema_name`` NULL; their ``schema`` is then empty)."""
    where, params = [] if legacy else ["t.schema_name IS NOT NULL"], []
    for column, value in (
        ("t.sub_account_id", sub_account_id),
        ("t.id", table_id),
        ("t.connection_id", connection_id),
        ("t.stream", stream),
    ):
        if value is not None:
            where.append(f"{column} = %s")
            params.append(value)
    # One round trip: each table with its fields and place (the rows API looks a table up on every page).
    cur = await conn.execute(
        "SELECT t.id, t.sub_account_id, t.connection_id, t.stream, t.physical, t.schema_name, t.primary_key,"
        " t.created_at, p.server, p.database,"
        " (SELECT COALESCE(json_agg(json_build_object('id', f.id, 'name', f.name, 'type', f.type)"
        "  ORDER BY f.position, f.id), '[]') FROM warehouse_fields f WHERE f.table_id = t.id) AS fields"
        " FROM warehouse_tables t JOIN warehouse_placements p ON p.sub_account_id = t.sub_account_id AND p.ready"
        f" WHERE {' AND '.join(where)} ORDER BY t.connection_id, t.stream, t.id",
        params,
    )
    tables = []
    for r in await cur.fetchall():
        pk = tuple(r["primary_key"])
        table_fields = tuple(WarehouseField(f["id"], f["name"], f["type"], f["name"] in pk) for f in r["fields"])
        tables.append(
            WarehouseTable(
                r["id"],
                Placement(sub_account_id=r["sub_account_id"], server=r["server"], database=r["database"]),
                r["schema_name"] or "",
                r["connection_id"],
                r["stream"],
                r["physical"],
                pk,
                table_fields,
                r["created_at"],
            )
        )
    return tables


__all__ = ["RowCounts", "TableWriter", "Warehouse", "WarehouseField", "WarehouseTable", "schema_name", "table_name"]
