"""The rows API's parameters on synced tables, checked against the sandbox's known data."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from urllib.parse import quote

import pytest
from conftest import BFF, FakeClock, auth, running_bff
from sync_helpers import sync, tables
from tables_helpers import crm_customer, customer_database, rows

from bff.sandbox.data import contacts_table, deals_table
from bff.settings import Settings

DEALS = deals_table().records
CONTACTS = contacts_table().records


@pytest.fixture
async def sbff(settings_factory: Callable[..., Settings]) -> AsyncIterator[BFF]:
    async with running_bff(settings_factory(sandbox_enabled=True)) as instance:
        yield instance


def ids(body: dict[str, object]) -> list[str]:
    return [row["id"] for row in body["results"]]  # type: ignore[index, union-attr]


async def test_each_filter_operator_returns_exactly_the_matching_rows(sbff: BFF) -> None:
    token, _, by_name, _ = await crm_customer(sbff)
    deals = by_name["deals"]["id"]

    async def matching(query: str) -> list[str]:
        body = await rows(sbff, token, deals, f"{query}&size=500")
        assert body["count"] == len(body["results"])
        return sorted(ids(body))

    stage = "closedwon"
    assert await matching(f"filter__stage__equal={stage}") == sorted(d["id"] for d in DEALS if d["stage"] == stage)
    assert await matching(f"filter__stage__not_equal={stage}") == sorted(d["id"] for d in DEALS if d["stage"] != stage)
    assert await matching("filter__name__contains=fjord") == sorted(
        d["id"] for d in DEALS if "fjord" in d["name"].lower()
    )
    assert await matching("filter__amount__higher_than=40000") == sorted(d["id"] for d in DEALS if d["amount"] > 40000)
    assert await matching("filter__amount__lower_than=1000.5") == sorted(d["id"] for d in DEALS if d["amount"] < 1000.5)
    # Filters combine with AND; a field can be named by its field id too.
    amount_key = next(f"field_{f['id']}" for f in by_name["deals"]["fields"] if f["name"] == "amount")
    both = await matching(f"filter__stage__equal={stage}&filter__{amount_key}__higher_than=20000")
    assert both == sorted(d["id"] for d in DEALS if d["stage"] == stage and d["amount"] > 20000) and both
    # Every sandbox deal has a contact: empty matches none, not_empty all.
    assert await matching("filter__contact_id__empty=") == []
    assert len(await matching("filter__contact_id__not_empty=")) == len(DEALS)
    # Datetimes are ISO text: comparisons are chronological.
    since = "2025-10-01T00:00:00Z"
    assert await matching(f"filter__created_at__higher_than={since}") == sorted(
        d["id"] for d in DEALS if d["created_at"] > since
    )


async def test_empty_and_not_empty_see_nulls(sbff: BFF) -> None:
    token, account_id, by_name, _ = await crm_customer(sbff)
    contacts = by_name["contacts"]
    # Blank out two companies behind the API's back (a provider that stopped sending the field).
    async with customer_database(sbff, account_id) as conn:
        await conn.execute(f"UPDATE {contacts['sql_name']} SET company = NULL WHERE id = 'c_0001'")
        await conn.execute(f"UPDATE {contacts['sql_name']} SET company = '' WHERE id = 'c_0002'")
    assert ids(await rows(sbff, token, contacts["id"], "filter__company__empty=1&order_by=id")) == ["c_0001", "c_0002"]
    assert (await rows(sbff, token, contacts["id"], "filter__company__not_empty=1"))["count"] == len(CONTACTS) - 2


async def test_search_order_by_include_exclude_and_size(sbff: BFF) -> None:
    token, _, by_name, _ = await crm_customer(sbff)
    contacts, deals = by_name["contacts"]["id"], by_name["deals"]["id"]

    term = "Kestrel"
    found = await rows(sbff, token, contacts, f"search={term.lower()}&size=500&order_by=id")
    expected = sorted(
        c["id"]
        for c in CONTACTS
        if any(
            term.lower() in str(c[k]).lower()
            for k in ("id", "email", "first_name", "last_name", "company", "created_at", "updated_at")
        )
    )
    assert found["count"] == len(expected) > 0 and ids(found) == expected[:500]

    ordered = await rows(sbff, token, deals, "order_by=-amount,id&size=5")
    top = sorted(DEALS, key=lambda d: (-d["amount"], d["id"]))[:5]
    assert ids(ordered) == [d["id"] for d in top] and ordered["count"] == len(DEALS)
    assert "size=5" in ordered["next"] and "order_by=-amount" in ordered["next"]
    second = (await sbff.client.get(ordered["next"], headers=auth(token))).json()
    assert ids(second) == [d["id"] for d in sorted(DEALS, key=lambda d: (-d["amount"], d["id"]))[5:10]]
    by_stage = await rows(sbff, token, deals, "order_by=stage,-id&size=3")
    assert ids(by_stage) == [
        d["id"] for d in sorted(sorted(DEALS, key=lambda d: d["id"], reverse=True), key=lambda d: d["stage"])[:3]
    ]

    narrow = await rows(sbff, token, deals, "include=id,amount&size=2")
    assert [set(r) for r in narrow["results"]] == [{"id", "amount", "_synced_at", "_run_id", "_deleted_at"}] * 2
    wide = await rows(sbff, token, deals, "exclude=name,stage&size=1")
    assert set(wide["results"][0]) == {
        "id",
        "amount",
        "contact_id",
        "created_at",
        "updated_at",
        "_synced_at",
        "_run_id",
        "_deleted_at",
    }
    # page_size wins over its alias; size is bounded like page_size.
    assert len((await rows(sbff, token, deals, "size=7&page_size=3"))["results"]) == 3
    await rows(sbff, token, deals, "size=5000", status=400)


async def test_updated_since_returns_rows_synced_after_it(settings_factory: Callable[..., Settings]) -> None:
    clock = FakeClock()
    async with running_bff(settings_factory(sandbox_enabled=True), clock=clock) as sbff:
        token, _, by_name, connection_id = await crm_customer(sbff)
        first_sync = clock.now
        clock.advance(3600)
        touched = (await sbff.client.post("/sandbox/_control/touch", json={"resource": "crm.deals", "count": 4})).json()
        await sync(sbff, token, connection_id)
        deals = by_name["deals"]["id"]
        half_way = datetime.fromtimestamp(first_sync + 1800, tz=UTC).isoformat().replace("+00:00", "Z")
        recent = await rows(sbff, token, deals, f"updated_since={quote(half_way)}")
        assert sorted(ids(recent)) == sorted(touched["touched"]) and recent["count"] == 4
        before = datetime.fromtimestamp(first_sync - 1, tz=UTC).isoformat()
        assert (await rows(sbff, token, deals, f"updated_since={quote(before)}"))["count"] == len(DEALS)
        # Without a zone an ISO time is UTC.
        naive = datetime.fromtimestamp(first_sync + 1800, tz=UTC).replace(tzinfo=None).isoformat()
        assert (await rows(sbff, token, deals, f"updated_since={naive}"))["count"] == 4
        newest_first = await rows(sbff, token, deals, "order_by=-updated_at&size=4")
        assert sorted(ids(newest_first)) == sorted(touched["touched"])


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("filter__nope__equal=1", "filter__nope__equal"),
        ("filter__stage__like=x", "filter__stage__like"),
        ("filter__stage=x", "filter__stage"),
        ("filter__amount__higher_than=lots", "filter__amount__higher_than"),
        ("order_by=-nope", "order_by"),
        ("include=id,nope", "include"),
        ("exclude=nope", "exclude"),
        ("updated_since=yesterday", "updated_since"),
    ],
)
async def test_unknown_fields_operators_and_bad_values_are_400_naming_them(sbff: BFF, query: str, named: str) -> None:
    token, _, by_name, _ = await crm_customer(sbff)
    body = await rows(sbff, token, by_name["deals"]["id"], query, status=400)
    assert body["code"] == "validation_error" and named in body["errors"], body


async def test_hostile_filter_values_are_only_values(sbff: BFF) -> None:
    token, account_id, by_name, _ = await crm_customer(sbff)
    deals = by_name["deals"]["id"]
    for hostile in ("'; DROP TABLE x; --", '"; DROP TABLE warehouse_tables; --', "%", "_", "\\", "' OR '1'='1"):
        for op in ("equal", "contains", "higher_than", "not_equal"):
            body = await rows(sbff, token, deals, f"filter__name__{op}={quote(hostile)}&size=500")
            if op == "equal":
                assert body["count"] == 0
            if op == "contains":
                assert body["count"] == sum(hostile.lower() in d["name"].lower() for d in DEALS)
        assert (await rows(sbff, token, deals, f"search={quote(hostile)}"))["count"] == sum(
            any(hostile.lower() in v.lower() for v in d.values() if isinstance(v, str)) for d in DEALS
        )
    # A literal % or _ matches itself, not everything.
    assert (await rows(sbff, token, deals, "filter__name__contains=%25"))["count"] == 0
    # Every table is still there with all its rows.
    assert {t: v["row_count"] for t, v in (await tables(sbff.client, token)).items()} == {
        "contacts": len(CONTACTS),
        "deals": len(DEALS),
    }
    assert (await rows(sbff, token, deals))["count"] == len(DEALS)
    assert account_id
