"""The public (API) shapes of the store's rows: what a response shows of a run, a log line or a sub-account.
The store returns rows; how they look on the wire is decided here, once."""

from __future__ import annotations

from typing import Any

from .store import HealthChange, LogLine, Run, SubAccount, iso
from .store.scripts import Script, ScriptRun


def run_dict(run: Run) -> dict[str, Any]:
    return {
        "id": run.id,
        "pipeline_run_id": run.id,
        "task_id": run.task_id,
        "status": run.status,
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
        "resume_at": iso(run.resume_at),
        "records": run.records,
        "tables": run.tables,
        "categories": run.categories,
        "error": run.error,
        "full": run.full_sync,
        "trigger": run.trigger,
    }


def sub_account_dict(account: SubAccount) -> dict[str, Any]:
    return {
        "id": account.id,
        "external_id": account.external_id,
        "first_name": account.first_name,
        "last_name": account.last_name,
        "email": account.email,
        "language": account.language,
        "company_name": account.company_name,
        "created_at": iso(account.created_at),
    }


def log_dict(line: LogLine) -> dict[str, Any]:
    return {"ts": iso(line.ts), "level": line.level, "message": line.message, "pipeline_run_id": line.run_id}


def health_event_data(change: HealthChange) -> dict[str, Any]:
    """A ``connection.health_changed`` webhook's data (before the connection's and account's)."""
    return {"server_id": change.connection_id, "from": change.old, "to": change.new, "detail": change.detail}


def script_event_data(script: Script, run: ScriptRun) -> dict[str, Any]:
    """A ``script.finished`` webhook's data (before the account's)."""
    return {
        "script_id": script.id,
        "name": script.name,
        "run_id": run.id,
        "status": run.status,
        "exit_code": run.exit_code,
        "error": run.error,
        "trigger": run.trigger,
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
    }


def run_event_data(run: Run) -> dict[str, Any]:
    """A ``sync.finished`` webhook's data (before the connection's and account's)."""
    return {
        "server_id": run.connection_id,
        "pipeline_run_id": run.id,
        "status": run.status,
        "records": run.records,
        "error": run.error,
        "full": run.full_sync,
        "trigger": run.trigger,
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
    }
