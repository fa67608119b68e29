"""What the repositories share: rows as dicts, "leave this column" (:data:`UNSET`), timestamps
as the API writes them, and the log lines written together with the change they tell of."""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeVar

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

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


def build(cls: type[T], row: Row | None) -> T | None:
    """A frozen dataclass from a row, by column name (never by position); None for no row."""
    return cls(**row) if row is not None else None


class Reads(Protocol):
    async def _all(self, query: str, params: Mapping[str, Any] | Sequence[Any] = ()) -> list[Row]: ...


async def last_per_parent(
    store: Reads, table: str, parent: str, columns: str, parent_ids: Sequence[int]
) -> dict[int, Row]:
    """The newest row (highest id) of ``table`` for each of these parents that has one, in one
    query: a connection's last run, a script's last run (for one, or for a page of them)."""
    if not parent_ids:
        return {}
    rows = await store._all(
        f"SELECT DISTINCT ON ({parent}) {columns} FROM {table} WHERE {parent} = ANY(%s) ORDER BY {parent}, id DESC",
        (list(parent_ids),),
    )
    return {int(row[parent]): row for row in rows}


def given(value: Any) -> Any:
    """None means "leave it" for these columns: :data:`UNSET`."""
    return UNSET if value is None else value


def assignments(changes: Mapping[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """``column = %(column)s`` for every change that is not UNSET; mappings are stored as JSONB."""
    sets: list[str] = []
    params: dict[str, Any] = {}
    for column, value in changes.items():
        if value is UNSET:
            continue
        sets.append(f"{column} = %({column})s")
        params[column] = Jsonb(dict(value)) if isinstance(value, Mapping) else value
    return sets, params


async def insert_logs(
    conn: AsyncConnection[Any],
    connection_id: int,
    lines: Sequence[tuple[str, str]],
    run_id: int | None,
    *,
    now: float,
) -> None:
    """``(level, message)`` log lines of a connection, in order, inside the caller's transaction."""
    if lines:
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO logs (connection_id, run_id, ts, level, message) VALUES (%s, %s, %s, %s, %s)",
                [(connection_id, run_id, now, level, message) for level, message in lines],
            )
