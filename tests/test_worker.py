"""A worker is the services and procrastinate, without the web app (issue 21 item 5): tasks are
plain functions on a blueprint that reach the services through their job context."""

from __future__ import annotations

from collections.abc import Callable

from conftest import auth, running_bff
from sandbox_flows import connect_bank
from sync_helpers import customer

from bff import jobs
from bff.app import build_services
from bff.settings import Settings


async def test_a_worker_runs_jobs_with_the_services_only(settings_factory: Callable[..., Settings]) -> None:
    async with running_bff(settings_factory(sandbox_enabled=True, run_worker=False)) as web:
        token, _ = await customer(web)
        bank = await connect_bank(web.client, token)
        started = await web.client.post(f"/api/server/{bank['id']}/sync?wait=0.5", json={}, headers=auth(token))
        assert started.status_code == 202, started.text  # nothing here takes the job
        run_id = started.json()["run_data"][0]["pipeline_run_id"]

        context = build_services(settings_factory(sandbox_enabled=True, run_worker=True), migrate_on_start=False)
        assert not context.services.scripts.serving_api  # no web app was built for it
        async with context as worker:
            finished = await web.services.sync.wait_run(run_id, timeout=60)
            assert finished is not None and finished.status == "succeeded", finished
            assert finished.records == {"transactions": 200}
            # It takes scripts too, so its scripts were given the API routes (and only that).
            assert worker.scripts.serving_api
        status = (await web.client.get(f"/api/server/{bank['id']}/sync-status", headers=auth(token))).json()
        assert status == {"running": False, "pipeline_run_id": run_id, "status": "succeeded"}


async def test_tasks_are_plain_functions_and_old_job_names_still_run(
    settings_factory: Callable[..., Settings],
) -> None:
    async with running_bff(settings_factory(sandbox_enabled=True)) as bff:
        queue = bff.services.queue
        assert queue.app.tasks[jobs.SYNC_TASK].func is jobs.sync_run
        assert queue.app.tasks[jobs.TICK_TASK].func is jobs.scheduler_tick
        token, account_id = await customer(bff)
        bank = await connect_bank(bff.client, token)
        # A job queued by the previous release, under its old task name, before an upgrade.
        run = await bff.services.store.runs.create(bank["id"], account_id, task_id="old", tables=None)
        await queue.app.configure_task("bff.sync_run").defer_async(run_id=run.id)
        finished = await bff.services.sync.wait_run(run.id, timeout=60)
        assert finished is not None and finished.status == "succeeded", finished
