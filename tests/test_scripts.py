"""Scripts (DESIGN §14), adversarial first: each hostile script ends in a failed run with a clear
error while the BFF keeps serving and other customers' runs go on. These run for real in
bubblewrap (`.ci/run` installs it)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import BFF, auth, running_bff
from records_helpers import Customer, crm, customer
from scripts_helpers import add_script, processes_of, run_code, run_script, running_as_root, wait_status

from bff.jobs import SCRIPT_TASK
from bff.scripts.sandbox import run_user
from bff.settings import Settings


@pytest.fixture
async def sbff(settings_factory: Callable[..., Settings]) -> AsyncIterator[BFF]:
    settings = settings_factory(sandbox_enabled=True, script_cpu_seconds=3, script_timeout_seconds=30)
    async with running_bff(settings) as instance:
        yield instance


@pytest.fixture
async def who(sbff: BFF) -> Customer:
    return await customer(sbff, "cust-a")


@pytest.fixture
async def other(sbff: BFF) -> Customer:
    return await customer(sbff, "cust-b")


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that accepts connections (stands for the BFF's own port)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    accepted: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    done.set()
    thread.join(2)
    server.close()
    assert not accepted, "a script reached a TCP port on the host"


# -- adversarial ----------------------------------------------------------------------------------


async def test_a_script_cannot_read_the_data_dir(sbff: BFF, who: Customer) -> None:
    data_dir = sbff.services.settings.data_dir
    assert data_dir.exists()
    run = await run_code(sbff, who, f"import os\nprint(os.listdir({str(data_dir)!r}))")
    assert run["status"] == "failed"
    assert run["error"].startswith("The script raised FileNotFoundError: [Errno 2] No such file or directory")
    assert str(data_dir) in run["error"]
    # The keys `bff demo` keeps there, and the embedded PostgreSQL's socket directory.
    (data_dir / "demo-keys.json").write_text('{"secret_keys": "not for scripts"}')
    for path in (data_dir / "demo-keys.json", data_dir / "postgres"):
        run = await run_code(sbff, who, f"print(open({str(path)!r}).read())")
        assert run["status"] == "failed" and run["error"].startswith("The script raised FileNotFoundError"), run
        assert "not for scripts" not in run["output"]


async def test_a_script_sees_no_secret_in_any_environment(sbff: BFF, who: Customer) -> None:
    """Its own environment, and pid 1's (its sandbox's init: the BFF is in another pid namespace)."""
    keys = [key.reveal() for key in sbff.services.settings.secret_keys]
    encryption_key = sbff.services.settings.encryption_key.reveal()
    code = (
        "import os\n"
        "print(sorted(os.environ))\n"
        "print(open('/proc/1/cmdline','rb').read())\n"
        "leaked = open('/proc/1/environ','rb').read()\n"
        "print(leaked)\n"
        "raise SystemExit('BFF_' in leaked.decode() and 'leaked')\n"
    )
    run = await run_code(sbff, who, code)
    assert "BFF_" not in run["output"].split("\n")[0]
    for secret in [*keys, encryption_key]:
        assert secret not in run["output"]
    assert "leaked" != run["error"]
    # and the BFF's keys on disk (in the data dir) are not there to read
    run = await run_code(sbff, who, "print(open('/proc/self/mountinfo').read())")
    assert str(sbff.services.settings.data_dir) not in run["output"]


async def test_no_network_not_even_the_bffs_port(sbff: BFF, who: Customer, listener: int) -> None:
    for host, port in (("127.0.0.1", listener), ("1.1.1.1", 443)):
        code = f"import socket\nsocket.create_connection(({host!r}, {port}), timeout=3)"
        run = await run_code(sbff, who, code)
        assert run["status"] == "failed", run
        assert "Network is unreachable" in run["error"] or "Connection refused" in run["error"], run["error"]


async def test_a_fork_bomb_fails_and_another_customers_run_goes_on(sbff: BFF, who: Customer, other: Customer) -> None:
    bomb = await add_script(sbff, who, "import os\nwhile True:\n    os.fork()\n", name="bomb")
    started = await sbff.client.post(f"/api/interface/{bomb}/run", headers=who.headers)
    assert started.status_code == 202
    calm = await run_code(sbff, other, "print(pq.get_state())")
    assert calm["status"] == "succeeded" and calm["output"] == "None\n"
    run = await wait_status(sbff, who, bomb, "failed", timeout=40)
    assert run["error"] == (
        "Stopped: the script tried to start more processes than it may (a run may have at most 64 processes at once)."
    ), run["error"]
    assert (await sbff.client.get("/healthz")).status_code == 200
    if running_as_root():  # its pid namespace goes with it: every forked process is killed
        await _no_processes_left(run_user(run["id"]))


async def test_allocating_two_gigabytes_fails(sbff: BFF, who: Customer) -> None:
    run = await run_code(sbff, who, "blob = bytearray(2 * 1024 ** 3)\nprint('allocated')")
    assert run["status"] == "failed"
    assert run["error"] == "Stopped: the script ran out of memory (a run may use 512 MB, all its processes together)."
    assert "allocated" not in run["output"]


async def test_a_busy_loop_is_stopped_by_the_cpu_limit(sbff: BFF, who: Customer, other: Customer) -> None:
    loop = await add_script(sbff, who, "while True:\n    pass\n", name="spin")
    assert (await sbff.client.post(f"/api/interface/{loop}/run", headers=who.headers)).status_code == 202
    calm = await run_code(sbff, other, "print('still here')")
    assert calm["status"] == "succeeded" and calm["output"] == "still here\n"
    run = await wait_status(sbff, who, loop, "failed", timeout=40)
    assert run["error"] == "Stopped: the script used its 3 s of CPU time."


async def test_printing_100_mb_is_stopped_at_the_output_limit(sbff: BFF, who: Customer) -> None:
    code = "import sys\nchunk = 'x' * 1_000_000 + '\\n'\nfor i in range(100):\n    sys.stdout.write(chunk)\n"
    run = await run_code(sbff, who, code)
    assert run["status"] == "failed"
    assert run["error"].startswith("Stopped: the script printed more than 1048576 bytes")
    assert len(run["output"].encode()) <= 64 * 1024 + 100  # the last 64 KB, with a note of what was dropped
    assert run["output"].startswith("[… ")


async def test_pq_cannot_reach_another_customers_connection_or_schema(
    sbff: BFF, who: Customer, other: Customer
) -> None:
    theirs = await crm(sbff, other)
    synced = await sbff.client.post(f"/api/server/{theirs}/sync?wait=60", headers=other.headers)
    assert synced.status_code == 200, synced.text
    database = await sbff.services.warehouse.database_of(other.account_id)
    assert database
    run = await run_code(sbff, who, f"pq.connect({theirs})")
    assert run["status"] == "failed"
    assert (
        run["error"]
        == f"The script raised bff.client.BFFError: 404 connection_not_found: No connection called {theirs}."
    )
    run = await run_code(sbff, who, "pq.connect('Sandbox CRM')")
    assert (
        run["error"]
        == "The script raised bff.client.BFFError: 404 connection_not_found: No connection called 'Sandbox CRM'."
    )
    tables = [t async for t in _tables(sbff, other) if t["name"] == "contacts"]
    sql_name = tables[0]["sql_name"]
    run = await run_code(sbff, who, f"pq.dbconnect(pq.DW_NAME).execute('SELECT * FROM {database}.{sql_name}')")
    assert run["status"] == "failed"
    assert "cross-database references are not implemented" in run["error"], run["error"]
    # Straight at the API with its token: another customer's connection is not there.
    code = f"print(pq.api()._client.get('/api/server/{theirs}', headers={{'Authorization': 'Bearer ' + pq.api()._token}}).status_code)"
    run = await run_code(sbff, who, code)
    assert run["output"] == "404\n"


async def _no_processes_left(uid: int, timeout: float = 5) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while processes_of(uid):
        assert asyncio.get_running_loop().time() < deadline, f"processes of uid {uid} outlived their run"
        await asyncio.sleep(0.1)


async def _tables(bff: BFF, who: Customer) -> AsyncIterator[dict[str, object]]:
    database = (await bff.client.get("/api/applications/", headers=who.headers)).json()["results"][0]
    for table in database["tables"]:
        yield table


async def test_a_run_token_dies_with_its_run_and_cannot_manage_scripts(sbff: BFF, who: Customer) -> None:
    code = (
        "from bff.client import _Call\n"
        "api = pq.api()\n"
        "pq.set_state({'token': api._token})\n"
        "try:\n"
        "    api._do(_Call('POST', '/api/interface', json={'name': 'x', 'raw_code': 'pass'}))\n"
        "except pq.BFFError as exc:\n"
        "    print(exc.code)\n"
    )
    script = await add_script(sbff, who, code)
    run = await run_script(sbff, who, script)
    assert run["status"] == "succeeded", run
    assert run["output"] == "token_not_allowed\n"
    state = (await sbff.client.get(f"/api/interface/{script}/state", headers=who.headers)).json()["state"]
    after = await sbff.client.get("/api/applications/", headers=auth(state["token"]))
    assert after.status_code == 401 and after.json()["code"] == "token_expired"
    assert "script run has ended" in after.json()["detail"]


# -- what scripts are for -----------------------------------------------------------------------------


async def test_the_writeback_documents_flow(sbff: BFF, who: Customer) -> None:
    """Add a contact with pq.connect, refresh the connection and wait, then read it from the warehouse."""
    await crm(sbff, who)
    code = (
        "crm = pq.connect('Sandbox CRM')\n"
        "added = crm.add('contact', {'email': 'ada.lovelace@example.com', 'first_name': 'Ada', 'last_name': 'Lovelace'})\n"
        "run = pq.refresh_connection(connection_name='Sandbox CRM', is_async=False)\n"
        "print(run['status'])\n"
        "dbconn = pq.dbconnect(pq.DW_NAME)\n"
        "rows = dbconn.fetch(pq.DW_NAME, 'Sandbox CRM', 'contacts')\n"
        "mine = [r for r in rows if r['email'] == 'ada.lovelace@example.com']\n"
        "print(len(rows), len(mine), mine[0]['id'] == added['id'])\n"
        'print(dbconn.execute("SELECT count(*) AS n FROM " + '
        "[t for t in pq.api().tables(pq.api().database_id()) if t['name'] == 'contacts'][0]['sql_name'])[0]['n'])\n"
    )
    run = await run_code(sbff, who, code, wait=90)
    assert run["status"] == "succeeded", run
    status, counts, total = run["output"].splitlines()
    assert status == "succeeded"
    assert counts == "1251 1 True"
    assert total == "1251"


async def test_the_loop_of_the_writeback_document(sbff: BFF, who: Customer) -> None:
    """for row in rows: crm.update(...) — the README's example."""
    await crm(sbff, who)
    code = (
        "crm = pq.connect('Sandbox CRM')\n"
        "pq.refresh_connection(connection_name='Sandbox CRM', is_async=False)\n"
        "rows = pq.dbconnect(pq.DW_NAME).fetch(pq.DW_NAME, 'Sandbox CRM', 'contacts', limit=3)\n"
        "for row in rows:\n"
        "    crm.update('contact', id=row['id'], company='Analytical Engines')\n"
        "print([crm.get('contact', r['id'])['record']['company'] for r in rows])\n"
    )
    run = await run_code(sbff, who, code, wait=90)
    assert run["status"] == "succeeded", run
    assert run["output"] == "['Analytical Engines', 'Analytical Engines', 'Analytical Engines']\n"


