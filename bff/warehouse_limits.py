"""The customer SQL limits, held whatever a login sets (DESIGN §15), and the databases customer
logins must not reach or fill (:func:`close_to_customers`, at start).

PostgreSQL lets every role `SET statement_timeout = 0` and `ALTER ROLE CURRENT_USER SET …`, so a
role default alone does not bind a customer's SQL login. A watchdog in one worker of the deployment
(`JobQueue._watch_customer_sql`, elected by a session lock on the control database) calls :func:`stop_overrunning` each round: it cancels what ran past
the limit, ends sessions left idle in a transaction, and puts back the defaults a login lifted.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg import AsyncConnection, sql

from .db import DatabaseUnavailable
from .warehouse_servers import LOGIN_SUFFIXES, WarehouseServers

logger = logging.getLogger("bff.warehouse")

# A customer session may SET statement_timeout = 0 (open to every role) or ALTER ROLE itself:
# the watchdog (:func:`stop_overrunning`) holds the limit whatever it set.
_OVERRUNNING = """
SELECT pid, usename, state,
       CASE WHEN state = 'active' THEN pg_cancel_backend(pid) ELSE pg_terminate_backend(pid) END AS stopped
  FROM pg_stat_activity
 WHERE usename = ANY(%(roles)s) AND pid <> pg_backend_pid()
   AND ((state = 'active' AND clock_timestamp() - query_start > make_interval(secs => %(statement)s))
     OR (state LIKE 'idle in transaction%%'
         AND clock_timestamp() - state_change > make_interval(secs => %(idle)s)))
"""
# ... and the role defaults a login set on itself (ALTER ROLE CURRENT_USER [IN DATABASE …] SET,
# which PostgreSQL lets every role do): the role's statement_timeout is put back, per-database ones go.
_LIFTED_DEFAULTS = """
SELECT rolname, NULL AS datname FROM pg_roles
 WHERE rolname = ANY(%(roles)s) AND NOT coalesce(rolconfig, '{}') @> ARRAY['statement_timeout=' || %(ms)s]
UNION ALL
SELECT r.rolname, d.datname
  FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole JOIN pg_database d ON d.oid = s.setdatabase
 WHERE r.rolname = ANY(%(roles)s)
"""


async def stop_overrunning(servers: WarehouseServers, *, statement_seconds: float, idle_seconds: float) -> int:
    """Cancel the statements of customer logins running past ``statement_seconds`` and end
    their sessions idle in a transaction past ``idle_seconds``, on every server with customers
    (the BFF's own and the control roles are never touched); how many."""
    roles: dict[str, list[str]] = {}
    for placement in await servers.placements.all():
        roles.setdefault(placement.server, []).extend(placement.database + s for s in LOGIN_SUFFIXES)
    stopped = 0
    for server, names in roles.items():
        try:
            async with await servers.admin(server) as conn:
                params = {"roles": names, "statement": statement_seconds, "idle": idle_seconds}
                for row in await (await conn.execute(_OVERRUNNING, params)).fetchall():
                    stopped += bool(row["stopped"])
                    logger.info(
                        "stopped %s session %s of %s on %s (over the customer SQL limit)",
                        row["state"], row["pid"], row["usename"], server,
                    )  # fmt: skip
                ms = round(statement_seconds * 1000)
                for row in await (await conn.execute(_LIFTED_DEFAULTS, {"roles": names, "ms": str(ms)})).fetchall():
                    role = sql.Identifier(row["rolname"])
                    if row["datname"] is not None:
                        reset = sql.SQL("ALTER ROLE {} IN DATABASE {} RESET ALL")
                        await conn.execute(reset.format(role, sql.Identifier(row["datname"])))
                    else:
                        await conn.execute(
                            sql.SQL("ALTER ROLE {} SET statement_timeout = {}").format(role, sql.Literal(ms))
                        )
                    logger.info("put back the defaults %s lifted on %s", row["rolname"], server)
        except (psycopg.Error, DatabaseUnavailable, OSError) as error:
            logger.warning("could not check customer sessions on %s: %s", server, error)
    return stopped


async def close_to_customers(servers: WarehouseServers) -> None:
    """Revoke ``CONNECT`` on the control database from ``PUBLIC``: no customer login reaches it;
    and ``TEMPORARY`` on every configured warehouse server's ``postgres`` database. Where the BFF's
    role may not (it does not own that database) it says so once."""
    async with servers.store.connection() as conn:
        try:
            await conn.execute(
                sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(sql.Identifier(conn.info.dbname))
            )
        except psycopg.errors.InsufficientPrivilege as exc:
            logger.warning("could not close the control database to other roles: %s", exc.diag.message_primary)
    for server in servers.names:
        try:
            async with await servers.admin(server) as conn:
                await _close_postgres_database(conn, server)
        except (psycopg.OperationalError, OSError) as exc:
            logger.warning("could not reach warehouse server %s: %s", server, exc)


async def _close_postgres_database(conn: AsyncConnection[Any], server: str) -> None:
    """Revoke ``TEMPORARY`` on the server's ``postgres`` database from ``PUBLIC``, which has it by
    default: a customer login may connect there (tools list databases from it) and, read-only
    turned off, would fill it with temporary tables (``temp_file_limit`` does not count them)."""
    try:
        await conn.execute("REVOKE TEMPORARY ON DATABASE postgres FROM PUBLIC")
    except (psycopg.errors.InvalidCatalogName, psycopg.errors.UndefinedObject):
        pass  # a server without that database
    except psycopg.errors.InsufficientPrivilege as exc:
        logger.warning("could not revoke TEMPORARY on %s's postgres database: %s", server, exc.diag.message_primary)
