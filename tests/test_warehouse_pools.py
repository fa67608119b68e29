"""A process that served many customers does not keep a pool per customer for ever (issue 22,
item 4): pools and customer-role connections unused for a while are closed and forgotten, never
one with a connection in use, and made again on next need."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from conftest import auth, running_bff
from tables_helpers import crm_customer, rows

from bff import warehouse_servers
from bff.settings import Settings


async def test_idle_customer_pools_are_evicted_and_made_again(
    settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_bff(settings_factory(sandbox_enabled=True)) as bff:
        servers = bff.services.warehouse.servers
        customers = [await crm_customer(bff, name) for name in ("a", "b")]
        for token, _, _, _ in customers:
            answer = await bff.client.post("/api/database/query/", headers=auth(token), json={"query": "SELECT 1"})
            assert answer.status_code == 200, answer.text
        placements = [await bff.services.warehouse.placement(account_id) for _, account_id, _, _ in customers]
        assert all(p is not None for p in placements)
        a, b = placements[0], placements[1]
        assert a is not None and b is not None
        held = {key[:2] for key in servers.open_pools}
        assert {(a.server, a.database), (b.server, b.database)} <= held
        assert await servers.evict_idle() == 0  # in use a moment ago
        monkeypatch.setattr(warehouse_servers, "EVICT_SECONDS", 0.0)
        # One with a connection checked out stays; the other goes, with its customer-role connections.
        async with servers.connection(a):
            assert await servers.evict_idle() >= 2
        assert (a.server, a.database) in servers.open_pools
        assert not [key for key in servers.open_pools if key[1] == b.database]
        # ... and comes back when it is needed again.
        token_b, _, tables_b, _ = customers[1]
        assert (await rows(bff, token_b, tables_b["deals"]["id"]))["count"] == 300
        assert (b.server, b.database) in servers.open_pools
        # Asking for a pool looks for idle ones now and then by itself.
        monkeypatch.setattr(warehouse_servers, "SWEEP_SECONDS", 0.0)
        token_a, _, tables_a, _ = customers[0]
        assert (await rows(bff, token_a, tables_a["deals"]["id"]))["count"] == 300
        assert [key for key in servers.open_pools if key[1] == b.database] == []


async def test_a_process_keeps_few_connections_to_customer_databases_however_many_it_served(
    settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that synced customer after customer would keep a few connections open for each (up
    to a minute): processes sharing one PostgreSQL ran it out of connections (``too many
    clients``). Past KEEP_OPEN, the least recently used pools with nothing checked out are closed."""
    import asyncio

    async with running_bff(settings_factory(sandbox_enabled=True)) as bff:
        servers = bff.services.warehouse.servers
        placements = []
        for name in ("a", "b", "c"):
            _, account_id, _, _ = await crm_customer(bff, name)
            found = await bff.services.warehouse.placement(account_id)
            assert found is not None
            placements.append(found)

        def open_connections() -> int:
            return sum(pool.get_stats().get("pool_size", 0) for pool in servers._pools.values())

        monkeypatch.setattr(warehouse_servers, "KEEP_OPEN", 2)
        await asyncio.sleep(1.1)
        for placement in placements:  # two connections at once to each customer, one after another
            async with servers.connection(placement), servers.connection(placement):
                pass
        assert open_connections() > 2  # nothing closed within the last second
        await asyncio.sleep(1.1)
        a = placements[0]
        async with servers.connection(a) as conn:  # in use: never closed under it
            await servers._trim()
            assert (await (await conn.execute("SELECT 1 AS one")).fetchone()) == {"one": 1}
        # b and c (least recently used, nothing checked out) went; a, in use, stayed.
        assert set(servers._pools) == {(a.server, a.database)} and open_connections() == 2
        # A closed pool is made again on next need.
        async with servers.connection(placements[1]) as conn:
            assert (await (await conn.execute("SELECT 2 AS two")).fetchone()) == {"two": 2}
