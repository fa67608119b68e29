"""The read API over the warehouse: applications, tables, paged rows, and tenancy."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from conftest import BFF, auth, running_bff
from sandbox_flows import connect_accounting, connect_crm
from sync_helpers import all_rows, customer, sync, tables

from bff.settings import Settings


@pytest.fixture
async def sbff(settings_factory: Callable[..., Settings]) -> AsyncIterator[BFF]:
    async with running_bff(settings_factory(sandbox_enabled=True)) as instance:
        yield instance


async def test_applications_lists_the_one_warehouse_with_or_without_tables(sbff: BFF) -> None:
    token, account_id = await customer(sbff)
    empty = (await sbff.client.get("/api/applications/", headers=auth(token))).json()
    assert empty["count"] == 1 and empty["results"][0]["id"] == account_id and empty["results"][0]["tables"] == []

    crm = await connect_crm(sbff.client, token)
    await sync(sbff, token, crm["id"])
    full = (await sbff.client.get("/api/applications", headers=auth(token))).json()["results"][0]
    assert {t["name"]: t["row_count"] for t in full["tables"]} == {"contacts": 1250, "deals": 300}
    lean = (await sbff.client.get("/api/applications/?exclude_tables=1", headers=auth(token))).json()
    assert lean["results"][0]["id"] == account_id and "tables" not in lean["results"][0]


async def test_tables_describe_their_fields(sbff: BFF) -> None:
    token, account_id = await customer(sbff)
    crm = await connect_crm(sbff.client, token)
    await sync(sbff, token, crm["id"])
    listed = (await sbff.client.get(f"/api/database/tables/database/{account_id}", headers=auth(token))).json()
    assert listed["count"] == 2 and listed["next"] is None
    contacts = next(t for t in listed["results"] if t["name"] == "contacts")
    assert contacts["connection"] == crm["id"] and contacts["row_count"] == 1250 and contacts["primary_key"] == ["id"]
    fields = {f["name"]: f for f in contacts["fields"]}
    assert list(fields) == ["id", "email", "first_name", "last_name", "company", "created_at", "updated_at"]
    assert fields["id"]["primary"] is True and fields["email"]["primary"] is False
    assert fields["updated_at"]["type"] == "datetime"
    paged = (
        await sbff.client.get(f"/api/database/tables/database/{account_id}/?page_size=1&page=2", headers=auth(token))
    ).json()
    assert paged["count"] == 2 and len(paged["results"]) == 1 and paged["previous"] and paged["next"] is None


async def test_rows_page_correctly_with_names_or_field_ids(sbff: BFF) -> None:
    token, _ = await customer(sbff)
    books = await connect_accounting(sbff.client, token)
    await sync(sbff, token, books["id"])
    invoices = (await tables(sbff.client, token))["invoices"]
    url = f"/api/database/rows/table/{invoices['id']}/"

    first = (await sbff.client.get(f"{url}?user_field_names=True&page_size=200", headers=auth(token))).json()
    assert first["count"] == 1500 and len(first["results"]) == 200 and first["previous"] is None
    assert "page=2" in first["next"] and "user_field_names=True" in first["next"]
    row = first["results"][0]
    assert row["id"] == "inv_101_0001" and row["division"] == 101 and isinstance(row["amount"], float)
    assert set(row) == {
        "id",
        "division",
        "number",
        "customer",
        "amount",
        "currency",
        "status",
        "issued_on",
        "updated_at",
        "_synced_at",
        "_run_id",
        "_deleted_at",
    }

    last = (await sbff.client.get(f"{url}?user_field_names=true&page_size=200&page=8", headers=auth(token))).json()
    assert len(last["results"]) == 100 and last["next"] is None and "page=7" in last["previous"]
    beyond = (await sbff.client.get(f"{url}?page_size=200&page=9", headers=auth(token))).json()
    assert beyond["count"] == 1500 and beyond["results"] == [] and beyond["next"] is None

    rows = await all_rows(sbff.client, token, invoices["id"], page_size=350)
    assert len(rows) == 1500 and len({r["id"] for r in rows}) == 1500

    by_id = (await sbff.client.get(f"{url}?page_size=1", headers=auth(token))).json()["results"][0]
    field_ids = {f["name"]: f"field_{f['id']}" for f in invoices["fields"]}
    assert set(by_id) == {*field_ids.values(), "_synced_at", "_run_id", "_deleted_at"}
    assert by_id[field_ids["id"]] == "inv_101_0001" and by_id[field_ids["customer"]] == row["customer"]

    bad = await sbff.client.get(f"{url}?page_size=5000", headers=auth(token))
    assert bad.status_code == 400 and bad.json()["code"] == "validation_error"


async def test_another_sub_accounts_database_and_tables_are_404(sbff: BFF) -> None:
    token, account_id = await customer(sbff, "a")
    other_token, other_id = await customer(sbff, "b")
    crm = await connect_crm(sbff.client, token)
    await sync(sbff, token, crm["id"])
    contacts = (await tables(sbff.client, token))["contacts"]

    for path in (
        f"/api/database/rows/table/{contacts['id']}/",
        f"/api/database/rows/table/{contacts['id'] + 1}/",
        f"/api/database/tables/database/{account_id}/",
        "/api/database/rows/table/1/",
        "/api/database/tables/database/999999/",
    ):
        answer = await sbff.client.get(path, headers=auth(other_token))
        assert answer.status_code == 404 and answer.json()["code"] == "not_found", path
    assert (await sbff.client.get("/api/applications/", headers=auth(other_token))).json()["results"][0]["tables"] == []
    assert (await sbff.client.get(f"/api/database/tables/database/{other_id}/", headers=auth(other_token))).json()[
        "count"
    ] == 0
    assert (await sbff.client.get(f"/api/database/rows/table/{contacts['id']}/")).status_code == 401
    # A partner token is not a sub-account token.
    _, partner_token = await sbff.partner("nosy")
    answer = await sbff.client.get(f"/api/database/rows/table/{contacts['id']}/", headers=auth(partner_token))
    assert answer.status_code == 401 and answer.json()["code"] == "token_wrong_kind"


async def test_applications_page_like_every_list(sbff: BFF) -> None:
    """The document pages every list with ?page=&page_size=; the one warehouse is no exception."""
    token, account_id = await customer(sbff)
    second = (await sbff.client.get("/api/applications/?page=2&exclude_tables=1", headers=auth(token))).json()
    assert second["count"] == 1 and second["results"] == [] and second["next"] is None
    assert "page=1" in second["previous"]
    first = (await sbff.client.get("/api/applications/?page_size=1", headers=auth(token))).json()
    assert [r["id"] for r in first["results"]] == [account_id] and first["next"] is None
    bad = await sbff.client.get("/api/applications/?page_size=0", headers=auth(token))
    assert bad.status_code == 400 and bad.json()["code"] == "validation_error"


async def test_an_unknown_rows_parameter_is_named_not_ignored(sbff: BFF) -> None:
    token, _ = await customer(sbff)
    crm = await connect_crm(sbff.client, token)
    await sync(sbff, token, crm["id"])
    contacts = (await tables(sbff.client, token))["contacts"]
    url = f"/api/database/rows/table/{contacts['id']}/"
    refused = await sbff.client.get(f"{url}?email=x@example.com&user_field_names=1&colour=red", headers=auth(token))
    assert refused.status_code == 400, refused.text
    body = refused.json()
    assert body["code"] == "validation_error" and set(body["errors"]) == {"email", "colour"}
    assert body["detail"] == "Unknown parameters: colour, email."
    assert "filter__<field>__<operator>" in body["errors"]["email"]
    meant = await sbff.client.get(
        f"{url}?filter__email__equal=x@example.com&user_field_names=1&size=5&page=1", headers=auth(token)
    )
    assert meant.status_code == 200 and meant.json()["count"] == 0
