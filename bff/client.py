"""A small typed client for a partner's back-end, built on httpx.

    from bff.client import PartnerClient

    partner = PartnerClient("http://127.0.0.1:8000", partner_token)
    minted = partner.integrate_token("wood_123", first_name="John")   # for the browser
    customer = partner.sub_account_client(external_id="wood_123")     # identity token inside
    for connection in customer.connections():
        for table in customer.tables(customer.database_id()):
            for row in customer.rows(table["id"]):
                ...

Writeback, as the source documents write it (identity token; see README "Writeback")::

    hubspot = customer.connect("Sandbox CRM")                  # by connection name, connector or id
    hubspot.add("contact", {"email": "john@acme.com", "first_name": "John"})
    chat = customer.connect("Sandbox Chat")
    chat.add("message", channel="QA", text="Data quality alert")
    hubspot.update("contact", id="c_0001", company="Acme")
    customer.refresh_connection(connection_name="Sandbox CRM", is_async=False)

Query tables and filtered reads (identity token)::

    won = customer.create_query_table("Won deals", "SELECT d.id, d.amount, c.email FROM \"Sandbox CRM\".deals d JOIN \"Sandbox CRM\".contacts c ON c.id = d.contact_id WHERE d.stage = 'closedwon'")
    for row in customer.rows(won["id"], filters={"amount__higher_than": 1000}, order_by="-amount",
                             updated_since="2026-01-01T00:00:00Z"):
        ...

``AsyncPartnerClient`` / ``AsyncSubAccountClient`` / ``AsyncConnection`` have the
same methods, awaited (iterators become async iterators). Every failure raises
:class:`BFFError`.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

import httpx

JSON = dict[str, Any]


class BFFError(Exception):
    """Any error answer from the BFF (or no answer at all): ``code``, ``status``, ``detail``."""

    def __init__(self, code: str, status: int, detail: str, errors: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.code = code
        self.status = status
        self.detail = detail
        self.errors = dict(errors or {})


@dataclasses.dataclass(frozen=True)
class _Call:
    method: str
    path: str
    params: Mapping[str, Any] | None = None
    json: Any = None
    headers: Mapping[str, str] | None = None


def _check(response: httpx.Response) -> Any:
    if response.status_code == 204:
        return None
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.is_error:
        if isinstance(body, dict) and "code" in body:
            raise BFFError(str(body["code"]), response.status_code, str(body.get("detail", "")), body.get("errors"))
        raise BFFError("http_error", response.status_code, response.text[:200])
    return body


def _transport_error(exc: httpx.HTTPError) -> BFFError:
    return BFFError("connection_error", 0, f"Could not reach the BFF: {exc.__class__.__name__}")


# -- what each method asks for, shared by the sync and async clients ------------------------


def _sub_account_fields(external_id: str, fields: Mapping[str, Any]) -> JSON:
    return {"external_id": external_id, **{k: v for k, v in fields.items() if v is not None}}


def _lookup(account_id: int | None, external_id: str | None) -> JSON:
    if (account_id is None) == (external_id is None):
        raise ValueError("Pass exactly one of account_id or external_id.")
    return {"account_id": account_id} if account_id is not None else {"external_id": external_id}


class _PartnerCalls:
    @staticmethod
    def create_sub_account(external_id: str, **fields: Any) -> _Call:
        return _Call("POST", "/api/partner/sub-account/", json=_sub_account_fields(external_id, fields))

    @staticmethod
    def integrate_token(external_id: str, **fields: Any) -> _Call:
        return _Call("POST", "/api/partner/sub-account/integrate/", json=_sub_account_fields(external_id, fields))

    @staticmethod
    def identity_token(account_id: int | None = None, external_id: str | None = None, *, expire: bool = True) -> _Call:
        params = _lookup(account_id, external_id)
        if not expire:
            params["expire"] = "false"
        return _Call("GET", "/api/partner/sub-account/identity/", params=params)

    @staticmethod
    def revoke_tokens(account_id: int) -> _Call:
        return _Call("POST", f"/api/partner/sub-account/{int(account_id)}/revoke-tokens")

    @staticmethod
    def database_credentials(account_id: int) -> _Call:
        return _Call("POST", f"/api/partner/sub-account/{int(account_id)}/database-credentials")


class _SubAccountCalls:
    @staticmethod
    def connection(server_id: int) -> _Call:
        return _Call("GET", f"/api/server/{int(server_id)}")

    @staticmethod
    def delete(server_id: int) -> _Call:
        return _Call("DELETE", f"/api/server/{int(server_id)}")

    @staticmethod
    def sync(server_id: int, tables: list[str] | None = None, categories: list[str] | None = None) -> _Call:
        body: dict[str, Any] = {"tables": tables} if tables else {}
        if categories:
            body["categories"] = categories
        return _Call("POST", f"/api/server/{int(server_id)}/sync", json=body)

    @staticmethod
    def health(server_id: int) -> _Call:
        return _Call("GET", f"/api/server/{int(server_id)}/health")

    @staticmethod
    def sync_status(server_id: int) -> _Call:
        return _Call("GET", f"/api/server/{int(server_id)}/sync-status")

    @staticmethod
    def applications() -> _Call:
        return _Call("GET", "/api/applications/", params={"exclude_tables": 1})

    @staticmethod
    def create_query_table(name: str, query: str) -> _Call:
        return _Call("POST", "/api/table", json={"name": name, "query": query})

    @staticmethod
    def query_table(table_id: int) -> _Call:
        return _Call("GET", f"/api/table/{int(table_id)}")

    @staticmethod
    def update_query_table(table_id: int, name: str | None, query: str | None) -> _Call:
        body = {k: v for k, v in (("name", name), ("query", query)) if v is not None}
        return _Call("PATCH", f"/api/table/{int(table_id)}", json=body)

    @staticmethod
    def delete_query_table(table_id: int) -> _Call:
        return _Call("DELETE", f"/api/table/{int(table_id)}")

    @staticmethod
    def query(sql: str, limit: int, write: bool = False) -> _Call:
        body: dict[str, Any] = {"query": sql, "limit": limit}
        if write:
            body["write"] = True
        return _Call("POST", "/api/database/query/", json=body)

    @staticmethod
    def add_script(name: str, code: str, schedule: int | None) -> _Call:
        return _Call("POST", "/api/interface", json={"name": name, "raw_code": code, "schedule": schedule})

    @staticmethod
    def script(script_id: int) -> _Call:
        return _Call("GET", f"/api/interface/{int(script_id)}")

    @staticmethod
    def update_script(script_id: int, changes: Mapping[str, Any]) -> _Call:
        return _Call("PATCH", f"/api/interface/{int(script_id)}", json=dict(changes))

    @staticmethod
    def delete_script(script_id: int) -> _Call:
        return _Call("DELETE", f"/api/interface/{int(script_id)}")

    @staticmethod
    def run_script(script_id: int, wait: float | None) -> _Call:
        params = {"wait": wait} if wait is not None else None
        return _Call("POST", f"/api/interface/{int(script_id)}/run", params=params)


def _script_changes(name: str | None, code: str | None, schedule: int | None | _Keep) -> dict[str, Any]:
    changes: dict[str, Any] = {k: v for k, v in (("name", name), ("raw_code", code)) if v is not None}
    if not isinstance(schedule, _Keep):
        changes["schedule"] = schedule
    return changes


class _Keep:
    """``update_script(schedule=…)`` not given: leave the schedule as it is (None means manual)."""


KEEP = _Keep()


def _param_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime.datetime):
        moment: datetime.datetime = value if value.tzinfo is not None else value.replace(tzinfo=datetime.UTC)
        return moment.isoformat()
    return "" if value is None else str(value)


def row_params(
    *,
    filters: Mapping[str, Any] | None = None,
    order_by: str | Sequence[str] | None = None,
    updated_since: str | datetime.datetime | None = None,
    search: str | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    user_field_names: bool = True,
) -> dict[str, str]:
    """The rows API's query string. ``filters`` maps ``"<field>__<operator>"`` to a value, e.g.
    ``{"stage__equal": "closedwon", "amount__higher_than": 1000, "company__empty": True}``."""
    params: dict[str, str] = {"user_field_names": "True"} if user_field_names else {}
    for key, value in (filters or {}).items():
        field, sep, _ = key.rpartition("__")
        if not sep or not field:
            raise ValueError(f"filter keys look like 'field__operator', e.g. 'stage__equal'; got {key!r}")
        params[f"filter__{key}"] = _param_value(value)
    if order_by:
        params["order_by"] = order_by if isinstance(order_by, str) else ",".join(order_by)
    if updated_since is not None:
        params["updated_since"] = _param_value(updated_since)
    if search:
        params["search"] = search
    if include:
        params["include"] = ",".join(include)
    if exclude:
        params["exclude"] = ",".join(exclude)
    return params


class _RecordCalls:
    """Writeback calls of one connection (DESIGN §12)."""

    @staticmethod
    def _query(timeout: bool, refresh: bool, **more: Any) -> dict[str, Any]:
        query = {k: v for k, v in more.items() if v is not None}
        if timeout:
            query["timeout"] = "true"
        if refresh:
            query["refresh"] = "true"
        return query

    @staticmethod
    def _key(idempotency_key: str | None) -> dict[str, str] | None:
        return {"Idempotency-Key": idempotency_key} if idempotency_key else None

    @classmethod
    def add(
        cls, server_id: int, obj: str, fields: Mapping[str, Any], timeout: bool, refresh: bool, key: str | None
    ) -> _Call:
        return _Call(
            "POST", f"/api/server/{server_id}/records/{obj}", cls._query(timeout, refresh), dict(fields), cls._key(key)
        )

    @classmethod
    def update(
        cls,
        server_id: int,
        obj: str,
        record_id: Any,
        fields: Mapping[str, Any],
        timeout: bool,
        refresh: bool,
        key: str | None,
    ) -> _Call:
        path = f"/api/server/{server_id}/records/{obj}/{record_id}"
        return _Call("PATCH", path, cls._query(timeout, refresh), dict(fields), cls._key(key))

    @classmethod
    def delete(cls, server_id: int, obj: str, record_id: Any, timeout: bool, refresh: bool, key: str | None) -> _Call:
        path = f"/api/server/{server_id}/records/{obj}/{record_id}"
        return _Call("DELETE", path, cls._query(timeout, refresh), headers=cls._key(key))

    @classmethod
    def upsert(
        cls,
        server_id: int,
        obj: str,
        fields: Mapping[str, Any],
        match: str,
        timeout: bool,
        refresh: bool,
        key: str | None,
    ) -> _Call:
        query = cls._query(timeout, refresh, match=match)
        return _Call("PUT", f"/api/server/{server_id}/records/{obj}", query, dict(fields), cls._key(key))

    @classmethod
    def get(cls, server_id: int, obj: str, record_id: Any, timeout: bool) -> _Call:
        return _Call("GET", f"/api/server/{server_id}/records/{obj}/{record_id}", cls._query(timeout, False))

    @classmethod
    def search(cls, server_id: int, obj: str, fields: Mapping[str, Any], timeout: bool) -> _Call:
        query = {**{k: str(v) for k, v in fields.items()}, **cls._query(timeout, False)}
        return _Call("GET", f"/api/server/{server_id}/records/{obj}", query)


def _fields(fields: Mapping[str, Any] | None, extra: Mapping[str, Any]) -> dict[str, Any]:
    """``add("contact", {...})`` and ``add("message", channel=…, text=…)`` both work, as in the documents."""
    return {**(fields or {}), **extra}


def _pick_connection(connections: list[JSON], name_or_id: str | int) -> JSON:
    """A connection by id, connection name, connector display name or connector name (in that order)."""
    if isinstance(name_or_id, int) or (isinstance(name_or_id, str) and name_or_id.isdigit()):
        wanted = int(name_or_id)
        for connection in connections:
            if connection["id"] == wanted:
                return connection
    else:
        for key in ("name", "connector_display_name", "connector"):
            hits = [c for c in connections if str(c.get(key, "")).lower() == name_or_id.lower()]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise BFFError(
                    "connection_ambiguous", 409, f"{len(hits)} connections are called {name_or_id!r}; use an id."
                )
    raise BFFError("connection_not_found", 404, f"No connection called {name_or_id!r}.")


def _headers(token: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept": "application/json", **(extra or {})}


POLL_SECONDS = 1.0
_ACTIVE_RUN = ("queued", "running", "waiting")
# A sync another caller (the schedule, a write's refresh) started in between: wait for it, try again.
REFRESH_ATTEMPTS = 5
_RECENT = {"page_size": 50}  # the run a client just started is among a connection's newest


def _started_run(started: JSON) -> int | None:
    """The run id a sync answer names (``run_data[0].pipeline_run_id``), if it names one."""
    runs = started.get("run_data") or []
    return int(runs[0]["pipeline_run_id"]) if runs and runs[0].get("pipeline_run_id") is not None else None


def _find_run(page: JSON, run_id: int) -> JSON | None:
    return next((run for run in page.get("results", []) if run.get("id") == run_id), None)


async def _sleep(seconds: float) -> None:
    import asyncio  # only the async client needs it: scripts' start-up does not pay for it

    await asyncio.sleep(seconds)  # refresh_connection(is_async=False) polls the sync status this often


# -- synchronous ----------------------------------------------------------------------------------


class _SyncBase:
    """A client owns the httpx client it made and closes only that one: a client given to it (a
    sub-account client borrowing its partner's) stays open for its owner."""

    def __init__(self, base_url: str, token: str, *, client: httpx.Client | None = None, timeout: float = 30.0) -> None:
        self._owns_client = client is None
        self._client = client or httpx.Client(base_url=base_url, timeout=timeout)
        self._base_url = base_url
        self._token = token

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _do(self, call: _Call) -> Any:
        try:
            response = self._client.request(
                call.method, call.path, params=call.params, json=call.json, headers=_headers(self._token, call.headers)
            )
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from None
        except RuntimeError as exc:  # httpx: "Cannot send a request, as the client has been closed"
            raise BFFError("client_closed", 0, f"This client was closed: {exc}") from None
        return _check(response)

    def _pages(self, path: str, params: Mapping[str, Any] | None = None, page_size: int = 100) -> Iterator[JSON]:
        page = 1
        while True:
            body = self._do(_Call("GET", path, params={**(params or {}), "page": page, "page_size": page_size}))
            yield from body["results"]
            if not body.get("next"):
                return
            page += 1


class PartnerClient(_SyncBase):
    """The partner token's endpoints."""

    def create_sub_account(self, external_id: str, **fields: Any) -> JSON:
        return self._do(_PartnerCalls.create_sub_account(external_id, **fields))  # type: ignore[no-any-return]

    def sub_accounts(self, page_size: int = 100) -> Iterator[JSON]:
        return self._pages("/api/partner/sub-accounts", page_size=page_size)

    def integrate_token(self, external_id: str, **fields: Any) -> JSON:
        return self._do(_PartnerCalls.integrate_token(external_id, **fields))  # type: ignore[no-any-return]

    def identity_token(
        self, account_id: int | None = None, external_id: str | None = None, *, expire: bool = True
    ) -> JSON:
        return self._do(_PartnerCalls.identity_token(account_id, external_id, expire=expire))  # type: ignore[no-any-return]

    def revoke_tokens(self, account_id: int) -> JSON:
        return self._do(_PartnerCalls.revoke_tokens(account_id))  # type: ignore[no-any-return]

    def database_credentials(self, account_id: int) -> JSON:
        """A read-only SQL login for one customer (``BFF_SQL_ACCESS=true``); a new password each call."""
        return self._do(_PartnerCalls.database_credentials(account_id))  # type: ignore[no-any-return]

    def sub_account_client(self, account_id: int | None = None, external_id: str | None = None) -> SubAccountClient:
        token = self.identity_token(account_id, external_id)["token"]
        return SubAccountClient(self._base_url, token, client=self._client)


class SubAccountClient(_SyncBase):
    """One customer's connections, runs and warehouse (identity or integrate token)."""

    def connections(self) -> Iterator[JSON]:
        return self._pages("/api/servers")

    def connection(self, server_id: int) -> JSON:
        return self._do(_SubAccountCalls.connection(server_id))  # type: ignore[no-any-return]

    def delete_connection(self, server_id: int) -> None:
        self._do(_SubAccountCalls.delete(server_id))

    def sync(self, server_id: int, tables: list[str] | None = None, categories: list[str] | None = None) -> JSON:
        return self._do(_SubAccountCalls.sync(server_id, tables, categories))  # type: ignore[no-any-return]

    def health(self, server_id: int) -> JSON:
        return self._do(_SubAccountCalls.health(server_id))  # type: ignore[no-any-return]

    def sync_status(self, server_id: int) -> JSON:
        return self._do(_SubAccountCalls.sync_status(server_id))  # type: ignore[no-any-return]

    def runs(self, server_id: int) -> Iterator[JSON]:
        return self._pages(f"/api/server/{int(server_id)}/runs")

    def applications(self) -> list[JSON]:
        return self._do(_SubAccountCalls.applications())["results"]  # type: ignore[no-any-return]

    def database_id(self) -> int:
        return int(self.applications()[0]["id"])

    def tables(self, database_id: int) -> Iterator[JSON]:
        return self._pages(f"/api/database/tables/database/{int(database_id)}/")

    def rows(
        self,
        table_id: int,
        *,
        filters: Mapping[str, Any] | None = None,
        order_by: str | Sequence[str] | None = None,
        updated_since: str | datetime.datetime | None = None,
        search: str | None = None,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        user_field_names: bool = True,
        page_size: int = 100,
    ) -> Iterator[JSON]:
        """Every matching row of a synced or query table, page by page (see :func:`row_params`)."""
        params = row_params(
            filters=filters,
            order_by=order_by,
            updated_since=updated_since,
            search=search,
            include=include,
            exclude=exclude,
            user_field_names=user_field_names,
        )
        return self._pages(f"/api/database/rows/table/{int(table_id)}/", params, page_size)

    def create_query_table(self, name: str, query: str) -> JSON:
        """A saved query (a view in the customer's schema): ``{id, name, type: "query", query, fields}``."""
        return self._do(_SubAccountCalls.create_query_table(name, query))  # type: ignore[no-any-return]

    def query_table(self, table_id: int) -> JSON:
        return self._do(_SubAccountCalls.query_table(table_id))  # type: ignore[no-any-return]

    def update_query_table(self, table_id: int, *, name: str | None = None, query: str | None = None) -> JSON:
        return self._do(_SubAccountCalls.update_query_table(table_id, name, query))  # type: ignore[no-any-return]

    def delete_query_table(self, table_id: int) -> None:
        self._do(_SubAccountCalls.delete_query_table(table_id))

    def query(self, sql: str, *, limit: int = 1000) -> list[JSON]:
        """Rows of one read-only SELECT over the customer's tables, run as the customer's database role."""
        return self._do(_SubAccountCalls.query(sql, limit))["rows"]  # type: ignore[no-any-return]

    def run_statement(self, sql: str, *, limit: int = 1000) -> JSON:
        """One statement that may write the customer's own database (``DELETE``/``UPDATE``/``INSERT``
        in synced tables, tables in schemas of its own): ``{fields, rows, count, truncated, status, rowcount}``."""
        return self._do(_SubAccountCalls.query(sql, limit, write=True))  # type: ignore[no-any-return]

    def add_script(self, name: str, code: str, schedule: int | None = None) -> JSON:
        """Save a script in this customer's account; ``schedule`` in seconds (≥ 60), None to run it by hand."""
        return self._do(_SubAccountCalls.add_script(name, code, schedule))  # type: ignore[no-any-return]

    def scripts(self) -> Iterator[JSON]:
        return self._pages("/api/interface")

    def script(self, script_id: int) -> JSON:
        return self._do(_SubAccountCalls.script(script_id))  # type: ignore[no-any-return]

    def update_script(
        self, script_id: int, *, name: str | None = None, code: str | None = None, schedule: int | None | _Keep = KEEP
    ) -> JSON:
        changes = _script_changes(name, code, schedule)
        return self._do(_SubAccountCalls.update_script(script_id, changes))  # type: ignore[no-any-return]

    def delete_script(self, script_id: int) -> None:
        self._do(_SubAccountCalls.delete_script(script_id))

    def run_script(self, script_id: int, *, wait: float | None = None) -> JSON:
        """Run it now; with ``wait`` (≤ 120 s) the finished run comes back if it ended in time."""
        return self._do(_SubAccountCalls.run_script(script_id, wait))  # type: ignore[no-any-return]

    def script_runs(self, script_id: int) -> Iterator[JSON]:
        """Its runs, newest first: status, exit code, output (last 64 KB) and error."""
        return self._pages(f"/api/interface/{int(script_id)}/runs")

    def connect(self, name_or_id: str | int) -> Connection:
        """The writeback object of one connection (needs an identity token)."""
        connection = _pick_connection(self._named_connections(), name_or_id)
        return Connection(self, int(connection["id"]), str(connection["name"]))

    def _named_connections(self) -> list[JSON]:
        catalogue = {c["name"]: c["display_name"] for c in self._do(_Call("GET", "/api/servertypes"))["results"]}
        return [{**c, "connector_display_name": catalogue.get(c["connector"], "")} for c in self.connections()]

    def refresh_connection(
        self,
        connection_name: str | None = None,
        connection_id: int | None = None,
        *,
        is_async: bool = True,
        tables: list[str] | None = None,
        categories: list[str] | None = None,
    ) -> JSON:
        """Sync a connection (after writes). ``is_async=False`` waits for the run and returns it;
        ``categories``: only those divisions of a connector that has them."""
        if (connection_name is None) == (connection_id is None):
            raise ValueError("Pass exactly one of connection_name or connection_id.")
        server_id = connection_id if connection_id is not None else self.connect(str(connection_name)).id
        for attempt in range(REFRESH_ATTEMPTS):
            try:
                started = self.sync(int(server_id), tables, categories)
                break
            except BFFError as exc:
                if exc.code != "sync_already_running" or attempt == REFRESH_ATTEMPTS - 1:
                    raise
                if is_async:
                    return {"server_id": server_id, "syncing": True, "detail": exc.detail}
                self._wait(int(server_id))  # the running sync may predate the writes: run one more after it
        if is_async:
            return started
        return self._wait(int(server_id), _started_run(started))

    def _wait(self, server_id: int, run_id: int | None = None) -> JSON:
        """Until the connection's sync (run ``run_id`` when known) has ended; that run.

        By its id: the newest run may be another one by then (a refresh a write asked for)."""
        while True:
            if run_id is None:
                if not self.sync_status(server_id).get("running"):
                    return next(self.runs(server_id))
            else:
                run = _find_run(self._do(_Call("GET", f"/api/server/{int(server_id)}/runs", params=_RECENT)), run_id)
                if run is not None and run.get("status") not in _ACTIVE_RUN:
                    return run
            time.sleep(POLL_SECONDS)


class Connection:
    """One connection's writeback functions: ``add``, ``update``, ``delete``, ``upsert``, ``get``, ``search``,
    ``proxy``.

    ``timeout=True`` picks the short retry policy, ``refresh=True`` queues a sync of
    the object's table after the write, ``idempotency_key`` makes a retry safe.
    """

    def __init__(self, owner: SubAccountClient, server_id: int, name: str) -> None:
        self._owner, self.id, self.name = owner, server_id, name

    def __repr__(self) -> str:
        return f"Connection(id={self.id}, name={self.name!r})"

    def objects(self) -> list[JSON]:
        return self._owner._do(_Call("GET", f"/api/server/{self.id}/objects"))["results"]  # type: ignore[no-any-return]

    def add(
        self,
        object: str,
        fields: Mapping[str, Any] | None = None,
        /,
        *,
        timeout: bool = False,
        refresh: bool = False,
        idempotency_key: str | None = None,
        **kwargs: Any,
    ) -> JSON:
        call = _RecordCalls.add(self.id, object, _fields(fields, kwargs), timeout, refresh, idempotency_key)
        return self._owner._do(call)  # type: ignore[no-any-return]

    def update(
        self,
        object: str,
        /,
        id: Any,
        fields: Mapping[str, Any] | None = None,
        *,
        timeout: bool = False,
        refresh: bool = False,
        idempotency_key: str | None = None,
        **kwargs: Any,
    ) -> JSON:
        call = _RecordCalls.update(self.id, object, id, _fields(fields, kwargs), timeout, refresh, idempotency_key)
        return self._owner._do(call)  # type: ignore[no-any-return]

    def delete(
        self, object: str, id: Any, *, timeout: bool = False, refresh: bool = False, idempotency_key: str | None = None
    ) -> None:
        self._owner._do(_RecordCalls.delete(self.id, object, id, timeout, refresh, idempotency_key))

    def upsert(
        self,
        object: str,
        fields: Mapping[str, Any] | None = None,
        /,
        *,
        match: str,
        timeout: bool = False,
        refresh: bool = False,
        idempotency_key: str | None = None,
        **kwargs: Any,
    ) -> JSON:
        call = _RecordCalls.upsert(self.id, object, _fields(fields, kwargs), match, timeout, refresh, idempotency_key)
        return self._owner._do(call)  # type: ignore[no-any-return]

    def get(self, object: str, id: Any, *, timeout: bool = False) -> JSON:
        return self._owner._do(_RecordCalls.get(self.id, object, id, timeout))  # type: ignore[no-any-return]

    def search(self, object: str, *, timeout: bool = False, **fields: Any) -> list[JSON]:
        return self._owner._do(_RecordCalls.search(self.id, object, fields, timeout))["results"]  # type: ignore[no-any-return]

    def proxy(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """A raw call under the connector's base URL; the provider's status and body come back as they are."""
        try:
            return self._owner._client.request(
                method.upper(),
                f"/api/server/{self.id}/proxy/{path.lstrip('/')}",
                params=params,
                json=json,
                content=content,
                headers=_headers(self._owner._token, headers),
            )
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from None


# -- asynchronous ---------------------------------------------------------------------------------


class _AsyncBase:
    def __init__(
        self, base_url: str, token: str, *, client: httpx.AsyncClient | None = None, timeout: float = 30.0
    ) -> None:
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(base_url=base_url, timeout=timeout)
        self._base_url = base_url
        self._token = token

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _do(self, call: _Call) -> Any:
        try:
            response = await self._client.request(
                call.method, call.path, params=call.params, json=call.json, headers=_headers(self._token, call.headers)
            )
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from None
        except RuntimeError as exc:  # httpx: "Cannot send a request, as the client has been closed"
            raise BFFError("client_closed", 0, f"This client was closed: {exc}") from None
        return _check(response)

    async def _pages(
        self, path: str, params: Mapping[str, Any] | None = None, page_size: int = 100
    ) -> AsyncIterator[JSON]:
        page = 1
        while True:
            body = await self._do(_Call("GET", path, params={**(params or {}), "page": page, "page_size": page_size}))
            for item in body["results"]:
                yield item
            if not body.get("next"):
                return
            page += 1


class AsyncPartnerClient(_AsyncBase):
    async def create_sub_account(self, external_id: str, **fields: Any) -> JSON:
        return await self._do(_PartnerCalls.create_sub_account(external_id, **fields))  # type: ignore[no-any-return]

    def sub_accounts(self, page_size: int = 100) -> AsyncIterator[JSON]:
        return self._pages("/api/partner/sub-accounts", page_size=page_size)

    async def integrate_token(self, external_id: str, **fields: Any) -> JSON:
        return await self._do(_PartnerCalls.integrate_token(external_id, **fields))  # type: ignore[no-any-return]

    async def identity_token(
        self, account_id: int | None = None, external_id: str | None = None, *, expire: bool = True
    ) -> JSON:
        return await self._do(_PartnerCalls.identity_token(account_id, external_id, expire=expire))  # type: ignore[no-any-return]

    async def revoke_tokens(self, account_id: int) -> JSON:
        return await self._do(_PartnerCalls.revoke_tokens(account_id))  # type: ignore[no-any-return]

    async def database_credentials(self, account_id: int) -> JSON:
        return await self._do(_PartnerCalls.database_credentials(account_id))  # type: ignore[no-any-return]

    async def sub_account_client(
        self, account_id: int | None = None, external_id: str | None = None
    ) -> AsyncSubAccountClient:
        token = (await self.identity_token(account_id, external_id))["token"]
        return AsyncSubAccountClient(self._base_url, token, client=self._client)


class AsyncSubAccountClient(_AsyncBase):
    def connections(self) -> AsyncIterator[JSON]:
        return self._pages("/api/servers")

    async def connection(self, server_id: int) -> JSON:
        return await self._do(_SubAccountCalls.connection(server_id))  # type: ignore[no-any-return]

    async def delete_connection(self, server_id: int) -> None:
        await self._do(_SubAccountCalls.delete(server_id))

    async def sync(self, server_id: int, tables: list[str] | None = None, categories: list[str] | None = None) -> JSON:
        return await self._do(_SubAccountCalls.sync(server_id, tables, categories))  # type: ignore[no-any-return]

    async def health(self, server_id: int) -> JSON:
        return await self._do(_SubAccountCalls.health(server_id))  # type: ignore[no-any-return]

    async def sync_status(self, server_id: int) -> JSON:
        return await self._do(_SubAccountCalls.sync_status(server_id))  # type: ignore[no-any-return]

    def runs(self, server_id: int) -> AsyncIterator[JSON]:
        return self._pages(f"/api/server/{int(server_id)}/runs")

    async def applications(self) -> list[JSON]:
        return (await self._do(_SubAccountCalls.applications()))["results"]  # type: ignore[no-any-return]

    async def database_id(self) -> int:
        return int((await self.applications())[0]["id"])

    def tables(self, database_id: int) -> AsyncIterator[JSON]:
        return self._pages(f"/api/database/tables/database/{int(database_id)}/")

    def rows(
        self,
        table_id: int,
        *,
        filters: Mapping[str, Any] | None = None,
        order_by: str | Sequence[str] | None = None,
        updated_since: str | datetime.datetime | None = None,
        search: str | None = None,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        user_field_names: bool = True,
        page_size: int = 100,
    ) -> AsyncIterator[JSON]:
        params = row_params(
            filters=filters,
            order_by=order_by,
            updated_since=updated_since,
            search=search,
            include=include,
            exclude=exclude,
            user_field_names=user_field_names,
        )
        return self._pages(f"/api/database/rows/table/{int(table_id)}/", params, page_size)

    async def create_query_table(self, name: str, query: str) -> JSON:
        return await self._do(_SubAccountCalls.create_query_table(name, query))  # type: ignore[no-any-return]

    async def query_table(self, table_id: int) -> JSON:
        return await self._do(_SubAccountCalls.query_table(table_id))  # type: ignore[no-any-return]

    async def update_query_table(self, table_id: int, *, name: str | None = None, query: str | None = None) -> JSON:
        return await self._do(_SubAccountCalls.update_query_table(table_id, name, query))  # type: ignore[no-any-return]

    async def delete_query_table(self, table_id: int) -> None:
        await self._do(_SubAccountCalls.delete_query_table(table_id))

    async def query(self, sql: str, *, limit: int = 1000) -> list[JSON]:
        return (await self._do(_SubAccountCalls.query(sql, limit)))["rows"]  # type: ignore[no-any-return]

    async def run_statement(self, sql: str, *, limit: int = 1000) -> JSON:
        return await self._do(_SubAccountCalls.query(sql, limit, write=True))  # type: ignore[no-any-return]

    async def add_script(self, name: str, code: str, schedule: int | None = None) -> JSON:
        return await self._do(_SubAccountCalls.add_script(name, code, schedule))  # type: ignore[no-any-return]

    def scripts(self) -> AsyncIterator[JSON]:
        return self._pages("/api/interface")

    async def script(self, script_id: int) -> JSON:
        return await self._do(_SubAccountCalls.script(script_id))  # type: ignore[no-any-return]

    async def update_script(
        self, script_id: int, *, name: str | None = None, code: str | None = None, schedule: int | None | _Keep = KEEP
    ) -> JSON:
        changes = _script_changes(name, code, schedule)
        return await self._do(_SubAccountCalls.update_script(script_id, changes))  # type: ignore[no-any-return]

    async def delete_script(self, script_id: int) -> None:
        await self._do(_SubAccountCalls.delete_script(script_id))

    async def run_script(self, script_id: int, *, wait: float | None = None) -> JSON:
        return await self._do(_SubAccountCalls.run_script(script_id, wait))  # type: ignore[no-any-return]

    def script_runs(self, script_id: int) -> AsyncIterator[JSON]:
        return self._pages(f"/api/interface/{int(script_id)}/runs")

    async def connect(self, name_or_id: str | int) -> AsyncConnection:
        """The writeback object of one connection (needs an identity token)."""
        catalogue = {
            c["name"]: c["display_name"] for c in (await self._do(_Call("GET", "/api/servertypes")))["results"]
        }
        connections = [
            {**c, "connector_display_name": catalogue.get(c["connector"], "")} async for c in self.connections()
        ]
        connection = _pick_connection(connections, name_or_id)
        return AsyncConnection(self, int(connection["id"]), str(connection["name"]))

    async def refresh_connection(
        self,
        connection_name: str | None = None,
        connection_id: int | None = None,
        *,
        is_async: bool = True,
        tables: list[str] | None = None,
        categories: list[str] | None = None,
    ) -> JSON:
        """Sync a connection (after writes). ``is_async=False`` waits for the run and returns it;
        ``categories``: only those divisions of a connector that has them."""
        if (connection_name is None) == (connection_id is None):
            raise ValueError("Pass exactly one of connection_name or connection_id.")
        server_id = connection_id if connection_id is not None else (await self.connect(str(connection_name))).id
        for attempt in range(REFRESH_ATTEMPTS):
            try:
                started = await self.sync(int(server_id), tables, categories)
                break
            except BFFError as exc:
                if exc.code != "sync_already_running" or attempt == REFRESH_ATTEMPTS - 1:
                    raise
                if is_async:
                    return {"server_id": server_id, "syncing": True, "detail": exc.detail}
                await self._wait(int(server_id))
        if is_async:
            return started
        return await self._wait(int(server_id), _started_run(started))

    async def _wait(self, server_id: int, run_id: int | None = None) -> JSON:
        """:meth:`SubAccountClient._wait`, awaited."""
        while True:
            if run_id is None:
                if not (await self.sync_status(server_id)).get("running"):
                    return await anext(self.runs(server_id))
            else:
                page = await self._do(_Call("GET", f"/api/server/{int(server_id)}/runs", params=_RECENT))
                run = _find_run(page, run_id)
                if run is not None and run.get("status") not in _ACTIVE_RUN:
                    return run
            await _sleep(POLL_SECONDS)


class AsyncConnection:
    """:class:`Connection`, awaited."""

    def __init__(self, owner: AsyncSubAccountClient, server_id: int, name: str) -> None:
        self._owner, self.id, self.name = owner, server_id, name

    def __repr__(self) -> str:
        return f"AsyncConnection(id={self.id}, name={self.name!r})"

    async def objects(self) -> list[JSON]:
        return (await self._owner._do(_Call("GET", f"/api/server/{self.id}/objects")))["results"]  # type: ignore[no-any-return]

    async def add(
        self,
        object: str,
        fields: Mapping[str, Any] | None = None,
        /,
        *,
        timeout: bool = False,
        refresh: bool = False,
        idempotency_key: str | None = None,
        **kwargs: Any,
    ) -> JSON:
        call = _RecordCalls.add(self.id, object, _fields(fields, kwargs), timeout, refresh, idempotency_key)
        return await self._owner._do(call)  # type: ignore[no-any-return]

    async def update(
        self,
        object: str,
        /,
        id: Any,
        fields: Mapping[str, Any] | None = None,
        *,
        timeout: bool = False,
        refresh: bool = False,
        idempotency_key: str | None = None,
        **kwargs: Any,
    ) -> JSON:
        call = _RecordCalls.update(self.id, object, id, _fields(fields, kwargs), timeout, refresh, idempotency_key)
        return await self._owner._do(call)  # type: ignore[no-any-return]

    async def delete(
        self, object: str, id: Any, *, timeout: bool = False, refresh: bool = False, idempotency_key: str | None = None
    ) -> None:
        await self._owner._do(_RecordCalls.delete(self.id, object, id, timeout, refresh, idempotency_key))

    async def upsert(
        self,
        object: str,
        fields: Mapping[str, Any] | None = None,
        /,
        *,
        match: str,
        timeout: bool = False,
        refresh: bool = False,
        idempotency_key: str | None = None,
        **kwargs: Any,
    ) -> JSON:
        call = _RecordCalls.upsert(self.id, object, _fields(fields, kwargs), match, timeout, refresh, idempotency_key)
        return await self._owner._do(call)  # type: ignore[no-any-return]

    async def get(self, object: str, id: Any, *, timeout: bool = False) -> JSON:
        return await self._owner._do(_RecordCalls.get(self.id, object, id, timeout))  # type: ignore[no-any-return]

    async def search(self, object: str, *, timeout: bool = False, **fields: Any) -> list[JSON]:
        found = await self._owner._do(_RecordCalls.search(self.id, object, fields, timeout))
        return found["results"]  # type: ignore[no-any-return]

    async def proxy(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """A raw call under the connector's base URL; the provider's status and body come back as they are."""
        try:
            return await self._owner._client.request(
                method.upper(),
                f"/api/server/{self.id}/proxy/{path.lstrip('/')}",
                params=params,
                json=json,
                content=content,
                headers=_headers(self._owner._token, headers),
            )
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from None
