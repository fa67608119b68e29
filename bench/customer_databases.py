"""What a customer's own database costs (DESIGN §15): the time to make one, the disk it takes empty,
and what N of them take together, on a fresh embedded PostgreSQL.

Usage: python bench/customer_databases.py [--customers 100]

Each customer is placed as the BFF places a new one (``WarehouseServers.placement(create=True)``:
``CREATE DATABASE`` from ``template1``, its owner and writer roles, ``CONNECT`` revoked from
``PUBLIC``, the ``_bff`` bookkeeping schema), then its first table is made (the sandbox CRM's
contacts: a table, three indexes, the index rows). Prints min/median/p95 of both, the size of one
empty database (``pg_database_size``), and the growth on disk of the databases' files for all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bff.connectors import load_connectors
from bff.store import Store
from bff.testing import TestDatabases, stop_embedded
from bff.warehouse import Warehouse


def du(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def summary(label: str, values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"  {label:34} min {min(values):7.1f}   median {statistics.median(values):7.1f}   p95 {p95:7.1f} ms"


async def bench(customers: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="bff-bench-dbs-"))
    try:
        databases = TestDatabases(root)
        url = databases.create()
        store = Store(url)
        await store.open()
        warehouse = Warehouse(store)
        contacts = load_connectors()["sandbox_crm"].stream("contacts")
        partner = await store.partners.create("bench", [])
        base = next((root / "postgres").rglob("base"))  # the databases' files (pg_wal apart)
        before, before_base = du(root / "postgres"), du(base)
        create_ms, table_ms = [], []
        for i in range(customers):
            account = await store.sub_accounts.create(partner.id, f"c{i}", {})
            connection = await store.connections.create(account.id, "sandbox_crm", "CRM", "OK")
            started = time.perf_counter()
            placement = await warehouse.placement(account.id, create=True)
            create_ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            await warehouse.open_table(account.id, connection.id, contacts)
            table_ms.append((time.perf_counter() - started) * 1000)
            assert placement is not None
            await warehouse.servers.forget(placement)  # a real process keeps at most a few pools open
        async with store.connection() as conn:
            cur = await conn.execute(
                "SELECT pg_database_size('template1') AS template,"
                " (SELECT AVG(pg_database_size(database))::bigint FROM warehouse_placements) AS customer"
            )
            sizes = await cur.fetchone()
        async with store.connection() as conn:
            await conn.execute("CHECKPOINT")
        after, after_base = du(root / "postgres"), du(base)
        await warehouse.close()
        await store.close()
        assert sizes is not None
        print(
            f"{customers} customer databases on one embedded PostgreSQL (load average {Path('/proc/loadavg').read_text().split()[0]})"
        )
        print(summary("make a customer's database", create_ms))
        print(summary("its first table", table_ms))
        print(
            f"  one customer database (with one empty table): {sizes['customer'] / 1e6:.1f} MB (template1: {sizes['template'] / 1e6:.1f} MB)"
        )
        growth, files = after - before, after_base - before_base
        print(
            f"  their files grew {files / 1e6:.0f} MB for {customers}: {files / customers / 1e6:.1f} MB each,"
            f" {files / customers * 1000 / 1e9:.1f} GB for 1,000 (the cluster with its WAL: {growth / 1e6:.0f} MB)"
        )
    finally:
        stop_embedded(root / "postgres")
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=100)
    asyncio.run(bench(parser.parse_args().customers))


if __name__ == "__main__":
    main()
