"""What the source documents' scripts call beyond the basics (issue 23): ``st``, ``run_pipeline``,
``get_pipeline_runs``, ``fetch``/``execute`` with ``query=``, ``set_table_frequency``, ``pytz`` and
``dateutil``, and more packages by BFF_SCRIPT_PACKAGES. Run for real in the sandbox."""

from __future__ import annotations

import shutil
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from conftest import BFF, running_bff
from records_helpers import Customer, accounting, crm, customer
from scripts_helpers import run_code
from sync_helpers import tables

from bff.app import StartupError
from bff.settings import Settings

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")


@pytest.fixture
async def sbff(settings_factory: Callable[..., Settings]) -> AsyncIterator[BFF]:
    async with running_bff(settings_factory(sandbox_enabled=True, script_timeout_seconds=60)) as instance:
        yield instance


@pytest.fixture
async def who(sbff: BFF) -> Customer:
    return await customer(sbff, "cust-seeds")


async def test_st_writes_lines_of_output(sbff: BFF, who: Customer) -> None:
    code = textwrap.dedent(
        """
        st.write("Deleting %s records." % 2)
        st.write("a", 1, {"b": 2})
        st.text("plain")
        st.json({"ok": True})
        st.table([{"id": 1, "name": "Ada"}, {"id": 22, "name": "Bo"}])
        """
    )
    run = await run_code(sbff, who, code)
    assert run["status"] == "succeeded", run
    assert run["output"] == (
        'Deleting 2 records.\na 1 {"b": 2}\nplain\n{\n  "ok": true\n}\nid  name\n1   Ada\n22  Bo\n'
    )


async def test_run_pipeline_and_its_runs_as_the_documents_call_them(sbff: BFF, who: Customer) -> None:
    await crm(sbff, who)
    code = textwrap.dedent(
        """
        result = pq.run_pipeline(connection_name="Sandbox CRM", is_async=False, tables="deals")
        details = pq.get_pipeline_runs(connection_name="Sandbox CRM", run_id=result["run_id"])
        status = details["data"][0]["status"]
        st.write(status, details["data"][0]["id"] == result["run_id"], details["data"][0]["tables"])
        queued = pq.run_pipeline(connection_name="Sandbox CRM", tables=["contacts"])
        st.write(type(queued["run_id"]).__name__)
        try:
            pq.run_pipeline(connection_name="Sandbox CRM", is_async=False, categories="101")
        except pq.BFFError as exc:
            st.write(exc.code)
        """
    )
    run = await run_code(sbff, who, code)
    assert run["status"] == "succeeded", (run["error"], run["output"])
    assert run["output"] == 'succeeded True ["deals"]\nint\ncategories_not_supported\n'


async def test_run_pipeline_with_categories_syncs_those_divisions(sbff: BFF, who: Customer) -> None:
    connection = await accounting(sbff, who)
    code = textwrap.dedent(
        """
        division = 102
        result = pq.run_pipeline(connection_name="Sandbox Accounting", is_async=False, categories=str(division))
        details = pq.get_pipeline_runs(connection_name="Sandbox Accounting", run_id=result["run_id"])
        st.write(details["data"][0]["status"], details["data"][0]["categories"], result["records"]["invoices"])
        """
    )
    run = await run_code(sbff, who, code)
    assert run["status"] == "succeeded", (run["error"], run["output"])
    assert run["output"] == 'succeeded ["102"] 500\n'
    runs = (await sbff.client.get(f"/api/server/{connection}/runs", headers=who.headers)).json()["results"]
    assert [r["categories"] for r in runs] == [["102"]]


