"""The ``scripts`` and ``script_runs`` tables (migration i15_scripts): the SQL behind :mod:`bff.scripts`."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.types.json import Jsonb

from ..errors import Conflict
from .base import UNSET, Unset, build, iso, last_per_parent

if TYPE_CHECKING:
    from . import Store

__all__ = ["RUN_ACTIVE", "Script", "ScriptRun", "ScriptRunActive", "ScriptStore"]

RUN_ACTIVE = ("queued", "running")
RUNS_KEPT = 100  # per script: older runs (and their output) are deleted as new ones finish


class CustomerBusy(Exception):
    """The run's customer has as many scripts running as it may; the run waits, queued."""


class ScriptRunActive(Conflict):
    """The script already has a queued or running run (the unique index said so)."""

    code = "script_already_running"

    def __init__(self, run_id: int | None) -> None:
        super().__init__(
            "This script is already queued or running; wait for that run to finish.", extra={"run_id": run_id}
        )
        self.run_id = run_id


@dataclasses.dataclass(frozen=True, kw_only=True)
class Script:
    id: int
    sub_account_id: int
    name: str
    raw_code: str
    schedule: int | None
    next_run_at: float | None
    created_at: float
    updated_at: float

    def public_dict(self, last_run: ScriptRun | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "raw_code": self.raw_code,
            "schedule": self.schedule,
            "next_run_at": iso(self.next_run_at),
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "last_run": last_run.public_dict() if last_run is not None else None,
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScriptRun:
    id: int
    script_id: int
    sub_account_id: int
    status: str
    trigger: str
    job_id: int | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    exit_code: int | None
    output: str
    error: str | None

    @property
    def active(self) -> bool:
        return self.status in RUN_ACTIVE

    def public_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "script_id": self.script_id,
            "status": self.status,
            "trigger": self.trigger,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "exit_code": self.exit_code,
            "output": self.output,
            "error": self.error,
        }


_SCRIPT_COLUMNS = "id, sub_account_id, name, raw_code, schedule, next_run_at, created_at, updated_at"
# Writes, in the transaction that ends a script run, what must exist exactly when that end does.
ScriptOutbox = Callable[[psycopg.AsyncConnection[Any], "ScriptRun"], Awaitable[Sequence[int]]]

_RUN_COLUMNS = (
    "id, script_id, sub_account_id, status, trigger, job_id, created_at, started_at, finished_at, exit_code,"
    " output, error"
)


