"""``pq``: what a script imports to reach its customer's data and apps (DESIGN §14).

A thin client of the public API, over the one Unix socket bound into the sandbox and with the
run's own identity token, so a script can do nothing its sub-account could not do through the
API (and nothing at all once its run has ended)::

    crm = pq.connect("Sandbox CRM")
    crm.add("contact", {"email": "ada@example.com", "first_name": "Ada"})
    pq.refresh_connection(connection_name="Sandbox CRM", is_async=False)
    dbconn = pq.dbconnect(pq.DW_NAME)
    for row in dbconn.fetch(pq.DW_NAME, "Sandbox CRM", "contacts"):
        ...
    state = pq.get_state() or {}
    pq.set_state({**state, "last_seen": row["id"]})
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from ..client import BFFError, Connection, SubAccountClient, _Call
from . import MAX_STATE_BYTES

__all__ = [
    "DW_NAME",
    "BFFError",
    "Database",
    "connect",
    "dbconnect",
    "get_state",
    "refresh_connection",
    "set_state",
]

DW_NAME = "Warehouse"  # the name of the customer's one warehouse (``GET /api/applications/``)

_api: SubAccountClient | None = None
_script_id: int | None = None


def _configure(*, socket_path: str, token: str, script_id: int, run_id: int) -> None:
    global _api, _script_id
    transport = httpx.HTTPTransport(uds=socket_path)
    http = httpx.Client(transport=transport, base_url="http://bff", timeout=httpx.Timeout(120.0, connect=10.0))
    _api = SubAccountClient("http://bff", token, client=http)
    _script_id = script_id


def api() -> SubAccountClient:
    """The sub-account's API client (everything :class:`bff.client.SubAccountClient` offers)."""
    if _api is None:
        raise RuntimeError("pq is only available inside a script run.")
    return _api


def connect(name: str | int) -> Connection:
    """The writeback object of a connection, by connection name, app name or id:
    ``add``, ``update``, ``delete``, ``upsert``, ``get``, ``search`` and ``proxy``."""
    return api().connect(name)


def refresh_connection(
    connection_name: str | None = None,
    connection_id: int | None = None,
    is_async: bool = True,
    tables: list[str] | None = None,
) -> dict[str, Any]:
    """Sync a connection now; ``is_async=False`` waits until the run has finished and returns it."""
    return api().refresh_connection(connection_name, connection_id, is_async=is_async, tables=tables)


class Database:
    """The customer's warehouse, read-only, as the customer's own database role."""

    def __init__(self, name: str) -> None:
        self.name = name

    def _tables(self) -> list[dict[str, Any]]:
        client = api()
        return list(client.tables(client.database_id()))

    def _find(self, schema: str | None, table: str) -> dict[str, Any]:
        tables = self._tables()
        if schema is not None:
            connections = api()._named_connections()
            wanted = schema.lower()
            ids = {
                c["id"]
                for c in connections
                if wanted in {str(c.get(k, "")).lower() for k in ("name", "connector_display_name", "connector")}
            }
            if not ids:
                raise BFFError("table_not_found", 404, f"No connection called {schema!r} in this account.")
            tables = [t for t in tables if t.get("connection") in ids]
        hits = [t for t in tables if table in (t.get("name"), t.get("sql_name"))]
        if len(hits) != 1:
            where = f" of {schema!r}" if schema else ""
            problem = "No table" if not hits else f"{len(hits)} tables"
            raise BFFError("table_not_found", 404, f"{problem} called {table!r}{where}; pass the schema too.")
        return hits[0]

    def fetch(
        self,
        db: str,
        schema: str | None = None,
        table: str | None = None,
        *,
        filters: dict[str, Any] | None = None,
        order_by: str | list[str] | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Every row of a table (``schema`` is the connection's name; ``table`` the table's name)."""
        if db not in (DW_NAME, self.name):
            raise BFFError("database_not_found", 404, f"No database called {db!r}; use pq.DW_NAME.")
        if table is None:
            raise ValueError("fetch(db, schema, table): name the table.")
        found = self._find(schema, table)
        rows: list[dict[str, Any]] = []
        for row in api().rows(int(found["id"]), filters=filters, order_by=order_by):
            rows.append(row)
            if limit is not None and len(rows) >= limit:
                break
        return rows

    def execute(self, query: str, *, limit: int = 1000) -> list[dict[str, Any]]:
        """One read-only ``SELECT``/``WITH`` query over the customer's tables; its rows."""
        return api().query(query, limit=limit)


def dbconnect(name: str = DW_NAME) -> Database:
    if name != DW_NAME:
        raise BFFError("database_not_found", 404, f"No database called {name!r}; use pq.DW_NAME.")
    return Database(name)


def get_state() -> Any:
    """What this script saved with :func:`set_state` on an earlier run (None at first)."""
    return api()._do(_Call("GET", f"/api/interface/{_script_id}/state"))["state"]


def set_state(obj: Any) -> None:
    """Keep a JSON value (at most 1 MB) for this script's next runs."""
    size = len(json.dumps(obj).encode())
    if size > MAX_STATE_BYTES:
        raise ValueError(f"The state is {size} bytes as JSON; at most {MAX_STATE_BYTES} are kept.")
    api()._do(_Call("PUT", f"/api/interface/{_script_id}/state", json={"state": obj}))
