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
    "get_pipeline_runs",
    "get_state",
    "refresh_connection",
    "run_pipeline",
    "set_state",
    "set_table_frequency",
    "st",
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
    categories: list[str] | None = None,
) -> dict[str, Any]:
    """Sync a connection now; ``is_async=False`` waits until the run has finished and returns it."""
    return api().refresh_connection(
        connection_name, connection_id, is_async=is_async, tables=tables, categories=categories
    )


def run_pipeline(
    connection_name: str | None = None,
    connection_id: int | None = None,
    is_async: bool = True,
    tables: str | list[str] | None = None,
    categories: str | int | list[str | int] | None = None,
) -> dict[str, Any]:
    """The source documents' name for :func:`refresh_connection`: ``{"run_id": …}`` (and, with
    ``is_async=False``, the finished run's ``status``). ``tables`` may be one name or a list;
    ``categories`` one division code or a list (only those divisions; connectors with divisions only)."""
    wanted = _names(tables)
    chosen = _names(categories)
    result = refresh_connection(connection_name, connection_id, is_async=is_async, tables=wanted, categories=chosen)
    if is_async:
        runs = result.get("run_data") or [{}]
        return {**result, "run_id": runs[0].get("pipeline_run_id")}
    return {**result, "run_id": result.get("id")}


def _names(value: str | int | list[Any] | None) -> list[str] | None:
    if value is None:
        return None
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def get_pipeline_runs(
    connection_name: str | None = None, connection_id: int | None = None, run_id: int | None = None
) -> dict[str, Any]:
    """A connection's sync runs, newest first, as ``{"data": [{"id", "status", …}]}`` (the
    documents' shape); only run ``run_id`` when given."""
    if (connection_name is None) == (connection_id is None):
        raise ValueError("Pass exactly one of connection_name or connection_id.")
    client = api()
    server_id = connection_id if connection_id is not None else client.connect(str(connection_name)).id
    page = client._do(_Call("GET", f"/api/server/{int(server_id)}/runs", params={"page_size": 100}))
    runs = [run for run in page.get("results", []) if run_id is None or run.get("id") == int(run_id)]
    return {"data": runs}


def set_table_frequency(connection_name: str | int, table: str, seconds: int | None) -> dict[str, Any]:
    """Sync one table of a connection every ``seconds`` (None: back to the connection's own
    frequency); the other tables' frequencies are kept. Returns the connection."""
    client = api()
    server_id = client.connect(connection_name).id
    connection = client._do(_Call("GET", f"/api/server/{server_id}"))
    frequencies = dict(connection.get("table_frequencies") or {})
    if seconds is None:
        frequencies.pop(table, None)
    else:
        frequencies[table] = seconds
    return client._do(  # type: ignore[no-any-return]
        _Call("PATCH", f"/api/server/{server_id}", json={"table_frequencies": frequencies})
    )


class _Output:
    """``st``: what the source documents' scripts write with (Streamlit's names), as lines of
    the run's output."""

    @staticmethod
    def write(*values: Any) -> None:
        print(" ".join(v if isinstance(v, str) else _shown(v) for v in values), flush=True)

    @staticmethod
    def text(value: Any) -> None:
        print(str(value), flush=True)

    @staticmethod
    def json(value: Any) -> None:
        print(json.dumps(value, indent=2, default=str, ensure_ascii=False), flush=True)

    @staticmethod
    def table(rows: Any) -> None:
        """Rows (dicts, or lists) as aligned columns."""
        items = list(rows.values()) if isinstance(rows, dict) else list(rows)
        if not items:
            print("(no rows)", flush=True)
            return
        if all(isinstance(r, dict) for r in items):
            columns = list(dict.fromkeys(k for r in items for k in r))
            grid = [columns] + [[_shown(r.get(c)) for c in columns] for r in items]
        else:
            grid = [[_shown(v) for v in (r if isinstance(r, (list, tuple)) else [r])] for r in items]
        widths = [max(len(row[i]) if i < len(row) else 0 for row in grid) for i in range(max(map(len, grid)))]
        for row in grid:
            print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip(), flush=True)

    markdown = text
    title = text
    header = text
    subheader = text
    caption = text
    code = text


def _shown(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str, ensure_ascii=False)
    return "" if value is None else str(value)


st = _Output()


class Database:
    """The customer's warehouse, as the customer's own database roles (writes only through ``execute(db, query=)``)."""

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
        query: str | None = None,
        filters: dict[str, Any] | None = None,
        order_by: str | list[str] | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Every row of a table (``schema`` is the connection's name; ``table`` the table's name),
        or the rows of one ``SELECT`` (``query=``), as dicts."""
        if db not in (DW_NAME, self.name):
            raise BFFError("database_not_found", 404, f"No database called {db!r}; use pq.DW_NAME.")
        if query is not None:
            return api().query(query, limit=limit if limit is not None else 10_000)
        if table is None:
            raise ValueError("fetch(db, schema, table): name the table (or pass query=).")
        found = self._find(schema, table)
        rows: list[dict[str, Any]] = []
        for row in api().rows(int(found["id"]), filters=filters, order_by=order_by):
            rows.append(row)
            if limit is not None and len(rows) >= limit:
                break
        return rows

    def execute(self, *args: str, query: str | None = None, limit: int = 1000) -> Any:
        """``execute(sql)``: one ``SELECT``/``WITH`` query, its rows. ``execute(db, query=sql)`` (the
        documents' form): one statement that may write the customer's own database (``DELETE``,
        ``UPDATE``, ``INSERT`` in synced tables; tables in schemas of its own) →
        ``{"status": …, "rowcount": …, "rows": […]}``; a statement the database refuses is a status
        that says why, not an exception."""
        if query is None:
            if len(args) != 1:
                raise ValueError("execute(sql), or execute(pq.DW_NAME, query=sql).")
            return api().query(args[0], limit=limit)
        if len(args) > 1 or (args and args[0] not in (DW_NAME, self.name)):
            raise BFFError("database_not_found", 404, f"No database called {args[0]!r}; use pq.DW_NAME.")
        try:
            done = api().run_statement(query, limit=limit)
        except BFFError as exc:
            return {"status": f"error: {exc.detail}", "rowcount": 0, "rows": []}
        return {"status": "ok", "rowcount": done["rowcount"], "rows": done["rows"]}


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