class ScriptStore:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def _execute(self, query: str, params: tuple[Any, ...]) -> None:
        async with self._store.connection() as conn:
            await conn.execute(query, params)

    # -- scripts --------------------------------------------------------------------------------

    async def create(self, sub_account_id: int, name: str, raw_code: str, schedule: int | None) -> Script:
        now = self._store.now()
        row = await self._store._one(
            f"INSERT INTO scripts (sub_account_id, name, raw_code, schedule, next_run_at, created_at, updated_at)"
            f" VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING {_SCRIPT_COLUMNS}",
            (sub_account_id, name, raw_code, schedule, now + schedule if schedule else None, now, now),
        )
        script = build(Script, row)
        assert script is not None
        return script

    async def get(self, sub_account_id: int, script_id: int) -> Script | None:
        return build(
            Script,
            await self._store._one(
                f"SELECT {_SCRIPT_COLUMNS} FROM scripts WHERE id = %s AND sub_account_id = %s",
                (script_id, sub_account_id),
            ),
        )

    async def get_by_id(self, script_id: int) -> Script | None:
        return build(
            Script, await self._store._one(f"SELECT {_SCRIPT_COLUMNS} FROM scripts WHERE id = %s", (script_id,))
        )

    async def list_scripts(self, sub_account_id: int, *, offset: int, limit: int) -> tuple[int, list[Script]]:
        count = await self._store._one("SELECT COUNT(*) AS n FROM scripts WHERE sub_account_id = %s", (sub_account_id,))
        rows = await self._store._all(
            f"SELECT {_SCRIPT_COLUMNS} FROM scripts WHERE sub_account_id = %s ORDER BY id OFFSET %s LIMIT %s",
            (sub_account_id, offset, limit),
        )
        return int(count["n"]) if count else 0, [Script(**row) for row in rows]

    async def update(
        self,
        script: Script,
        *,
        name: str | Unset = UNSET,
        raw_code: str | Unset = UNSET,
        schedule: int | None | Unset = UNSET,
    ) -> Script | None:
        """Change what was given; a new schedule counts from now (manual clears the next run)."""
        now = self._store.now()
        new_schedule = script.schedule if isinstance(schedule, Unset) else schedule
        next_run_at = script.next_run_at
        if not isinstance(schedule, Unset) and schedule != script.schedule:
            next_run_at = now + schedule if schedule else None
        row = await self._store._one(
            f"UPDATE scripts SET name = %s, raw_code = %s, schedule = %s, next_run_at = %s, updated_at = %s"
            f" WHERE id = %s RETURNING {_SCRIPT_COLUMNS}",
            (
                script.name if isinstance(name, Unset) else name,
                script.raw_code if isinstance(raw_code, Unset) else raw_code,
                new_schedule,
                next_run_at,
                now,
                script.id,
            ),
        )
        return build(Script, row)

    async def delete(self, sub_account_id: int, script_id: int) -> bool:
        row = await self._store._one(
            "DELETE FROM scripts WHERE id = %s AND sub_account_id = %s RETURNING id", (script_id, sub_account_id)
        )
        return row is not None

    async def get_state(self, script_id: int) -> Any:
        row = await self._store._one("SELECT state FROM scripts WHERE id = %s", (script_id,))
        return row["state"] if row else None

    async def set_state(self, script_id: int, state: Any) -> None:
        await self._execute("UPDATE scripts SET state = %s WHERE id = %s", (Jsonb(state), script_id))

    # -- the schedule -----------------------------------------------------------------------------

    async def due(self, now: float, *, limit: int = 500) -> list[Script]:
        rows = await self._store._all(
            f"SELECT {_SCRIPT_COLUMNS} FROM scripts WHERE next_run_at <= %s ORDER BY next_run_at LIMIT %s",
            (now, limit),
        )
        return [Script(**row) for row in rows]

    async def claim(self, script: Script, next_run_at: float | None) -> bool:
        """Move a due script's next run on, unless another scheduler did first (compare-and-set)."""
        row = await self._store._one(
            "UPDATE scripts SET next_run_at = %s WHERE id = %s AND next_run_at = %s RETURNING id",
            (next_run_at, script.id, script.next_run_at),
        )
        return row is not None

    # -- runs -----------------------------------------------------------------------------------

    async def create_run(self, script: Script, trigger: str) -> ScriptRun:
        try:
            row = await self._store._one(
                f"INSERT INTO script_runs (script_id, sub_account_id, status, trigger, created_at)"
                f" VALUES (%s, %s, 'queued', %s, %s) RETURNING {_RUN_COLUMNS}",
                (script.id, script.sub_account_id, trigger, self._store.now()),
            )
        except psycopg.errors.UniqueViolation:
            active = await self.active_run(script.id)
            raise ScriptRunActive(active.id if active else None) from None
        except psycopg.errors.ForeignKeyViolation:  # deleted meanwhile
            raise LookupError(script.id) from None
        run = build(ScriptRun, row)
        assert run is not None
        return run

    async def get_run(self, run_id: int) -> ScriptRun | None:
        return build(
            ScriptRun, await self._store._one(f"SELECT {_RUN_COLUMNS} FROM script_runs WHERE id = %s", (run_id,))
        )

    async def run_status(self, run_id: int) -> str | None:
        row = await self._store._one("SELECT status FROM script_runs WHERE id = %s", (run_id,))
        return str(row["status"]) if row else None

    async def active_run(self, script_id: int) -> ScriptRun | None:
        return build(
            ScriptRun,
            await self._store._one(
                f"SELECT {_RUN_COLUMNS} FROM script_runs WHERE script_id = %s AND status IN ('queued', 'running')",
                (script_id,),
            ),
        )

    async def last_run(self, script_id: int) -> ScriptRun | None:
        return (await self.last_runs([script_id])).get(script_id)

    async def last_runs(self, script_ids: Sequence[int]) -> dict[int, ScriptRun]:
        """The last run of each of these scripts (those that ran), in one query."""
        rows = await last_per_parent(self._store, "script_runs", "script_id", _RUN_COLUMNS, script_ids)
        return {script_id: ScriptRun(**row) for script_id, row in rows.items()}

    async def list_runs(self, script_id: int, *, offset: int, limit: int) -> tuple[int, list[ScriptRun]]:
        count = await self._store._one("SELECT COUNT(*) AS n FROM script_runs WHERE script_id = %s", (script_id,))
        rows = await self._store._all(
            f"SELECT {_RUN_COLUMNS} FROM script_runs WHERE script_id = %s ORDER BY id DESC OFFSET %s LIMIT %s",
            (script_id, offset, limit),
        )
        return int(count["n"]) if count else 0, [ScriptRun(**row) for row in rows]

    async def set_job(self, run_id: int, job_id: int) -> None:
        await self._execute("UPDATE script_runs SET job_id = %s WHERE id = %s", (job_id, run_id))

    async def delete_run(self, run_id: int) -> None:
        await self._execute("DELETE FROM script_runs WHERE id = %s", (run_id,))

    async def start_run(self, run_id: int, *, per_customer: int | None = None) -> ScriptRun | None:
        """queued → running; None when the run is gone or was already taken. CustomerBusy when
        its customer already has ``per_customer`` runs running (the run stays queued).

        The customer's row is locked first, so two workers starting two of its runs at once
        count each other: the count is read after the lock, in a statement of its own."""
        async with self._store.transaction() as conn:
            if per_customer is not None:
                cur = await conn.execute(
                    "SELECT a.id FROM sub_accounts a JOIN script_runs r ON r.sub_account_id = a.id"
                    " WHERE r.id = %s AND r.status = 'queued' FOR UPDATE OF a",
                    (run_id,),
                )
                if await cur.fetchone() is None:
                    return None
                cur = await conn.execute(
                    "SELECT count(*) AS running FROM script_runs WHERE status = 'running'"
                    " AND sub_account_id = (SELECT sub_account_id FROM script_runs WHERE id = %s)",
                    (run_id,),
                )
                row = await cur.fetchone()
                if row is not None and int(row["running"]) >= per_customer:
                    raise CustomerBusy(run_id)
            cur = await conn.execute(
                f"UPDATE script_runs SET status = 'running', started_at = %s WHERE id = %s AND status = 'queued'"
                f" RETURNING {_RUN_COLUMNS}",
                (self._store.now(), run_id),
            )
            return build(ScriptRun, await cur.fetchone())

    async def finish_run(
        self,
        run_id: int,
        *,
        status: str,
        exit_code: int | None,
        output: str,
        error: str | None,
        outbox: ScriptOutbox | None = None,
    ) -> tuple[ScriptRun | None, Sequence[int]]:
        """running/queued → a final status, and what ``outbox`` writes about it in the same
        transaction (the ``script.finished`` delivery: it exists exactly when the run's end does);
        (None, ()) when the run is gone (its script was deleted) or had already ended."""
        async with self._store.transaction() as conn:
            cur = await conn.execute(
                f"UPDATE script_runs SET status = %s, finished_at = %s, exit_code = %s, output = %s, error = %s"
                f" WHERE id = %s AND status IN ('queued', 'running') RETURNING {_RUN_COLUMNS}",
                (status, self._store.now(), exit_code, output, error, run_id),
            )
            ended = build(ScriptRun, await cur.fetchone())
            if ended is None:
                return None, ()
            return ended, (await outbox(conn, ended) if outbox is not None else ())

    async def prune_runs(self, script_id: int, *, keep: int = RUNS_KEPT) -> None:
        """Forget all but the newest ``keep`` runs of a script."""
        await self._execute(
            "DELETE FROM script_runs WHERE script_id = %s AND status NOT IN ('queued', 'running') AND id <"
            " (SELECT id FROM script_runs WHERE script_id = %s ORDER BY id DESC OFFSET %s LIMIT 1)",
            (script_id, script_id, keep - 1),
        )
