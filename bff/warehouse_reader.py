"""Reading warehouse tables with the rows API's parameters: filters, search, ordering, since, fields.

:func:`parse_row_query` turns the query string into a :class:`RowQuery` (checked against the
table's fields; anything unknown is a ``400 validation_error`` naming the parameter), and
:func:`read_page` runs it on a connection. Values are always bound as parameters and column
names are always :class:`psycopg.sql.Identifier`: nothing from the request is formatted into SQL.

Parameters (§13):

- ``filter__<field>__<op>=value`` with ``op`` one of :data:`OPERATORS` (``<field>`` is a field
  name or ``field_<id>``); several filters are ANDed.
- ``search=`` — case-insensitive substring over the text fields.
- ``order_by=field,-field`` — ``-`` sorts descending; ties keep insertion order.
- ``updated_since=<ISO time>`` — rows synced at or after that time (``_synced_at``).
- ``include=`` / ``exclude=`` — comma-separated fields to return.

A synced table's bookkeeping columns (:data:`SYNCED_META`: ``_synced_at``, ``_run_id``,
``_deleted_at``) come with every row and may be filtered and ordered on by name, and named in
``include``/``exclude`` (which changes nothing: they always come back).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from psycopg import AsyncConnection, sql

from .errors import validation_error
from .warehouse import WarehouseTable, iso_moment
from .warehouse_servers import WarehouseServers

OPERATORS = ("equal", "not_equal", "contains", "higher_than", "lower_than", "empty", "not_empty")
# Types a value must be parsed into before it is bound; the rest compare as text.
_ORDERED = ("text", "integer", "decimal", "number", "date", "datetime")


@dataclasses.dataclass(frozen=True)
class ReadField:
    """A readable column: its public id and name, its warehouse type (``text``, ``integer``, …)."""

    id: int
    name: str
    type: str


# A synced table's bookkeeping columns: readable and filterable by name, never by ``field_<id>``.
SYNCED_META = (
    ReadField(0, "_synced_at", "datetime"),
    ReadField(0, "_run_id", "integer"),
    ReadField(0, "_deleted_at", "datetime"),
)
_MOMENTS = ("_synced_at", "_deleted_at")
# Field types whose database values JSON cannot carry as they are (see :func:`json_value`).
_CONVERTED = ("decimal", "date", "datetime")


@dataclasses.dataclass(frozen=True)
class RowQuery:
    """A parsed rows request: which fields to return, the WHERE clause and its values, the order."""

    fields: tuple[ReadField, ...]
    where: sql.Composable
    params: tuple[Any, ...]
    order: tuple[tuple[str, bool], ...]  # (field name, descending)
    filters: tuple[str, ...] = ()  # the filter__… parameters, as sent


def _split(raw: str) -> list[str]:
    return [part.strip() for part in raw.split(",") if part.strip()]


def _resolve(name: str, by_name: Mapping[str, ReadField], by_key: Mapping[str, ReadField]) -> ReadField | None:
    return by_name.get(name) or by_key.get(name)


def _typed(field: ReadField, raw: str, param: str) -> Any:
    if field.type == "datetime":
        return parse_since(raw, param)
    if field.type == "date":
        try:
            return dt.date.fromisoformat(raw.strip())
        except ValueError:
            raise validation_error({param: f"{field.name} holds dates; {raw!r} is not one (2026-01-31)."}) from None
    if field.type == "decimal":
        try:
            value = decimal.Decimal(raw.strip())
        except decimal.InvalidOperation:
            value = decimal.Decimal("NaN")
        if not value.is_finite():
            raise validation_error({param: f"{field.name} holds numbers; {raw!r} is not one."})
        return value
    if field.type == "integer":
        try:
            return int(raw)
        except ValueError:
            raise validation_error({param: f"{field.name} holds integers; {raw!r} is not one."}) from None
    if field.type == "number":
        try:
            return float(raw)
        except ValueError:
            raise validation_error({param: f"{field.name} holds numbers; {raw!r} is not one."}) from None
    if field.type == "boolean":
        lowered = raw.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise validation_error({param: f"{field.name} holds true/false; {raw!r} is neither."})
    return raw


def like_pattern(value: str) -> str:
    """``%value%`` with LIKE's own wildcards escaped, so ``%`` and ``_`` match themselves."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _condition(field: ReadField, op: str, raw: str, param: str) -> tuple[sql.Composable, list[Any]]:
    col = sql.Identifier(field.name)
    as_text = sql.SQL("{}::text").format(col)
    if op == "empty":
        return sql.SQL("({} IS NULL OR {} = '')").format(col, as_text), []
    if op == "not_empty":
        return sql.SQL("({} IS NOT NULL AND {} <> '')").format(col, as_text), []
    if op == "contains":
        return sql.SQL("{} ILIKE %s ESCAPE '\\'").format(as_text), [like_pattern(raw)]
    if field.type == "json":
        if op in ("higher_than", "lower_than"):
            raise validation_error({param: f"{field.name} holds JSON; it cannot be compared with {op}."})
        target: sql.Composable = as_text
        value: Any = raw
    else:
        target, value = col, _typed(field, raw, param)
    if op == "equal":
        return sql.SQL("{} = %s").format(target), [value]
    if op == "not_equal":
        return sql.SQL("{} IS DISTINCT FROM %s").format(target), [value]
    if field.type not in _ORDERED:
        raise validation_error({param: f"{field.name} ({field.type}) cannot be compared with {op}."})
    comparison = ">" if op == "higher_than" else "<"
    return sql.SQL("{} " + comparison + " %s").format(target), [value]


