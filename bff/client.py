"""A small typed client for a partner's back-end, built on httpx.

    from bff.client import PartnerClient

    partner = PartnerClient("http://127.0.0.1:8000", partner_token)
    minted = partner.integrate_token("wood_123", first_name="John")   # for the browser
    customer = partner.sub_account_client(external_id="wood_123")     # identity token inside
    for connection in customer.connections():
        for table in customer.tables(customer.database_id()):
            for row in customer.rows(table["id"]):
                ...

``AsyncPartnerClient`` / ``AsyncSubAccountClient`` have the same methods, awaited
(iterators become async iterators). Every failure raises :class:`BFFError`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator, Mapping
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


class _SubAccountCalls:
    @staticmethod
    def connection(server_id: int) -> _Call:
        return _Call("GET", f"/api/server/{int(server_id)}")

    @staticmethod
    def delete(server_id: int) -> _Call:
        return _Call("DELETE", f"/api/server/{int(server_id)}")

    @staticmethod
    def sync(server_id: int, tables: list[str] | None = None) -> _Call:
        return _Call("POST", f"/api/server/{int(server_id)}/sync", json={"tables": tables} if tables else {})

    @staticmethod
    def health(server_id: int) -> _Call:
        return _Call("GET", f"/api/server/{int(server_id)}/health")

    @staticmethod
    def sync_status(server_id: int) -> _Call:
        return _Call("GET", f"/api/server/{int(server_id)}/sync-status")

    @staticmethod
    def applications() -> _Call:
        return _Call("GET", "/api/applications/", params={"exclude_tables": 1})


def _headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept": "application/json"}


# -- synchronous ----------------------------------------------------------------------------------


class _SyncBase:
    def __init__(self, base_url: str, token: str, *, client: httpx.Client | None = None, timeout: float = 30.0) -> None:
        self._client = client or httpx.Client(base_url=base_url, timeout=timeout)
        self._base_url = base_url
        self._token = token

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _do(self, call: _Call) -> Any:
        try:
            response = self._client.request(call.method, call.path, params=call.params, json=call.json, headers=_headers(self._token))
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from None
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

    def identity_token(self, account_id: int | None = None, external_id: str | None = None, *, expire: bool = True) -> JSON:
        return self._do(_PartnerCalls.identity_token(account_id, external_id, expire=expire))  # type: ignore[no-any-return]

    def revoke_tokens(self, account_id: int) -> JSON:
        return self._do(_PartnerCalls.revoke_tokens(account_id))  # type: ignore[no-any-return]

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

    def sync(self, server_id: int, tables: list[str] | None = None) -> JSON:
        return self._do(_SubAccountCalls.sync(server_id, tables))  # type: ignore[no-any-return]

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

    def rows(self, table_id: int, *, user_field_names: bool = True, page_size: int = 100) -> Iterator[JSON]:
        params = {"user_field_names": "True"} if user_field_names else {}
        return self._pages(f"/api/database/rows/table/{int(table_id)}/", params, page_size)


# -- asynchronous ---------------------------------------------------------------------------------


class _AsyncBase:
    def __init__(self, base_url: str, token: str, *, client: httpx.AsyncClient | None = None, timeout: float = 30.0) -> None:
        self._client = client or httpx.AsyncClient(base_url=base_url, timeout=timeout)
        self._base_url = base_url
        self._token = token

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _do(self, call: _Call) -> Any:
        try:
            response = await self._client.request(call.method, call.path, params=call.params, json=call.json, headers=_headers(self._token))
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from None
        return _check(response)

    async def _pages(self, path: str, params: Mapping[str, Any] | None = None, page_size: int = 100) -> AsyncIterator[JSON]:
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

    async def identity_token(self, account_id: int | None = None, external_id: str | None = None, *, expire: bool = True) -> JSON:
        return await self._do(_PartnerCalls.identity_token(account_id, external_id, expire=expire))  # type: ignore[no-any-return]

    async def revoke_tokens(self, account_id: int) -> JSON:
        return await self._do(_PartnerCalls.revoke_tokens(account_id))  # type: ignore[no-any-return]

    async def sub_account_client(self, account_id: int | None = None, external_id: str | None = None) -> AsyncSubAccountClient:
        token = (await self.identity_token(account_id, external_id))["token"]
        return AsyncSubAccountClient(self._base_url, token, client=self._client)


class AsyncSubAccountClient(_AsyncBase):
    def connections(self) -> AsyncIterator[JSON]:
        return self._pages("/api/servers")

    async def connection(self, server_id: int) -> JSON:
        return await self._do(_SubAccountCalls.connection(server_id))  # type: ignore[no-any-return]

    async def delete_connection(self, server_id: int) -> None:
        await self._do(_SubAccountCalls.delete(server_id))

    async def sync(self, server_id: int, tables: list[str] | None = None) -> JSON:
        return await self._do(_SubAccountCalls.sync(server_id, tables))  # type: ignore[no-any-return]

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

    def rows(self, table_id: int, *, user_field_names: bool = True, page_size: int = 100) -> AsyncIterator[JSON]:
        params = {"user_field_names": "True"} if user_field_names else {}
        return self._pages(f"/api/database/rows/table/{int(table_id)}/", params, page_size)