async def test_fetch_and_execute_with_query(sbff: BFF, who: Customer) -> None:
    connection = await crm(sbff, who)
    synced = await sbff.client.post(f"/api/server/{connection}/sync?wait=60", json={}, headers=who.headers)
    if synced.status_code == 409:  # its first sync, started when it connected, is still going
        await sbff.services.sync.wait(connection)
    code = textwrap.dedent(
        """
        dbconn = pq.dbconnect(pq.DW_NAME)
        tables = {t["name"]: t["sql_name"] for t in pq.api().tables(pq.api().database_id())}
        rows = dbconn.fetch(pq.DW_NAME, query=f"SELECT count(*) AS n FROM {tables['contacts']}")
        st.write(rows)
        result = dbconn.execute(pq.DW_NAME, query="SELECT 1 AS one")
        st.write(result["status"], result["rowcount"], result["rows"])
        deleted = dbconn.execute(pq.DW_NAME, query=f"DELETE FROM {tables['contacts']} WHERE id IN ('c_0001', 'c_0002')")
        st.write(deleted["status"], deleted["rowcount"])
        refused = dbconn.execute(pq.DW_NAME, query=f"ALTER TABLE {tables['contacts']} ADD COLUMN mine int")
        st.write(refused["status"].startswith("error: "), refused["rowcount"])
        st.write(len(dbconn.execute("SELECT 1")))
        """
    )
    run = await run_code(sbff, who, code)
    assert run["status"] == "succeeded", (run["error"], run["output"])
    lines = run["output"].splitlines()
    assert lines[0] == '[{"n": 1250}]'
    assert lines[1] == 'ok 1 [{"one": 1}]'
    assert lines[2] == "ok 2"  # DML in the customer's own database (the seeds' clean-up scripts)
    assert lines[3] == "True 0"  # the synced tables' DDL stays the BFF's
    assert lines[4] == "1"
    assert (await tables(sbff.client, who.identity))["contacts"]["row_count"] == 1248


async def test_set_table_frequency(sbff: BFF, who: Customer) -> None:
    connection = await crm(sbff, who)
    code = textwrap.dedent(
        """
        pq.set_table_frequency("Sandbox CRM", "deals", 3600)
        after = pq.set_table_frequency("Sandbox CRM", "contacts", 7200)
        st.write(after["table_frequencies"])
        st.write(pq.set_table_frequency("Sandbox CRM", "deals", None)["table_frequencies"])
        """
    )
    run = await run_code(sbff, who, code)
    assert run["status"] == "succeeded", run
    assert run["output"] == '{"deals": 3600, "contacts": 7200}\n{"contacts": 7200}\n'
    shown = (await sbff.client.get(f"/api/server/{connection}", headers=who.headers)).json()
    assert shown["table_frequencies"] == {"contacts": 7200}


async def test_pytz_and_dateutil_import_in_the_sandbox(sbff: BFF, who: Customer) -> None:
    code = textwrap.dedent(
        """
        import datetime, pytz
        from dateutil import parser, relativedelta
        ts = datetime.datetime.now(pytz.timezone('Europe/Brussels'))
        st.write(ts.tzinfo.zone, parser.parse("2026-01-31") + relativedelta.relativedelta(months=1))
        """
    )
    run = await run_code(sbff, who, code)
    assert run["status"] == "succeeded", run
    assert run["output"] == "Europe/Brussels 2026-02-28 00:00:00\n"


@pytest.fixture
def extra_package(tmp_path: Path) -> Iterator[str]:
    """A package installed outside every Python prefix (on PYTHONPATH, say)."""
    place = tmp_path / "site"
    (place / "acme_helpers").mkdir(parents=True)
    (place / "acme_helpers" / "__init__.py").write_text("def greet(name):\n    return f'hello {name}'\n")
    for path in [tmp_path, place, place / "acme_helpers"]:
        path.chmod(0o755)
    (place / "acme_helpers" / "__init__.py").chmod(0o644)
    sys.path.insert(0, str(place))
    try:
        yield "acme_helpers"
    finally:
        sys.path.remove(str(place))
        sys.modules.pop("acme_helpers", None)


async def test_bff_script_packages_makes_more_importable(
    settings_factory: Callable[..., Settings], extra_package: str
) -> None:
    code = "import acme_helpers\nst.write(acme_helpers.greet('ada'))"
    async with running_bff(settings_factory(sandbox_enabled=True)) as bff:
        who = await customer(bff, "cust-plain")
        refused = await run_code(bff, who, code)
        assert refused["error"] == "The script raised ModuleNotFoundError: No module named 'acme_helpers'"
    async with running_bff(settings_factory(sandbox_enabled=True, script_packages=(extra_package,))) as bff:
        who = await customer(bff, "cust-extra")
        run = await run_code(bff, who, code)
        assert run["status"] == "succeeded" and run["output"] == "hello ada\n", run
    with pytest.raises(StartupError, match="BFF_SCRIPT_PACKAGES names no_such_package_x"):
        async with running_bff(settings_factory(script_packages=("no_such_package_x",))):
            pass