async def test_state_survives_between_runs(sbff: BFF, who: Customer) -> None:
    code = "state = pq.get_state() or {'runs': 0}\nstate['runs'] += 1\npq.set_state(state)\nprint(state['runs'])\n"
    script = await add_script(sbff, who, code)
    outputs = [(await run_script(sbff, who, script))["output"] for _ in range(3)]
    assert outputs == ["1\n", "2\n", "3\n"]
    # Only the newest runs are kept (100 by default).
    await sbff.services.scripts.table.prune_runs(script, keep=2)
    runs = (await sbff.client.get(f"/api/interface/{script}/runs", headers=who.headers)).json()
    assert [r["output"] for r in runs["results"]] == ["3\n", "2\n"] and runs["count"] == 2
    too_big = await run_code(sbff, who, "pq.set_state('x' * (1024 * 1024 + 1))")
    assert too_big["error"].startswith("The script raised ValueError: The state is 1048579 bytes as JSON")


async def test_output_exit_codes_and_errors(sbff: BFF, who: Customer) -> None:
    run = await run_code(sbff, who, "print('to stdout')\nimport sys\nprint('to stderr', file=sys.stderr)\n")
    assert run["status"] == "succeeded" and run["exit_code"] == 0 and run["error"] is None
    assert run["output"] == "to stdout\nto stderr\n"
    run = await run_code(sbff, who, "def f():\n    return 1 / 0\nf()\n")
    assert run["status"] == "failed" and run["exit_code"] == 1
    assert run["error"] == "The script raised ZeroDivisionError: division by zero"
    assert 'File "<script test>", line 2, in f' in run["output"] and "runner.py" not in run["output"]
    run = await run_code(sbff, who, "raise SystemExit(3)")
    assert run["exit_code"] == 3 and run["error"] == "The script exited with code 3."
    assert set(run) == {
        "id", "script_id", "status", "trigger", "created_at", "started_at", "finished_at", "exit_code", "output", "error"
    }  # fmt: skip