def parse_since(raw: str, param: str = "updated_since") -> dt.datetime:
    """An ISO 8601 time (``Z`` or an offset; none means UTC) → an aware datetime."""
    try:
        moment = dt.datetime.fromisoformat(raw.strip())
    except ValueError:
        raise validation_error({param: f"{raw!r} is not an ISO 8601 time such as 2026-01-31T12:00:00Z."}) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment


def parse_row_query(
    params: Iterable[tuple[str, str]],
    fields: Sequence[ReadField],
    *,
    has_synced_at: bool = True,
    meta: Sequence[ReadField] = (),
) -> RowQuery:
    """Check the rows API's parameters against ``fields`` (and the columns in ``meta``, which
    always come back); see the module docstring."""
    by_key = {f"field_{f.id}": f for f in fields}
    by_name = {f.name: f for f in (*meta, *fields)}
    conditions: list[sql.Composable] = []
    values: list[Any] = []
    order: list[tuple[str, bool]] = []
    include: list[ReadField] | None = None
    exclude: set[str] = set()
    filters: list[str] = []
    for key, raw in params:
        if key.startswith("filter__"):
            filters.append(key)
            name, sep, op = key[len("filter__") :].rpartition("__")
            if not sep:
                raise validation_error(
                    {key: "Write filters as filter__<field>__<operator>."}, detail=f"Bad filter {key}."
                )
            field = _resolve(name, by_name, by_key)
            if field is None:
                raise validation_error({key: f"Unknown field {name!r}."}, detail=f"Unknown field {name!r} in {key}.")
            if op not in OPERATORS:
                raise validation_error(
                    {key: f"Unknown operator {op!r}; use one of {', '.join(OPERATORS)}."},
                    detail=f"Unknown operator {op!r} in {key}.",
                )
            condition, bound = _condition(field, op, raw, key)
            conditions.append(condition)
            values += bound
        elif key == "search":
            text_fields = [f for f in fields if f.type in ("text", "date", "datetime")]
            if raw and text_fields:
                conditions.append(
                    sql.SQL("({})").format(
                        sql.SQL(" OR ").join(
                            sql.SQL("{}::text ILIKE %s ESCAPE '\\'").format(sql.Identifier(f.name)) for f in text_fields
                        )
                    )
                )
                values += [like_pattern(raw)] * len(text_fields)
            elif raw:
                conditions.append(sql.SQL("FALSE"))
        elif key == "order_by":
            for part in _split(raw):
                descending = part.startswith("-")
                name = part.lstrip("-+")
                field = _resolve(name, by_name, by_key)
                if field is None:
                    raise validation_error(
                        {"order_by": f"Unknown field {name!r}."}, detail=f"Cannot order by {name!r}."
                    )
                if field.type == "json":
                    raise validation_error({"order_by": f"{field.name} holds JSON and cannot be ordered by."})
                order.append((field.name, descending))
        elif key == "updated_since":
            if not has_synced_at:
                raise validation_error({key: "This table has no _synced_at column to compare with."})
            conditions.append(sql.SQL("_synced_at >= %s"))
            values.append(parse_since(raw))
        elif key in ("include", "exclude"):
            chosen = []
            for name in _split(raw):
                field = _resolve(name, by_name, by_key)
                if field is None:
                    raise validation_error(
                        {key: f"Unknown field {name!r}."}, detail=f"Unknown field {name!r} in {key}."
                    )
                chosen.append(field)
            if key == "include":
                include = chosen
            else:
                exclude |= {f.name for f in chosen}
    meta_names = {f.name for f in meta}
    selected = tuple(
        f for f in (include if include is not None else fields) if f.name not in exclude and f.name not in meta_names
    )
    where = sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("TRUE")
    return RowQuery(selected, where, tuple(values), tuple(order), tuple(filters))


