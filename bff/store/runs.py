"""The ``runs`` and ``logs`` tables: a connection's sync runs (one active at a time, the unique
index says so) and its log lines. A run ends together with its connection's health in
:meth:`RunStore.finish`."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg.types.json import Jsonb

from ..errors import Conflict
from .base import UNSET, Unset, assignments, build, given, insert_logs, last_per_parent
from .connections import HealthChange, guarded, health_change

if TYPE_CHECKING:
    from . import Store

T = TypeVar("T")
# Writes, inside the transaction that ends a run, what must exist exactly when that end does.
Outbox = Callable[[psycopg.AsyncConnection[Any], "Run", HealthChange | None], Awaitable[T]]

__all__ = ["ACTIVE_RUN_STATUSES", "LogLine", "Run", "RunAlreadyActive", "RunStore"]

ACTIVE_RUN_STATUSES = ("queued", "running", "waiting")


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
class LogLine:
    ts: float
    level: str
    message: str
    run_id: int | None


class RunAlreadyActive(Conflict):
    code = "sync_already_running"

    def __init__(self, run_id: int | None) -> None:
        super().__init__(
            "A sync of this connection is already running; wait for it to finish.", extra={"pipeline_run_id": run_id}
        )
        self.run_id = run_id


RUN_COLUMNS = (
    "id, connection_id, sub_account_id, status, task_id, tables, records, error, pid, job_id, attempts, resume_at,"
    " progress, created_at, started_at, finished_at, full_sync, trigger, categories"
)


class RunStore:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def create(
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
            row = await self._store._one(
                "INSERT INTO runs (connection_id, sub_account_id, status, task_id, tables, created_at, full_sync,"
                f" trigger, categories) VALUES (%s, %s, 'queued', %s, %s, %s, %s, %s, %s) RETURNING {RUN_COLUMNS}",
                (
                    connection_id,
                    sub_account_id,
                    task_id,
                    Jsonb(list(tables)) if tables else None,
                    self._store.now(),
                    full_sync,
                    trigger,
                    Jsonb(list(categories)) if categories else None,
                ),
            )
        except psycopg.errors.UniqueViolation:
            active = await self.active(connection_id)
            raise RunAlreadyActive(active.id if active else None) from None
        assert row is not None
        return Run(**row)

    async def delete(self, run_id: int) -> None:
        """Forget a run that never started (its job could not be queued)."""
        async with self._store.connection() as conn:
            await conn.execute("DELETE FROM runs WHERE id = %s AND status = 'queued'", (run_id,))

    async def get(self, run_id: int) -> Run | None:
        return build(Run, await self._store._one(f"SELECT {RUN_COLUMNS} FROM runs WHERE id = %s", (run_id,)))

    async def active(self, connection_id: int) -> Run | None:
        return build(
            Run,
            await self._store._one(
                f"SELECT {RUN_COLUMNS} FROM runs WHERE connection_id = %s AND status IN ('queued', 'running', 'waiting')",
                (connection_id,),
            ),
        )

    async def last(self, connection_id: int) -> Run | None:
        return (await self.last_of([connection_id])).get(connection_id)

    async def last_of(self, connection_ids: Sequence[int]) -> dict[int, Run]:
        """The last run of each of these connections (those that ran), in one query."""
        rows = await last_per_parent(self._store, "runs", "connection_id", RUN_COLUMNS, connection_ids)
        return {connection_id: Run(**row) for connection_id, row in rows.items()}

    async def list_page(self, connection_id: int, *, offset: int, limit: int) -> tuple[int, list[Run]]:
        count = await self._store._one("SELECT COUNT(*) AS n FROM runs WHERE connection_id = %s", (connection_id,))
        rows = await self._store._all(
            f"SELECT {RUN_COLUMNS} FROM runs WHERE connection_id = %s ORDER BY id DESC LIMIT %s OFFSET %s",
            (connection_id, limit, offset),
        )
        return int(count["n"] if count else 0), [Run(**row) for row in rows]

    async def update(
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
        sets, params = assignments(
            {
                "status": given(status),
                "records": given(records),
                "error": error,
                "pid": given(pid),
                "job_id": given(job_id),
                "resume_at": resume_at,
                "progress": given(progress),
            }
        )
        params.update(id=run_id, now=self._store.now())
        if started:
            sets.append("started_at = COALESCE(started_at, %(now)s)")
        if attempt:
            sets.append("attempts = attempts + 1")
        if sets:
            await self._store._one(f"UPDATE runs SET {', '.join(sets)} WHERE id = %(id)s RETURNING id", params)

    async def finish(
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
        outbox: Outbox[T] | None = None,
    ) -> tuple[Run | None, HealthChange | None, T | None]:
        """End a run: its status, the connection's health and the last log lines, atomically, and
        what ``outbox`` writes about it in the same transaction (the events of the run's end: they
        exist exactly when the run's end does). (None, None, None) when the run had already ended
        (another worker, or a delete, got there first); else (the ended run, the connection's
        health before and after or None if it is gone, what ``outbox`` returned)."""
        now = self._store.now()
        async with self._store.transaction() as conn:
            cur = await conn.execute(
                "UPDATE runs SET status = %(status)s, records = COALESCE(%(records)s, records), error = %(error)s,"
                " resume_at = NULL, finished_at = %(now)s"
                f" WHERE id = %(id)s AND status IN ('queued', 'running', 'waiting') RETURNING {RUN_COLUMNS}",
                {
                    "status": status,
                    "records": Jsonb(dict(records)) if records is not None else None,
                    "error": error,
                    "now": now,
                    "id": run_id,
                },
            )
            ended = build(Run, await cur.fetchone())
            if ended is None:
                return None, None, None
            cur = await conn.execute(
                # The health changes only from ``health_from`` (bff.lifecycle: not from DISABLED).
                f"UPDATE connections c SET {guarded('health_status = %(h)s')}, {guarded('detail = %(d)s')},"
                " updated_at = %(now)s"
                " FROM (SELECT id, health_status AS old FROM connections WHERE id = %(id)s FOR UPDATE) o"
                " WHERE c.id = o.id RETURNING c.id, c.sub_account_id, o.old, c.health_status, c.detail",
                {"h": health_status, "d": detail, "now": now, "id": connection_id, "health_from": list(health_from)},
            )
            changed = await cur.fetchone()
            if changed is not None:  # deleted mid-run: its logs went with it
                await insert_logs(conn, connection_id, logs, run_id, now=now)
            change = health_change(changed)
            written = await outbox(conn, ended, change) if outbox is not None else None
        return ended, change, written

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
            async with self._store.transaction() as conn:
                await insert_logs(conn, connection_id, lines, run_id, now=self._store.now())
        except psycopg.errors.ForeignKeyViolation:
            pass

    async def list_logs(self, connection_id: int, *, offset: int, limit: int) -> tuple[int, list[LogLine]]:
        """A page of the connection's log lines, newest first, and how many there are."""
        count = await self._store._one("SELECT COUNT(*) AS n FROM logs WHERE connection_id = %s", (connection_id,))
        rows = await self._store._all(
            "SELECT ts, level, message, run_id FROM logs WHERE connection_id = %s ORDER BY id DESC LIMIT %s OFFSET %s",
            (connection_id, limit, offset),
        )
        return int(count["n"] if count else 0), [LogLine(**row) for row in rows]
