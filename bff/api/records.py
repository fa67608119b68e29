"""Writeback and raw API calls over a connection (DESIGN §12). Identity tokens only.

=========================================================  ==========================================
``GET /api/server/{id}/objects``                           what the connector can write
``POST /api/server/{id}/records/{object}``                 add → ``201 {id, record}``
``PATCH /api/server/{id}/records/{object}/{record_id}``    update → ``200 {id, record}``
``DELETE /api/server/{id}/records/{object}/{record_id}``   delete → ``204``
``PUT /api/server/{id}/records/{object}?match=<field>``    upsert → ``201`` created or ``200`` updated
``GET /api/server/{id}/records/{object}/{record_id}``      get → ``200 {id, record}``
``GET /api/server/{id}/records/{object}?<field>=<value>``  search → ``{count, next, previous, results}``
``ANY /api/server/{id}/proxy/{path}``                      a raw call under the connector's base URL
=========================================================  ==========================================

``?timeout=true`` uses the short retry policy, ``?refresh=true`` queues one
sync of the object's table after success, ``Idempotency-Key`` replays the first
answer (see :mod:`bff.idempotency`). Every write is logged on the connection
(object, action, status; never field values).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from .. import lifecycle
from ..auth import authenticate, identity_only, path_connection_id, services
from ..connectors import (
    ConnectorError,
)
from ..connectors.writer import Writer
from ..contract.queries import UpsertQuery, WriteQuery
from ..contract.requests import RecordFields
from ..errors import ApiError, connector_error, not_found, validation_error
from ..http import api_route, parse_body, parse_query
from ..idempotency import MAX_KEY_LENGTH, fingerprint
from ..services.writeback import READS, Action, EngineLog, Writeback, writeback_for
from ..store import Connection, SubAccount

__all__ = ["proxy_suffix", "require_writable", "routes"]

RESERVED_QUERY = frozenset(("timeout", "refresh", "match", "page", "page_size"))
# Request headers a proxied call may carry (everything else, auth and hop-by-hop included, is dropped).
FORWARD_REQUEST = frozenset(
    ("accept", "accept-language", "content-type", "if-match", "if-none-match", "idempotency-key")
)
DROP_RESPONSE = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "set-cookie",
        "www-authenticate",
        "content-length",
        "content-encoding",
        "server",
        "date",
    )
)
PROXY_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")


# --------------------------------------------------------------------------- access


async def require_writable(request: Request) -> tuple[SubAccount, Connection]:
    """The identity token's sub-account and its connection ``{id}``, ready to call its provider."""
    # The connection comes in the same round trip as the token's partner and sub-account.
    caller = await authenticate(request, ("integrate", "identity"), connection_id=path_connection_id(request))
    identity_only(caller, what="Writeback and the proxy")
    account, connection = caller.sub_account, caller.connection
    assert account is not None
    if connection is None:
        raise not_found("No such connection.")
    refused = lifecycle.refusal(connection.health_status, lifecycle.can_write(connection.health_status))
    if refused == "connection_disabled":
        raise ApiError(409, refused, "This connection is disabled; enable it first.")
    if refused is not None:
        raise ApiError(409, refused, "Finish connecting (authorise, choose its configuration) first.")
    return account, connection


async def perform(request: Request, action: str, object_name: str, call: Action, *, body: Any = None) -> Response:
    """Parse what the write needs from the request, run it (:meth:`Writeback.execute`), answer."""
    _, connection = await require_writable(request)
    asked = parse_query(request, WriteQuery)
    key = request.headers.get("idempotency-key") if action not in READS else None
    idempotency = None
    if key is not None:
        if not 0 < len(key) <= MAX_KEY_LENGTH:
            raise validation_error({"Idempotency-Key": f"Must be 1 to {MAX_KEY_LENGTH} characters."})
        query = {k: v for k, v in request.query_params.items() if k in ("match",)}
        idempotency = (key, fingerprint(request.method, request.url.path.rstrip("/"), query, body))
    outcome = await writeback_for(request).execute(
        connection,
        action,
        object_name,
        call,
        idempotency=idempotency,
        short=bool(asked.timeout),
        refresh=bool(asked.refresh),
    )
    return _answer(outcome.status, outcome.body, replayed=outcome.replayed)


def _answer(status: int, body: Any, *, replayed: bool = False) -> Response:
    headers = {"Idempotent-Replayed": "true"} if replayed else None
    if status == 204:
        return Response(status_code=204, headers=headers)
    return JSONResponse(body, status_code=status, headers=headers)


def _record(result: Any) -> dict[str, Any]:
    return {"id": result.id, "record": result.record}


# --------------------------------------------------------------------------- endpoints


async def list_objects(request: Request) -> JSONResponse:
    """What the connector can write: objects, their actions and fields."""
    _, connection = await require_writable(request)
    connector = services(request).connectors[connection.connector]
    results = [o.public_dict() for o in connector.objects]
    return JSONResponse({"count": len(results), "next": None, "previous": None, "results": results})


