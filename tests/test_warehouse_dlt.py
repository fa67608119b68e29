"""The customer's own warehouse as dlt sees it (issue 22, "Tests and measurements"): dlt's
``sql_database`` source on the SQL login a partner asks for, after a real sandbox sync, loaded into
DuckDB. Before issue 22 dlt warned about an unknown ``DOUBLE PRECISION`` timestamp and DuckDB read
``created_at`` as a string; here the types arrive typed and dlt warns about nothing."""

from __future__ import annotations

import datetime as dt
import decimal
import logging
import urllib.parse
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import BFF, running_bff
from sync_helpers import tables
from tables_helpers import rows
from test_warehouse_psql import synced_customer

from bff.sandbox.data import contacts_table, deals_table
from bff.settings import Settings

REASON = "dlt and duckdb are in the bench extra: pip install '.[bench]' runs this test"
dlt = pytest.importorskip("dlt", reason=REASON)
duckdb = pytest.importorskip("duckdb", reason=REASON)
pytest.importorskip("sqlalchemy", reason=REASON)

DEALS = {d["id"]: d for d in deals_table().records}
CONTACTS = contacts_table().records
SCHEMA = "Sandbox CRM"  # the connection's name is its schema (DESIGN §15)


@pytest.fixture
async def sbff(settings_factory: Callable[..., Settings]) -> AsyncIterator[BFF]:
    async with running_bff(settings_factory(sandbox_enabled=True, sql_access=True)) as instance:
        yield instance


class Records(logging.Handler):
    """Every record dlt logs (its logger does not propagate, so caplog would see nothing)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def login_url(login: dict[str, Any]) -> str:
    """A ``postgresql://`` URL of the customer's SQL login, as a customer pastes it into dlt."""
    user, password = (urllib.parse.quote(login[key], safe="") for key in ("user", "password"))
    database = urllib.parse.quote(login["database"], safe="")
    if str(login["host"]).startswith("/"):  # the test server listens on a socket directory only
        socket = urllib.parse.urlencode({"host": login["host"], "port": login["port"]})
        return f"postgresql://{user}:{password}@/{database}?{socket}"
    return f"postgresql://{user}:{password}@{login['host']}:{login['port']}/{database}"


async def test_dlt_sql_database_loads_the_customers_tables_typed_into_duckdb(
    sbff: BFF, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token, _, login = await synced_customer(sbff, "dlt-a")
    real_dlt_home = Path.home() / ".dlt"
    had_dlt_home = real_dlt_home.exists()
    # Nothing of dlt's under the home directory: state, config lookups, telemetry all in tmp_path.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DLT_DATA_DIR", str(tmp_path / "dlt-data"))
    monkeypatch.setenv("DLT_PROJECT_DIR", str(tmp_path / "project"))
    monkeypatch.setenv("RUNTIME__LOG_LEVEL", "INFO")
    monkeypatch.setenv("RUNTIME__DLTHUB_TELEMETRY", "false")
    monkeypatch.chdir(tmp_path)
    from dlt.sources.sql_database import sql_database

    heard = Records()
    dlt_logger = logging.getLogger("dlt")
    dlt_logger.addHandler(heard)
    try:
        source = sql_database(credentials=login_url(login), schema=SCHEMA, table_names=["deals", "contacts"])
        pipeline = dlt.pipeline(
            pipeline_name="customer_warehouse",
            destination=dlt.destinations.duckdb(str(tmp_path / "x.duckdb")),
            dataset_name="crm",
            pipelines_dir=str(tmp_path / "dlt"),
        )
        info = pipeline.run(source)
    finally:
        dlt_logger.removeHandler(heard)
    assert not info.has_failed_jobs, info
    # The handler is wired (dlt logged its progress at INFO) and nothing was a warning: no unknown type.
    assert any(r.levelno == logging.INFO for r in heard.records), "dlt logged nothing: the capture is broken"
    warnings = [r.getMessage() for r in heard.records if r.levelno >= logging.WARNING]
    assert warnings == [], warnings
    assert Path(pipeline.working_dir).is_relative_to(tmp_path), pipeline.working_dir
    assert real_dlt_home.exists() == had_dlt_home

    with duckdb.connect(str(tmp_path / "x.duckdb"), read_only=True) as db:
        counts = {t: db.execute(f"SELECT COUNT(*) FROM crm.{t}").fetchone()[0] for t in ("deals", "contacts")}
        assert counts == {"deals": len(DEALS), "contacts": len(CONTACTS)} == {"deals": 300, "contacts": 1250}
        types = dict(
            db.execute(
                "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns"
                " WHERE table_schema = 'crm' AND table_name IN ('deals', 'contacts')"
            ).fetchall()
        )
        assert types["deals.amount"].startswith("DECIMAL"), types
        for column in ("deals.created_at", "deals.updated_at", "deals._synced_at", "contacts._synced_at"):
            assert types[column] == "TIMESTAMP WITH TIME ZONE", (column, types)
        assert types["deals.id"] == "VARCHAR", types
        row = db.execute(
            "SELECT id, name, amount, stage, contact_id, created_at, updated_at, _synced_at, _deleted_at"
            " FROM crm.deals WHERE id = 'd_001'"
        ).fetchone()
    deal_id, name, amount, stage, contact_id, created_at, updated_at, synced_at, deleted_at = row
    # DuckDB hands back the Python types: Decimal and aware datetimes, not floats and strings.
    assert isinstance(amount, decimal.Decimal) and isinstance(created_at, dt.datetime), row
    deal = DEALS["d_001"]
    assert (deal_id, name, stage, contact_id) == (deal["id"], deal["name"], deal["stage"], deal["contact_id"])
    assert amount == decimal.Decimal(str(deal["amount"]))
    assert created_at == dt.datetime.fromisoformat(deal["created_at"])
    assert updated_at == dt.datetime.fromisoformat(deal["updated_at"])
    assert deleted_at is None
    # The rows API agrees with what dlt copied (the same amount, the same sync time).
    deals = (await tables(sbff.client, token))["deals"]
    first = (await rows(sbff, token, deals["id"], "filter__id__equal=d_001"))["results"][0]
    assert decimal.Decimal(str(first["amount"])) == amount
    # The rows API's ISO strings carry milliseconds; DuckDB keeps PostgreSQL's microseconds.
    assert dt.datetime.fromisoformat(first["_synced_at"]) == synced_at.replace(
        microsecond=synced_at.microsecond // 1000 * 1000
    )