async def test_deleting_a_running_script_stops_it(sbff: BFF, who: Customer) -> None:
    script = await add_script(sbff, who, "import time\nprint('started', flush=True)\ntime.sleep(120)\n")
    assert (await sbff.client.post(f"/api/interface/{script}/run", headers=who.headers)).status_code == 202
    run = await wait_status(sbff, who, script, "running")
    await asyncio.sleep(0.5)
    assert (await sbff.client.delete(f"/api/interface/{script}", headers=who.headers)).status_code == 204
    assert (await sbff.client.get(f"/api/interface/{script}", headers=who.headers)).status_code == 404
    if running_as_root():
        await _no_processes_left(run_user(run["id"]))
    assert await sbff.services.scripts.table.get_run(run["id"]) is None


async def test_never_two_runs_of_one_script(sbff: BFF, who: Customer) -> None:
    script = await add_script(sbff, who, "import time\ntime.sleep(2)\n")
    first = await sbff.client.post(f"/api/interface/{script}/run", headers=who.headers)
    assert first.status_code == 202
    second = await sbff.client.post(f"/api/interface/{script}/run", headers=who.headers)
    assert second.status_code == 409
    assert second.json()["code"] == "script_already_running" and second.json()["run_id"] == first.json()["id"]
    await wait_status(sbff, who, script, "succeeded")
    assert (await sbff.client.post(f"/api/interface/{script}/run?wait=30", headers=who.headers)).status_code == 200