async def records(request: Request) -> Response:
    """``POST`` add, ``PUT`` upsert (``?match=``), ``GET`` search (``?<field>=<value>``)."""
    object_name = request.path_params["object"]
    if request.method == "GET":
        match = {k: v for k, v in request.query_params.items() if k not in RESERVED_QUERY}

        async def search(writer: Writer) -> tuple[int, Any]:
            found = await writer.search(object_name, match)
            return 200, {"count": len(found), "next": None, "previous": None, "results": found}

        return await perform(request, "search", object_name, search)
    fields = (await parse_body(request, RecordFields)).model_dump()
    if request.method == "POST":

        async def add(writer: Writer) -> tuple[int, Any]:
            result = await writer.add(object_name, fields)
            return 201, _record(result)

        return await perform(request, "add", object_name, add, body=fields)
    match_field = parse_query(request, UpsertQuery).match

    async def upsert(writer: Writer) -> tuple[int, Any]:
        result = await writer.upsert(object_name, fields, match_field)
        return 201 if result.created else 200, _record(result)

    return await perform(request, "upsert", object_name, upsert, body=fields)


async def record(request: Request) -> Response:
    """``GET`` get, ``PATCH`` update, ``DELETE`` delete of one record."""
    object_name = request.path_params["object"]
    record_id = request.path_params["record_id"]
    if record_id.strip() in ("", ".", "..") or "/" in record_id or "\\" in record_id:
        # A URL joiner (httpx) would turn ".." into the parent of the record's path at the provider.
        raise validation_error({"record_id": "Not a record id: `.`, `..` and ids with slashes are refused."})
    if request.method == "GET":

        async def get(writer: Writer) -> tuple[int, Any]:
            result = await writer.get(object_name, record_id)
            return 200, _record(result)

        return await perform(request, "get", object_name, get)
    if request.method == "DELETE":

        async def delete(writer: Writer) -> tuple[int, Any]:
            await writer.delete(object_name, record_id)
            return 204, None

        return await perform(request, "delete", object_name, delete)
    fields = (await parse_body(request, RecordFields)).model_dump()

    async def update(writer: Writer) -> tuple[int, Any]:
        result = await writer.update(object_name, record_id, fields)
        return 200, _record(result)

    return await perform(request, "update", object_name, update, body=fields)


# --------------------------------------------------------------------------- proxy


def proxy_suffix(request: Request) -> str:
    """The raw (still percent-encoded) path after ``/proxy/``, refused when it could leave the base URL."""
    raw_path = request.scope.get("raw_path") or request.url.path.encode()
    raw = raw_path.decode("latin-1")
    marker = "/proxy/"
    at = raw.find(marker)
    suffix = raw[at + len(marker) :] if at >= 0 else ""
    decoded = suffix
    for _ in range(3):  # %252e%252e → %2e%2e → ..
        decoded = unquote(decoded)
    refused = (
        decoded.startswith(("/", "\\"))
        or "\\" in decoded
        or "://" in decoded
        or bool(_SCHEME.match(decoded))
        or any(part in (".", "..") for part in decoded.split("/"))
        or any(ord(ch) < 32 for ch in decoded)
        or "#" in decoded
    )
    if refused or not suffix:
        raise ApiError(
            400,
            "proxy_path_invalid",
            "The proxy only reaches paths under the connector's base URL: "
            "no absolute URLs, '//host', '..' or encoded variants.",
        )
    return suffix


async def proxy(request: Request) -> Response:
    """A raw call to the provider with the connection's auth and the retry policy; status and body pass through."""
    _, connection = await require_writable(request)
    suffix = proxy_suffix(request)
    log = EngineLog()
    wb: Writeback = writeback_for(request)
    session = wb.writer(connection, short=False, log=log).session
    auth_headers, auth_params = session.auth_names()
    try:
        base = await session.base_url()
        url = httpx.URL(base + "/" + suffix)
        base_url = httpx.URL(base + "/")
        if (url.scheme, url.host, url.port) != (
            base_url.scheme,
            base_url.host,
            base_url.port,
        ) or not url.path.startswith(base_url.path):
            raise ApiError(400, "proxy_path_invalid", "The proxy only reaches paths under the connector's base URL.")
        params = {k: v for k, v in request.query_params.multi_items() if k not in auth_params}
        headers = {
            k: v for k, v in request.headers.items() if k.lower() in FORWARD_REQUEST and k.lower() not in auth_headers
        }
        content = await request.body()
        response = await session.request(
            request.method,
            url,
            params,
            f"proxy {request.method}",
            headers=headers,
            content=content or None,
            raise_on_auth=False,
        )
    except ConnectorError as exc:
        error = connector_error(exc)
        _log_proxy(wb, connection, request.method, suffix, error.status, log)
        raise error from None
    _log_proxy(wb, connection, request.method, suffix, response.status_code, log)
    out_headers = {
        k: v for k, v in response.headers.items() if k.lower() not in DROP_RESPONSE and k.lower() not in auth_headers
    }
    body = response.content
    secrets = session.secret_values()
    if secrets and any(s.encode() in body for s in secrets):
        text = body.decode("utf-8", "replace")
        body = session.scrub(text).encode()
    return Response(body, status_code=response.status_code, headers=out_headers)


def _log_proxy(wb: Writeback, connection: Connection, method: str, suffix: str, status: int, log: EngineLog) -> None:
    path = "/" + suffix.split("?", 1)[0]
    wb.log.add(
        connection.id,
        [*log.lines, ("info" if status < 400 else "warning", f"Proxy: {method} {path[:200]} → {status}.")],
    )


def routes() -> list[BaseRoute]:
    return [
        *api_route("/api/server/{id}/objects", list_objects, methods=["GET"]),
        *api_route("/api/server/{id}/records/{object}", records, methods=["GET", "POST", "PUT"]),
        *api_route("/api/server/{id}/records/{object}/{record_id}", record, methods=["GET", "PATCH", "DELETE"]),
        *api_route("/api/server/{id}/proxy/{path:path}", proxy, methods=PROXY_METHODS, name="proxy"),
    ]