def order_clause(query: RowQuery, tie_breakers: Sequence[sql.Composable]) -> sql.Composable:
    parts: list[sql.Composable] = [
        sql.SQL("{} DESC NULLS LAST" if descending else "{} ASC NULLS FIRST").format(sql.Identifier(name))
        for name, descending in query.order
    ]
    parts += tie_breakers
    return sql.SQL(", ").join(parts) if parts else sql.SQL("1")


async def read_page(
    conn: AsyncConnection[Any],
    relation: sql.Composable,
    query: RowQuery,
    *,
    extra_columns: Sequence[str],
    tie_breakers: Sequence[sql.Composable],
    offset: int,
    limit: int,
) -> tuple[int, list[dict[str, Any]]]:
    """``(matching rows, this page)`` of ``relation`` on ``conn`` (dict rows)."""
    names = [f.name for f in query.fields]
    selected = [*names, *extra_columns]
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in selected) if selected else sql.SQL("NULL AS _")
    # One round trip for both statements (pipeline mode).
    async with conn.pipeline():
        count_cur = await conn.execute(
            sql.SQL("SELECT COUNT(*) AS n FROM {} WHERE {}").format(relation, query.where), query.params
        )
        page_cur = await conn.execute(
            sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {} LIMIT %s OFFSET %s").format(
                columns, relation, query.where, order_clause(query, tie_breakers)
            ),
            (*query.params, limit, offset),
        )
    counted = await count_cur.fetchone()
    rows = [dict(row) for row in await page_cur.fetchall()]
    if not selected:  # every field excluded: rows are empty objects
        rows = [{} for _ in rows]
    return (int(counted["n"]) if counted else 0), rows


def json_value(value: Any) -> Any:
    """A database value as JSON can carry it (views may return numerics, timestamps, uuids…)."""
    if value is None or isinstance(value, (str, int, float, bool, list, dict)):
        return value
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dt.datetime) and value.tzinfo is not None:  # timestamptz: in UTC, with a Z
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (bytes, memoryview)):
        return bytes(value).hex()
    if isinstance(value, uuid.UUID):
        return str(value)
    return str(value)


async def read_synced(
    conn: AsyncConnection[Any], table: WarehouseTable, query: RowQuery, *, offset: int, limit: int
) -> tuple[int, list[dict[str, Any]]]:
    """A page of a synced table (a :class:`bff.warehouse.WarehouseTable`): ties in insertion order,
    ``_synced_at`` and ``_deleted_at`` (or null) as ISO times, ``_run_id`` with every row. No customer
    SQL is involved, so the BFF's own connection reads it."""
    count, rows = await read_page(
        conn,
        table.identifier,
        query,
        extra_columns=tuple(f.name for f in SYNCED_META),
        tie_breakers=[sql.SQL("_seq")],
        offset=offset,
        limit=limit,
    )
    stamps: dict[dt.datetime | None, str | None] = {None: None}  # the rows of one sync share their time
    converted = [f.name for f in query.fields if f.type in _CONVERTED]
    for row in rows:
        for column in _MOMENTS:
            value = row[column]
            if value not in stamps:
                stamps[value] = iso_moment(value)
            row[column] = stamps[value]
        for column in converted:
            row[column] = json_value(row[column])
    return count, rows


def synced_fields(table: WarehouseTable) -> tuple[ReadField, ...]:
    return tuple(ReadField(f.id, f.name, f.type) for f in table.fields)


async def read_synced_rows(
    servers: WarehouseServers, table: WarehouseTable, query: RowQuery, *, offset: int, limit: int
) -> tuple[int, list[dict[str, Any]]]:
    """:func:`read_synced` on a connection of the BFF's own pool for the customer's database."""
    async with servers.connection(table.placement) as conn:
        return await read_synced(conn, table, query, offset=offset, limit=limit)
