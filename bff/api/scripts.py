"""Scripts in a customer's account (DESIGN §14): ``/api/interface``.

``POST /api/interface`` (alias ``POST /interface``) ``{name, raw_code, schedule}`` → ``201``;
``GET /api/interface`` lists them; ``GET``/``PATCH``/``DELETE /api/interface/{id}``;
``POST /api/interface/{id}/run[?wait=N]``; ``GET /api/interface/{id}/runs`` (and one run by id);
``GET``/``PUT /api/interface/{id}/state`` (what ``pq.get_state``/``pq.set_state`` call).

Identity tokens only (the partner's back-end); the browser's integrate token gets ``403
token_not_allowed``. A script's own run token may read and write its own script's state and
nothing else here: scripts do not make, change or start scripts.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from ..auth import Caller, require_back_end, services
from ..contract.queries import WaitQuery
from ..contract.requests import ScriptChange, ScriptCreate, ScriptStateBody
from ..errors import ApiError, not_found, token_not_allowed
from ..http import api_route, parse_body, parse_query
from ..scripts.service import ScriptService, ScriptsUnavailable
from ..store import UNSET
from ..store.scripts import Script
from .paging import Pagination


def scripts(request: Request) -> ScriptService:
    return services(request).scripts


async def _caller(request: Request, *, own_state: bool = False) -> Caller:
    caller = await require_back_end(request, what="Scripts")
    run_id = caller.claims.script_run_id
    if run_id is not None:
        run = await scripts(request).run(run_id)
        allowed = own_state and run is not None and run.script_id == request.path_params.get("script_id")
        if not allowed:
            raise token_not_allowed("A script's token can read and save its own state only, not manage scripts.")
    return caller


async def _own_script(request: Request, caller: Caller) -> Script:
    assert caller.sub_account is not None
    raw = request.path_params["script_id"]
    script = await scripts(request).find(caller.sub_account.id, raw)
    if script is None:
        raise not_found("No such script.")
    return script


async def create_script(request: Request) -> JSONResponse:
    """Save a script; with a ``schedule`` (seconds, at least 60) it runs that often, the first time one period from now."""
    caller = await _caller(request)
    assert caller.sub_account is not None
    given = await parse_body(request, ScriptCreate)
    script = await scripts(request).create(caller.sub_account.id, given.name, given.raw_code, given.schedule)
    return JSONResponse(script.public_dict(), status_code=201)


async def list_scripts(request: Request) -> JSONResponse:
    caller = await _caller(request)
    assert caller.sub_account is not None
    page = Pagination(request)
    count, views = await scripts(request).page(caller.sub_account.id, offset=page.offset, limit=page.limit)
    return JSONResponse(page.envelope(count, views))


async def get_script(request: Request) -> JSONResponse:
    script = await _own_script(request, await _caller(request))
    return JSONResponse(await scripts(request).view(script))


async def update_script(request: Request) -> JSONResponse:
    """Change the name, code or schedule; a changed schedule counts from now."""
    script = await _own_script(request, await _caller(request))
    change = await parse_body(request, ScriptChange)
    changed = await scripts(request).change(
        script,
        name=change.name,
        raw_code=change.raw_code,
        schedule=change.schedule if "schedule" in change.model_fields_set else UNSET,
    )
    if changed is None:
        raise not_found("No such script.")
    return JSONResponse(await scripts(request).view(changed))


async def delete_script(request: Request) -> Response:
    """Delete a script with its runs and state; a run in progress is stopped (within a second)."""
    caller = await _caller(request)
    assert caller.sub_account is not None
    script = await _own_script(request, caller)
    await scripts(request).delete(caller.sub_account.id, script.id)
    return Response(status_code=204)


async def run_script(request: Request) -> JSONResponse:
    """Run a script now; ``?wait=N`` (N ≤ 120) answers ``200`` with the finished run, else ``202``."""
    script = await _own_script(request, await _caller(request))
    wait = parse_query(request, WaitQuery).wait
    service = scripts(request)
    try:
        run = await service.request_run(script)
    except ScriptsUnavailable as exc:
        raise ApiError(503, "scripts_unavailable", f"Scripts cannot run on this server: {exc.mode.reason}") from None
    except LookupError:
        raise not_found("No such script.") from None
    if wait is not None:
        finished = await service.wait_run(run.id, timeout=wait)
        if finished is None:
            raise not_found("The script was deleted while it ran.")
        if not finished.active:
            return JSONResponse(finished.public_dict(), status_code=200)
        run = finished
    return JSONResponse(run.public_dict(), status_code=202)


async def list_runs(request: Request) -> JSONResponse:
    """The script's runs, newest first: status, times, exit code, output (last 64 KB) and error."""
    script = await _own_script(request, await _caller(request))
    page = Pagination(request, default_size=20)
    count, runs = await scripts(request).runs(script.id, offset=page.offset, limit=page.limit)
    return JSONResponse(page.envelope(count, [run.public_dict() for run in runs]))


async def get_run(request: Request) -> JSONResponse:
    script = await _own_script(request, await _caller(request))
    run_id = request.path_params["run_id"]
    run = await scripts(request).run(run_id)
    if run is None or run.script_id != script.id:
        raise not_found("No such run.")
    return JSONResponse(run.public_dict())


async def get_state(request: Request) -> JSONResponse:
    script = await _own_script(request, await _caller(request, own_state=True))
    return JSONResponse({"state": await scripts(request).state(script.id)})


async def put_state(request: Request) -> JSONResponse:
    """``{"state": <any JSON>}``, at most 1 MB; kept for the script's next runs."""
    script = await _own_script(request, await _caller(request, own_state=True))
    state = (await parse_body(request, ScriptStateBody)).state
    await scripts(request).save_state(script.id, state)
    return JSONResponse({"state": state})


def routes() -> list[BaseRoute]:
    return [
        *api_route("/api/interface", create_script, methods=["POST"]),
        *api_route("/interface", create_script, methods=["POST"], name="create_script_alias"),
        *api_route("/api/interface", list_scripts, methods=["GET"]),
        *api_route("/api/interface/{script_id:int}", get_script, methods=["GET"]),
        *api_route("/api/interface/{script_id:int}", update_script, methods=["PATCH"], name="update_script"),
        *api_route("/api/interface/{script_id:int}", delete_script, methods=["DELETE"], name="delete_script"),
        *api_route("/api/interface/{script_id:int}/run", run_script, methods=["POST"]),
        *api_route("/api/interface/{script_id:int}/runs", list_runs, methods=["GET"]),
        *api_route("/api/interface/{script_id:int}/runs/{run_id:int}", get_run, methods=["GET"]),
        *api_route("/api/interface/{script_id:int}/state", get_state, methods=["GET"]),
        *api_route("/api/interface/{script_id:int}/state", put_state, methods=["PUT"], name="put_state"),
    ]