# -- the API --------------------------------------------------------------------------------------


async def test_a_page_of_scripts_reads_the_last_runs_in_one_query(
    sbff: BFF, who: Customer, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran = await add_script(sbff, who, "print(1)", name="ran")
    idle = await add_script(sbff, who, "print(2)", name="idle")
    assert (await run_script(sbff, who, ran))["status"] == "succeeded"
    table = sbff.services.scripts.table
    calls: list[list[int]] = []
    batched = table.last_runs

    async def one_query(script_ids: list[int]) -> object:
        calls.append(list(script_ids))
        return await batched(script_ids)

    async def per_script(script_id: int) -> None:
        raise AssertionError("one last_run query per script")

    monkeypatch.setattr(table, "last_runs", one_query)
    monkeypatch.setattr(table, "last_run", per_script)
    listed = (await sbff.client.get("/api/interface", headers=who.headers)).json()["results"]
    assert calls == [[ran, idle]]
    assert [(s["id"], s["last_run"]["status"] if s["last_run"] else None) for s in listed] == [
        (ran, "succeeded"),
        (idle, None),
    ]


async def test_crud_validation_and_tenancy(sbff: BFF, who: Customer, other: Customer) -> None:
    created = await sbff.client.post(
        "/interface", json={"name": " nightly ", "raw_code": "print(1)", "schedule": 3600}, headers=who.headers
    )
    assert created.status_code == 201
    body = created.json()
    assert body["name"] == "nightly" and body["schedule"] == 3600 and body["next_run_at"] and body["last_run"] is None
    sid = body["id"]
    listed = (await sbff.client.get("/api/interface", headers=who.headers)).json()
    assert [s["id"] for s in listed["results"]] == [sid]
    assert (await sbff.client.get("/api/interface", headers=other.headers)).json()["results"] == []
    for method in ("GET", "PATCH", "DELETE"):
        response = await sbff.client.request(method, f"/api/interface/{sid}", json={}, headers=other.headers)
        assert response.status_code == 404, method
    assert (await sbff.client.post(f"/api/interface/{sid}/run", headers=other.headers)).status_code == 404
    patched = await sbff.client.patch(f"/api/interface/{sid}", json={"schedule": None}, headers=who.headers)
    assert patched.json()["schedule"] is None and patched.json()["next_run_at"] is None

    bad = await sbff.client.post(
        "/api/interface", json={"name": "x", "raw_code": "print(1)\nif True\n    pass\n"}, headers=who.headers
    )
    assert bad.status_code == 400 and bad.json()["code"] == "validation_error"
    assert bad.json()["errors"]["raw_code"] == "The code does not compile: Line 2: expected ':'."
    for schedule in (59, 0, -5, 1.5, "hourly", True):
        bad = await sbff.client.post(
            "/api/interface", json={"name": "x", "raw_code": "pass", "schedule": schedule}, headers=who.headers
        )
        assert bad.status_code == 400 and "schedule" in bad.json()["errors"], schedule
    bad = await sbff.client.post("/api/interface", json={"raw_code": "pass", "extra": 1}, headers=who.headers)
    assert set(bad.json()["errors"]) == {"name", "extra", "schedule"} or set(bad.json()["errors"]) >= {"name", "extra"}

    integrate = auth(who.integrate)
    refused = await sbff.client.post("/api/interface", json={"name": "x", "raw_code": "pass"}, headers=integrate)
    assert refused.status_code == 403 and refused.json()["code"] == "token_not_allowed"
    assert (await sbff.client.get("/api/interface", headers=integrate)).status_code == 403


async def test_a_scheduled_script_runs_on_the_scheduler_tick(settings_factory: Callable[..., Settings]) -> None:
    from conftest import FakeClock

    clock = FakeClock()
    # A hang anywhere below fails with the await it hung on (seen once under heavy load).
    async with asyncio.timeout(90), running_bff(settings_factory(sandbox_enabled=True), clock=clock) as bff:
        who = await customer(bff, "cust-s")
        script = await add_script(bff, who, "print('tick')", schedule=300)
        scripts = bff.services.scripts
        assert await scripts.tick() == []
        clock.advance(299)
        assert await scripts.tick() == []
        clock.advance(2)
        queued = await scripts.tick()
        assert [run.script_id for run in queued] == [script] and queued[0].trigger == "schedule"
        assert await scripts.tick() == []  # claimed: the next one is 300 s on
        run = await wait_status(bff, who, script, "succeeded")
        assert run["output"] == "tick\n" and run["trigger"] == "schedule"
        clock.advance(300)
        assert len(await scripts.tick()) == 1


async def test_a_finished_run_sends_a_script_finished_webhook(sbff: BFF, who: Customer) -> None:
    partner_token = await _listening_to_script_finished(sbff, who)
    run = await run_code(sbff, who, "print('done')")
    # The event follows the run's final status (webhooks are asynchronous): wait for it.
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        events = await _script_finished_deliveries(sbff, partner_token)
        if events or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    assert len(events) == 1
    data = events[0]["payload"]["data"]
    assert data["run_id"] == run["id"] and data["status"] == "succeeded" and data["external_id"] == "cust-a"


async def test_a_script_runs_end_and_its_webhook_event_are_one_transaction(
    sbff: BFF, who: Customer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The script.finished delivery is written in the transaction that ends the run: when writing
    it fails, the run has not ended either; once the end is committed, so is the event (once)."""
    partner_token = await _listening_to_script_finished(sbff, who)
    scripts = sbff.services.scripts
    script = await scripts.table.get_by_id(await add_script(sbff, who, "print(1)"))
    run = await scripts.table.create_run(script, "api")  # queued, never picked up in this test

    async def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the process stopped while writing the event")

    monkeypatch.setattr(sbff.services.webhooks.table, "create_delivery", crash)
    with pytest.raises(RuntimeError):
        await scripts.recover_stalled(run.id)  # ends the run as failed, with its event
    monkeypatch.undo()
    assert await scripts.table.run_status(run.id) == "queued"
    assert await _script_finished_deliveries(sbff, partner_token) == []
    await scripts.recover_stalled(run.id)
    await scripts.recover_stalled(run.id)  # already ended: no second event
    assert await scripts.table.run_status(run.id) == "failed"
    events = await _script_finished_deliveries(sbff, partner_token)
    assert len(events) == 1 and events[0]["payload"]["data"]["run_id"] == run.id


async def _listening_to_script_finished(bff: BFF, who: Customer) -> str:
    """The customer's partner's webhook, set to hear script.finished; the partner's token."""
    partner_token = await _partner_token_of(bff, who)
    put = await bff.client.put(
        "/api/partner/webhook",
        json={"url": "https://hooks.example.com/bff", "events": ["script.finished"]},
        headers=auth(partner_token),
    )
    assert put.status_code in (200, 201), put.text
    return partner_token


async def _script_finished_deliveries(bff: BFF, partner_token: str) -> list[dict[str, Any]]:
    deliveries = (await bff.client.get("/api/partner/webhook/deliveries", headers=auth(partner_token))).json()
    return [d for d in deliveries["results"] if d["type"] == "script.finished"]


async def _partner_token_of(bff: BFF, who: Customer) -> str:
    account = await bff.services.store.sub_accounts.get_by_id(who.account_id)
    partner = await bff.services.store.partners.get(account.partner_id)
    return str(bff.services.tokens.mint_partner_token(partner_id=partner.id, generation=partner.token_generation).token)


async def test_without_bubblewrap_scripts_do_not_run(
    settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    from bff.scripts import sandbox

    monkeypatch.setattr(sandbox, "find_bwrap", lambda: None)
    async with running_bff(settings_factory()) as bff:
        who = await customer(bff, "cust-n")
        script = await add_script(bff, who, "print(1)")
        refused = await bff.client.post(f"/api/interface/{script}/run", headers=who.headers)
        assert refused.status_code == 503 and refused.json()["code"] == "scripts_unavailable"
        assert "BFF_SCRIPTS=unsandboxed" in refused.json()["detail"]
    with pytest.raises(sandbox.ScriptModeError, match="bubblewrap"):
        sandbox.resolve_mode("sandboxed")


async def test_unsandboxed_mode_runs_scripts_when_the_operator_asks(
    settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    from bff.scripts import sandbox

    monkeypatch.setattr(sandbox, "find_bwrap", lambda: None)
    async with running_bff(settings_factory(scripts="unsandboxed")) as bff:
        who = await customer(bff, "cust-u")
        run = await run_code(bff, who, "import os\nprint(sorted(k for k in os.environ if k.startswith('BFF')))")
        assert run["status"] == "succeeded" and run["output"] == "[]\n"


async def test_a_run_whose_worker_died_is_marked_failed(sbff: BFF, who: Customer) -> None:
    scripts = sbff.services.scripts
    script = await scripts.table.get(who.account_id, await add_script(sbff, who, "pass"))
    run = await scripts.table.create_run(script, "api")
    await scripts.table.start_run(run.id)
    await scripts.recover_stalled(run.id)
    failed = await scripts.table.get_run(run.id)
    assert failed.status == "failed" and failed.error == "The worker running this script stopped; run it again."


def test_scripts_never_bind_the_data_dir(tmp_path: Path) -> None:
    from bff.scripts.sandbox import bwrap_command

    argv = bwrap_command("/usr/bin/bwrap", socket_path="/tmp/x.sock", hidden=[tmp_path])
    assert str(tmp_path) not in argv
    assert "--unshare-all" in argv and "--share-net" not in argv and "--clearenv" in argv


async def test_a_script_job_of_a_dead_worker_fails_its_run_instead_of_running_again(
    settings_factory: Callable[..., Settings],
) -> None:
    """The watchdog finds a script job whose worker stopped sending heartbeats: the run is failed, not re-run."""
    async with running_bff(settings_factory(run_worker=False)) as bff:  # nothing here takes the job
        who = await customer(bff, "cust-w")
        script_id = await add_script(bff, who, "print('once')")
        started = await bff.client.post(f"/api/interface/{script_id}/run", headers=who.headers)
        assert started.status_code == 202
        run_id = started.json()["id"]
        services = bff.services
        assert await services.scripts.table.start_run(run_id) is not None  # as a worker would
        async with services.store.connection() as conn:
            cur = await conn.execute(
                "INSERT INTO procrastinate_workers (last_heartbeat) VALUES (now() - interval '1 hour') RETURNING id"
            )
            dead_worker = (await cur.fetchone())["id"]
            await conn.execute(
                "UPDATE procrastinate_jobs SET status = 'doing', worker_id = %s WHERE task_name = %s",
                (dead_worker, SCRIPT_TASK),
            )
        await services.queue.requeue_stalled()
        run = (await bff.client.get(f"/api/interface/{script_id}/runs/{run_id}", headers=who.headers)).json()
        assert run["status"] == "failed" and run["error"] == "The worker running this script stopped; run it again."
        async with services.store.connection() as conn:
            cur = await conn.execute("SELECT status FROM procrastinate_jobs WHERE task_name = %s", (SCRIPT_TASK,))
            assert [r["status"] for r in await cur.fetchall()] == ["failed"]
        # and the script can run again
        again = await bff.client.post(f"/api/interface/{script_id}/run", headers=who.headers)
        assert again.status_code == 202


async def test_a_sandbox_that_cannot_be_set_up_says_so(sbff: BFF, who: Customer, data_dir_outside_pytest: Path) -> None:
    """bubblewrap refusing (user namespaces turned off, say) is not blamed on the script."""
    from bff.scripts.sandbox import Mode

    data_dir_outside_pytest.chmod(0o755)  # the run's own user starts it
    fake = data_dir_outside_pytest / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n")
    fake.chmod(0o755)
    sbff.services.scripts.mode = Mode("sandboxed", bwrap=str(fake))
    run = await run_code(sbff, who, "print('never')")
    assert run["status"] == "failed"
    assert run["error"] == (
        "The sandbox could not be set up (bwrap: setting up uid map: Permission denied); the script did not run."
    )


@pytest.mark.parametrize("after", [0.0, 0.3], ids=["while-starting", "while-running"])
async def test_a_worker_shutting_down_fails_the_run_it_was_running(sbff: BFF, who: Customer, after: float) -> None:
    script = await add_script(sbff, who, "import time\ntime.sleep(120)\n")
    assert (await sbff.client.post(f"/api/interface/{script}/run", headers=who.headers)).status_code == 202
    run = await wait_status(sbff, who, script, "running")
    await asyncio.sleep(after)  # the stop lands while the sandbox starts, or once the script runs
    await sbff.services.queue.stop_worker()  # what Ctrl-C / SIGTERM does to `bff worker`
    stopped = (await sbff.client.get(f"/api/interface/{script}/runs/{run['id']}", headers=who.headers)).json()
    assert stopped["status"] == "failed"
    assert stopped["error"] == "The worker was stopped while the script ran; run it again.", stopped
    if running_as_root():
        await _no_processes_left(run_user(run["id"]))
