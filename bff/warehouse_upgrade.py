"""Warehouses of an earlier release move into databases of their own (DESIGN §15, issue 22 item 8).

Before customer databases, each customer's warehouse was a schema ``wh_<random>`` of the control
database (named in ``sub_accounts.warehouse_schema``) with tables ``c<connection>_<stream>``, its
cursors in ``warehouse_state`` and its query tables as views ``q_<id>`` that name tables without a
schema (``SELECT … FROM c12_deals``). :func:`upgrade_warehouses`, run when the BFF starts (after the
migrations), moves each such customer, one at a time and each under a lock, so several processes
starting at once move every customer once:

1. its database is made (placement as for a new customer);
2. each table goes into the schema of its connection, named after its stream, with the same table
   and field ids (``COPY`` out of the old table, in insertion order, into the new one) and its
   cursors into the database's ``_bff.state``: the next sync goes on from where it was;
3. for each old table a view ``public."c<connection>_<stream>"`` over the new one, so SQL written
   against the old names (saved query tables, a BI tool's queries) keeps working;
4. each query table is made again from its saved query, as the customer's runner, now a view named
   as the customer named it (a query that no longer runs stays listed with its error);
5. the old schema and the old roles are dropped, and ``warehouse_schema`` is cleared.

A step that fails leaves the customer unmoved (its new database is made again on the next start).
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg import AsyncConnection, sql
from psycopg.types.json import Jsonb

from .query_tables import QueryInvalid, QueryTables, view_name
from .warehouse import Warehouse, WarehouseTable, load_tables, make_table

logger = logging.getLogger("bff.warehouse")

OLD_ROLE_SUFFIXES = ("_sql", "_q", "")  # the SQL login, the runner, the read role of a release before


async def upgrade_warehouses(warehouse: Warehouse, query_tables: QueryTables) -> int:
    """Move every customer whose warehouse is still a schema of the control database; how many moved."""
    async with warehouse.store.connection() as conn:
        cur = await conn.execute("SELECT id FROM sub_accounts WHERE warehouse_schema IS NOT NULL ORDER BY id")
        waiting = [int(r["id"]) for r in await cur.fetchall()]
    moved = 0
    for sub_account_id in waiting:
        try:
            if await move_customer(warehouse, query_tables, sub_account_id):
                moved += 1
        except (psycopg.Error, OSError):
            logger.exception(
                "could not move the warehouse of sub-account %s into a database of its own", sub_account_id
            )
    if moved:
        logger.info("moved %s customer warehouse(s) into databases of their own", moved)
    return moved


async def move_customer(warehouse: Warehouse, query_tables: QueryTables, sub_account_id: int) -> bool:
    placement = await warehouse.placement(sub_account_id, create=True)
    assert placement is not None
    async with warehouse.store.transaction() as conn:
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('bff.upgrade'), %s::int)", (sub_account_id,))
        cur = await conn.execute("SELECT warehouse_schema FROM sub_accounts WHERE id = %s", (sub_account_id,))
        row = await cur.fetchone()
        old = row["warehouse_schema"] if row else None
        if old is None:
            return False  # another process moved it meanwhile
        cur = await conn.execute("SELECT 1 AS found FROM pg_namespace WHERE nspname = %s", (old,))
        if await cur.fetchone() is not None:
            tables = [t for t in await load_tables(conn, sub_account_id=sub_account_id, legacy=True) if not t.schema]
            for table in tables:
                async with warehouse.servers.transaction(placement) as wconn:
                    await _move_table(warehouse, conn, wconn, old, table)
        await conn.execute("UPDATE sub_accounts SET warehouse_schema = NULL WHERE id = %s", (sub_account_id,))
        moved_queries = await _remake_query_tables(query_tables, conn, sub_account_id)
        await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(old)))
        for suffix in OLD_ROLE_SUFFIXES:
            role = sql.Identifier(old + suffix)
            try:
                async with conn.transaction():
                    cur = await conn.execute("SELECT 1 AS found FROM pg_roles WHERE rolname = %s", (old + suffix,))
                    if await cur.fetchone() is not None:
                        await conn.execute(sql.SQL("DROP OWNED BY {}").format(role))
                        await conn.execute(sql.SQL("DROP ROLE {}").format(role))
            except psycopg.Error as exc:  # it owns something in another database: left for the operator
                logger.warning("could not drop the old role %s: %s", old + suffix, exc.diag.message_primary)
    logger.info(
        "moved the warehouse of sub-account %s from schema %s into database %s on %s (%s query tables)",
        sub_account_id,
        old,
        placement.database,
        placement.server,
        moved_queries,
    )
    return True


async def _move_table(
    warehouse: Warehouse, conn: AsyncConnection[Any], wconn: AsyncConnection[Any], old: str, table: WarehouseTable
) -> None:
    placement = table.placement
    schema = await warehouse.connection_schema(conn, wconn, placement, table.connection_id)
    new_name = table.stream.encode()[:63].decode(errors="ignore")
    specs = [(f.name, f.type) for f in table.fields]
    await make_table(wconn, schema, new_name, specs, table.primary_key)
    columns = sql.SQL(", ").join(
        sql.Identifier(c) for c in [*(f.name for f in table.fields), "_synced_at", "_run_id", "_deleted_at"]
    )
    source = sql.SQL("{}.{}").format(sql.Identifier(old), sql.Identifier(table.physical))
    target = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(new_name))
    cur = await conn.execute("SELECT to_regclass(%s) AS found", (source.as_string(conn),))
    found = await cur.fetchone()
    if found and found["found"] is not None:
        # Text COPY: a column whose type is not quite its field's (a number not yet decimal) converts.
        async with (
            conn.cursor().copy(
                sql.SQL("COPY (SELECT {} FROM {} ORDER BY _seq) TO STDOUT").format(columns, source)
            ) as out,
            wconn.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN").format(target, columns)) as into,
        ):
            async for chunk in out:
                await into.write(chunk)
    # The old name keeps working in SQL written against it.
    await wconn.execute(
        sql.SQL("CREATE VIEW public.{} AS SELECT * FROM {}").format(sql.Identifier(table.physical), target)
    )
    await wconn.execute(
        sql.SQL("GRANT SELECT ON public.{} TO {}").format(
            sql.Identifier(table.physical), sql.Identifier(placement.database)
        )
    )
    cur = await conn.execute(
        "DELETE FROM warehouse_state WHERE connection_id = %s AND (stream = %s OR stream = %s)"
        " RETURNING stream, state, updated_at",
        (table.connection_id, table.stream, f"{table.stream}:deletions"),
    )
    for state in await cur.fetchall():
        await wconn.execute(
            "INSERT INTO _bff.state (connection_id, stream, state, updated_at) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (connection_id, stream) DO NOTHING",
            (table.connection_id, state["stream"], Jsonb(state["state"]), state["updated_at"]),
        )
    await conn.execute(
        "UPDATE warehouse_tables SET schema_name = %s, physical = %s WHERE id = %s", (schema, new_name, table.id)
    )


async def _remake_query_tables(query_tables: QueryTables, conn: AsyncConnection[Any], sub_account_id: int) -> int:
    cur = await conn.execute(
        "SELECT id, name, query FROM query_tables WHERE sub_account_id = %s ORDER BY id", (sub_account_id,)
    )
    remade = 0
    for row in await cur.fetchall():
        view = view_name(row["name"])
        try:
            await query_tables.remake_view(sub_account_id, view, row["query"])
            remade += 1
        except QueryInvalid as exc:  # listed with its error until its query is changed
            logger.warning(
                "query table %s of sub-account %s no longer runs: %s", row["id"], sub_account_id, exc.message
            )
        await conn.execute("UPDATE query_tables SET view_name = %s WHERE id = %s", (view, row["id"]))
    return remade


__all__ = ["move_customer", "upgrade_warehouses"]
