"""A customer on a PostgreSQL server of its own (DESIGN §15: "a partner may bring a customer's own
PostgreSQL by URL"): ``PUT /api/partner/sub-account/{id}/warehouse {"url": …}``.

The URL is checked before anything is kept: only libpq's plain connection keys (no files, no
services, no options), a login that connects within a few seconds, on PostgreSQL 14 or later, and
a role that may create databases and roles (what the BFF does there: the customer's database and
its roles, as on any warehouse server). A URL that fails says why with a code
(``422 warehouse_unreachable`` / ``warehouse_login_refused`` / ``warehouse_not_permitted``), never
with the URL or what the server answered beyond that.

Kept: the URL encrypted (AES-GCM, bound to the sub-account) in ``warehouse_placements.own_url``;
each process learns it when it first needs that server. Never in a response or a log line: the
server is named by ``host:port`` as every warehouse server is. A customer without a database yet
gets it there; one with a database elsewhere is moved there (:func:`bff.warehouse_move.move_customer`:
its writes wait meanwhile); one already there has its URL replaced (new credentials).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .crypto import Vault
from .errors import ApiError, validation_error
from .store.placements import Placement
from .warehouse import Warehouse
from .warehouse_move import move_customer
from .warehouse_servers import new_database_name, server_name

CONNECT_SECONDS = 5
MAX_URL_LENGTH = 2000
# libpq keys a URL may carry: nothing that reads a file on the BFF's machine (passfile, service,
# sslkey, sslcert) or sets server options.
ALLOWED_KEYS = frozenset({"host", "hostaddr", "port", "user", "password", "dbname", "sslmode", "connect_timeout"})
MIN_SERVER_VERSION = 140000


def _refused(code: str, detail: str) -> ApiError:
    return ApiError(422, code, detail)


NOT_A_POSTGRESQL_URL = (
    f"A PostgreSQL URL (postgresql://user:password@host:port/db), at most {MAX_URL_LENGTH} characters."
)


def parse_url(url: object) -> str:
    """The URL as a conninfo with a short connect timeout; a 400 for what is not a usable URL."""
    if not isinstance(url, str) or not url.strip() or len(url) > MAX_URL_LENGTH:
        raise validation_error({"url": NOT_A_POSTGRESQL_URL})
    try:
        parts = conninfo_to_dict(url.strip())
    except psycopg.ProgrammingError:
        raise validation_error({"url": "Not a PostgreSQL URL or connection string."}) from None
    unknown = sorted(set(parts) - ALLOWED_KEYS)
    if unknown:
        raise validation_error({"url": f"Only {', '.join(sorted(ALLOWED_KEYS))} may be set; not {', '.join(unknown)}."})
    if not parts.get("host") or not parts.get("user"):
        raise validation_error({"url": "The URL must name a host and a user."})
    parts["connect_timeout"] = str(CONNECT_SECONDS)
    return make_conninfo(**{k: str(v) for k, v in parts.items()})


async def check_server(url: str) -> None:
    """Connect with ``url`` and check the role may do what the BFF does on a warehouse server."""
    try:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    except psycopg.OperationalError as exc:
        text = str(exc)
        if (
            "authentication failed" in text
            or "no password" in text
            or "does not exist" in text
            or "not permitted to log in" in text
        ):
            raise _refused(
                "warehouse_login_refused", "The server refused this login (user, password or database)."
            ) from None
        raise _refused(
            "warehouse_unreachable", f"Could not connect to the server within {CONNECT_SECONDS} s."
        ) from None
    try:
        cur = await conn.execute(
            "SELECT current_setting('server_version_num')::int AS version, rolsuper, rolcreatedb, rolcreaterole"
            " FROM pg_roles WHERE rolname = current_user"
        )
        row = await cur.fetchone()
    finally:
        await conn.close()
    if row is None:
        raise _refused("warehouse_not_permitted", "The login's role could not be read.")
    version, superuser, createdb, createrole = row
    if version < MIN_SERVER_VERSION:
        raise _refused("warehouse_not_permitted", "The server runs a PostgreSQL older than 14.")
    if not (superuser or (createdb and createrole)):
        raise _refused(
            "warehouse_not_permitted",
            "The login's role needs CREATEDB and CREATEROLE (it makes the customer's database and roles).",
        )


async def bring_own_server(warehouse: Warehouse, vault: Vault, sub_account_id: int, raw_url: object) -> dict[str, Any]:
    """Put the customer's database on the server of ``raw_url``; ``{server, database, moved}``."""
    url = parse_url(raw_url)
    servers = warehouse.servers
    name = server_name(url)
    if name in servers.names:
        raise _refused("warehouse_not_permitted", "That is one of this BFF's own warehouse servers.")
    await check_server(url)
    sealed = vault.encrypt(url.encode(), servers.own_url_aad(sub_account_id)).hex()
    placement = await servers.placements.get(sub_account_id)
    if placement is None:  # placed there now, its database made there on first need
        async with servers.store.transaction() as conn:
            placement = await servers.placements.locked(conn, sub_account_id)
            if placement is None:
                placement = Placement(
                    sub_account_id=sub_account_id, server=name, database=new_database_name(), ready=False
                )
                await servers.placements.insert(conn, placement)
            await conn.execute(
                "UPDATE warehouse_placements SET own_url = %s WHERE sub_account_id = %s", (sealed, sub_account_id)
            )
    else:
        await servers.store._one(
            "UPDATE warehouse_placements SET own_url = %s WHERE sub_account_id = %s RETURNING NULL AS done",
            (sealed, sub_account_id),
        )
    servers.add_own(url)
    moved = False
    if placement.server != name:
        if placement.ready:
            await move_customer(warehouse, sub_account_id, name)
            moved = True
        else:  # placed elsewhere but not made yet (a first sync under way): made here instead
            await servers.store._one(
                "UPDATE warehouse_placements SET server = %s WHERE sub_account_id = %s AND NOT ready"
                " RETURNING NULL AS done",
                (name, sub_account_id),
            )
    made = await servers.placement(sub_account_id, create=True)
    assert made is not None
    return {"server": made.server, "database": made.database, "moved": moved}


__all__ = ["bring_own_server", "check_server", "parse_url"]
