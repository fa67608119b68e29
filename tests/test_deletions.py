"""Deleted records (DESIGN §10): a provider's deleted-ids list seen by incremental syncs, a full
sync marking exactly the rows the provider no longer has, and the definition format."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from conftest import BFF, auth, running_bff
from records_helpers import customer
from sandbox_flows import connect_crm
from sync_helpers import sync, tables
from tables_helpers import rows

from bff.connectors import DEFINITIONS_DIR, load_connectors
from bff.connectors.definitions import DefinitionError, parse_connector
from bff.settings import Settings


@pytest.fixture
async def sbff(settings_factory: Callable[..., Settings]) -> AsyncIterator[BFF]:
    async with running_bff(settings_factory(sandbox_enabled=True)) as bff:
        yield bff


async def deleted_rows(bff: BFF, account_id: int, stream: str) -> dict[str, Any]:
    """``{id: _deleted_at}`` of the rows marked deleted, and how many rows the table has."""
    for table, counts in await bff.services.warehouse.list_tables(account_id):
        if table.stream == stream:
            async with bff.services.warehouse.servers.connection(table.placement) as conn:
                cur = await conn.execute(
                    f"SELECT id, _deleted_at FROM {table.identifier.as_string(conn)} WHERE _deleted_at IS NOT NULL"
                )
                return {
                    "count": counts.total,
                    "deleted": {row["id"]: row["_deleted_at"] for row in await cur.fetchall()},
                }
    raise AssertionError(f"no table {stream}")


async def test_incremental_sync_sees_deletions_from_the_deleted_ids_endpoint(sbff: BFF) -> None:
    who = await customer(sbff)
    connection = await connect_crm(sbff.client, who.integrate)
    first = await sync(sbff, who.integrate, connection["id"])
    assert first["status"] == "succeeded"
    assert (await deleted_rows(sbff, who.account_id, "contacts"))["deleted"] == {}
    answer = await sbff.client.post("/sandbox/_control/delete", json={"resource": "crm.contacts", "count": 3})
    assert answer.status_code == 200, answer.text
    gone = answer.json()["deleted"]
    assert len(gone) == 3
    second = await sync(sbff, who.integrate, connection["id"])
    assert second["status"] == "succeeded" and second["records"] == {"contacts": 0, "deals": 0}
    rows = await deleted_rows(sbff, who.account_id, "contacts")
    assert set(rows["deleted"]) == set(gone) and rows["count"] == 1250  # kept, with _deleted_at set
    marked_at = dict(rows["deleted"])
    # The endpoint's cursor moved on: a third sync neither re-marks nor changes the times.
    await sync(sbff, who.integrate, connection["id"])
    assert (await deleted_rows(sbff, who.account_id, "contacts"))["deleted"] == marked_at
    bad = await sbff.client.post("/sandbox/_control/delete", json={"resource": "crm.deals", "count": 1})
    assert bad.status_code == 400


async def test_full_sync_marks_exactly_the_rows_the_provider_no_longer_has(sbff: BFF) -> None:
    who = await customer(sbff)
    connection = await connect_crm(sbff.client, who.integrate)
    await sync(sbff, who.integrate, connection["id"])
    # Deals have no deletions endpoint: a deal deleted at the provider goes unnoticed...
    for deal_id in ("d_007", "d_150"):
        deleted = await sbff.client.delete(
            f"/api/server/{connection['id']}/records/deal/{deal_id}", headers=who.headers
        )
        assert deleted.status_code == 204, deleted.text
    await sync(sbff, who.integrate, connection["id"])
    assert (await deleted_rows(sbff, who.account_id, "deals"))["deleted"] == {}
    # ...until a full sync, which reads everything and marks what is missing.
    full = await sync(sbff, who.integrate, connection["id"], full=True)
    assert full["status"] == "succeeded" and full["full"] is True
    assert full["records"] == {"contacts": 1250, "deals": 298}
    rows = await deleted_rows(sbff, who.account_id, "deals")
    assert set(rows["deleted"]) == {"d_007", "d_150"} and rows["count"] == 300
    assert (await deleted_rows(sbff, who.account_id, "contacts"))["deleted"] == {}
    bad = await sbff.client.post(
        f"/api/server/{connection['id']}/sync", json={"full": "yes"}, headers=auth(who.integrate)
    )
    assert bad.status_code == 400 and bad.json()["errors"].keys() == {"full"}


def bank_definition() -> dict[str, Any]:
    return json.loads((DEFINITIONS_DIR / "sandbox_bank.json").read_text())  # type: ignore[no-any-return]


def test_definitions_declare_deletions_and_are_checked() -> None:
    contacts = load_connectors()["sandbox_crm"].stream("contacts")
    assert contacts.deletions is not None and contacts.deletions.kind == "deleted_ids"
    assert contacts.deletions.since_param == "since"

    data = bank_definition()
    data["streams"][0]["deletions"] = {"kind": "archived_flag", "field": "amount"}
    stream = parse_connector(data, "bank.json").streams[0]
    assert stream.deletions is not None and stream.deletions.field == "amount"

    data["streams"][0]["deletions"] = {"kind": "archived_flag", "field": "nope"}
    with pytest.raises(DefinitionError, match="deletions.field"):
        parse_connector(data, "bank.json")
    data["streams"][0]["deletions"] = {"kind": "tombstones"}
    with pytest.raises(DefinitionError):
        parse_connector(data, "bank.json")
    # The published JSON Schema knows the new key (tests/test_definitions.py keeps it in sync).
    schema = json.loads((DEFINITIONS_DIR.parent / "definition.schema.json").read_text())
    assert "deletions" in schema["$defs"]["StreamModel"]["properties"]


async def test_archived_flag_marks_flagged_rows(sbff: BFF) -> None:
    """A stream declaring an archived flag: rows whose flag is true get `_deleted_at`, others not;
    a record un-archived later is live again after its next write."""
    data = bank_definition()
    stream_def = data["streams"][0]
    stream_def["fields"].append({"name": "archived", "type": "boolean"})
    stream_def["deletions"] = {"kind": "archived_flag", "field": "archived"}
    stream = parse_connector(data, "bank.json").streams[0]
    who = await customer(sbff)
    connection = await sbff.services.store.connections.create(who.account_id, "sandbox_bank", "Flagged", "OK")
    table = await sbff.services.warehouse.open_table(who.account_id, connection.id, stream)
    key = stream.primary_key[0]

    def record(i: int, archived: bool) -> dict[str, Any]:
        return {**{f.name: None for f in stream.fields}, key: f"t{i}", "archived": archived}

    await table.write([record(1, False), record(2, True), record(3, True)], {}, run_id=1)
    assert await table.mark_flagged_deleted("archived") == 2
    assert set((await deleted_rows(sbff, who.account_id, stream.name))["deleted"]) == {"t2", "t3"}
    assert await table.mark_flagged_deleted("archived") == 0  # already marked
    await table.write([record(3, False)], {}, run_id=2)
    assert set((await deleted_rows(sbff, who.account_id, stream.name))["deleted"]) == {"t2"}


async def test_deleted_rows_are_visible_filterable_and_counted_through_the_api(sbff: BFF) -> None:
    who = await customer(sbff)
    connection = await connect_crm(sbff.client, who.integrate)
    await sync(sbff, who.integrate, connection["id"])
    gone = (await sbff.client.post("/sandbox/_control/delete", json={"resource": "crm.contacts", "count": 3})).json()
    await sync(sbff, who.integrate, connection["id"])
    listed = await tables(sbff.client, who.identity)
    contacts = listed["contacts"]
    assert (contacts["row_count"], contacts["live_count"], contacts["deleted_count"]) == (1250, 1247, 3)
    assert (listed["deals"]["live_count"], listed["deals"]["deleted_count"]) == (300, 0)
    # The connection answer says how many rows it holds: the live ones of all its tables.
    answer = (await sbff.client.get(f"/api/server/{connection['id']}", headers=auth(who.integrate))).json()
    assert answer["live_count"] == 1247 + 300

    async def read(query: str, status: int = 200) -> dict[str, Any]:
        return await rows(sbff, who.identity, contacts["id"], query, status=status)

    deleted = await read("filter___deleted_at__not_empty=1&order_by=id")
    assert deleted["count"] == 3 and {r["id"] for r in deleted["results"]} == set(gone["deleted"])
    for row in deleted["results"]:
        assert dt.datetime.fromisoformat(row["_deleted_at"]).tzinfo is not None  # an ISO time
    live = await read("filter___deleted_at__empty=1&size=5")
    assert live["count"] == 1247 and all(r["_deleted_at"] is None for r in live["results"])
    # Every synced row carries _deleted_at; include= may name it (only it and the bookkeeping come back).
    only = await read("include=_deleted_at&filter___deleted_at__not_empty=1")
    assert {frozenset(r) for r in only["results"]} == {frozenset({"_deleted_at", "_synced_at", "_run_id"})}
    assert set((await read("size=1"))["results"][0]) >= {"id", "email", "_deleted_at", "_synced_at", "_run_id"}
    newest = await read("order_by=-_deleted_at&size=1")
    assert newest["results"][0]["_deleted_at"] is not None
    since = deleted["results"][0]["_deleted_at"]
    assert (await read(f"filter___deleted_at__lower_than={since}"))["count"] == 0
    bad = await read("filter___deleted_at__higher_than=yesterday", status=400)
    assert bad["code"] == "validation_error"
    # A query table that keeps the column is counted the same way.
    made = await sbff.client.post(
        "/api/table",
        headers=who.headers,
        json={"name": "All contacts", "query": f"SELECT id, _deleted_at FROM {contacts['sql_name']}"},
    )
    assert made.status_code == 201, made.text
    query_table = (await tables(sbff.client, who.identity))["All contacts"]
    assert (query_table["row_count"], query_table["live_count"], query_table["deleted_count"]) == (1250, 1247, 3)
    assert (await rows(sbff, who.identity, made.json()["id"], "filter___deleted_at__not_empty=1"))["count"] == 3


async def test_synced_tables_carry_the_documents_batch_time_as_sdc_batched_at(sbff: BFF) -> None:
    from psycopg import sql

    who = await customer(sbff)
    connection = await connect_crm(sbff.client, who.integrate)
    await sync(sbff, who.integrate, connection["id"])
    warehouse = sbff.services.warehouse
    listed = await warehouse.list_tables(who.account_id)
    # A table made before the alias existed (dropped here) gains it when a new release first syncs it.
    table = listed[0][0]
    async with warehouse.servers.connection(table.placement) as conn:
        await conn.execute(sql.SQL("ALTER TABLE {} DROP COLUMN _sdc_batched_at").format(table.identifier))
    warehouse._plans.clear()  # as after an upgrade: the new release opens its tables afresh
    await sync(sbff, who.integrate, connection["id"])
    for table, _ in listed:
        async with warehouse.servers.connection(table.placement) as conn:
            cur = await conn.execute(
                sql.SQL(
                    "SELECT COUNT(*) AS n, COUNT(*) FILTER (WHERE _sdc_batched_at = _synced_at) AS same,"
                    " MAX(_sdc_batched_at) > now() - interval '1 hour' AS recent FROM {}"
                ).format(table.identifier)
            )
            found = await cur.fetchone()
        assert found["n"] > 0 and found["same"] == found["n"] and found["recent"] is True, table.stream
