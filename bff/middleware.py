"""The ASGI middleware: access log, security headers, CORS for the token's partner's origins, header and
body size limits, as one layer (:class:`EdgeMiddleware`)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_logger = logging.getLogger("bff.access")

PUBLIC_CORS_PREFIXES = ("/embed/v1/", "/embed/v1.3/")  # v1.3: the source documents' script path
CORS_ALLOW_HEADERS = "Authorization, Content-Type, If-None-Match"
CORS_ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
CORS_EXPOSE_HEADERS = "ETag, Retry-After"
CORS_MAX_AGE = "600"
PARTNER_ORIGIN_CACHE_SECONDS = 2.0
PARTNER_ORIGIN_CACHE_SIZE = 4096
HSTS_VALUE = b"max-age=63072000; includeSubDomains"
NOSNIFF = (b"x-content-type-options", b"nosniff")
NO_STORE = (b"cache-control", b"no-store")
# As production servers cap them (nginx: 8-32 KiB of headers, Apache: 100 fields): more is refused with 431.
MAX_HEADER_COUNT = 100
MAX_HEADER_BYTES = 16 * 1024


async def _send_json(
    send: Send, status: int, body: dict[str, object], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
            + (headers or []),
        }
    )
    await send({"type": "http.response.body", "body": payload})


class _BodyTooLarge(Exception):
    pass


class EdgeMiddleware:
    """What every request passes through, from the outside in (one layer, not four: each layer was
    another coroutine on every request and on every resumption of it):

    1. the access log: one line per request when ``bff.access`` logs INFO: method, path (never the
       query string: it may hold OAuth codes), status, ms;
    2. security headers on every answer: ``nosniff`` always, ``no-store`` on the API (its answers hold
       customer data or tokens: no browser or proxy may keep them; the SDK does its own conditional
       requests with ``If-None-Match``), HSTS when asked;
    3. CORS headers only for origins registered on the token's own partner, public assets for all. A
       preflight carries no token, so it is answered for any registered origin (it reveals nothing).
       The request itself gets CORS headers only when its origin is registered on the partner its
       token belongs to; without a valid token (an error answer follows) any registered origin may
       read the error. ``is_allowed`` is an async callable (the store's origin list, cached briefly),
       so a partner added by `bff partner create` to a running server is picked up; ``partner_of``
       names the partner of a verified token (``None`` if it does not verify); ``partner_has_origin``
       asks the store;
    4. more than ``MAX_HEADER_COUNT`` headers or ``MAX_HEADER_BYTES`` of them are refused with 431,
       bodies over ``max_bytes`` with 413 (by Content-Length or while streaming).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        is_allowed: Callable[[str], Awaitable[bool]],
        partner_of: Callable[[str], int | None] | None = None,
        partner_has_origin: Callable[[int, str], Awaitable[bool]] | None = None,
        hsts: bool = False,
        no_store_prefixes: tuple[str, ...] = ("/api/", "/oauth/"),
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.is_allowed = is_allowed
        self.partner_of = partner_of
        self.partner_has_origin = partner_has_origin
        self.hsts = hsts
        self.no_store_prefixes = no_store_prefixes
        self._answers: dict[tuple[int, str], tuple[float, bool]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # 1. The access log.
        logged = access_logger.isEnabledFor(logging.INFO)
        started = time.perf_counter()
        status = 500
        if logged:
            outer_send = send

            async def capture(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await outer_send(message)

            send = capture
        try:
            # 2. Security headers on whatever is answered from here on.
            send = self._with_security_headers(scope, send)
            raw_length: bytes | None = None
            chunked = has_origin = False
            headers = scope["headers"]
            size = 0
            for name, value in headers:  # ASGI servers give header names in lower case
                size += len(name) + len(value)
                if name == b"content-length":
                    raw_length = value
                elif name == b"transfer-encoding":
                    chunked = True
                elif name == b"origin":
                    has_origin = True
            # 3. CORS (most calls come from back-ends: no Origin, nothing to do).
            if has_origin:
                with_cors = await self._cors(scope, send)
                if with_cors is None:  # a preflight, answered
                    return
                send = with_cors
            # 4. The size limits.
            if len(headers) > MAX_HEADER_COUNT or size > MAX_HEADER_BYTES:
                await _send_json(
                    send,
                    431,
                    {
                        "detail": f"Too many or too large request headers (at most {MAX_HEADER_COUNT},"
                        f" {MAX_HEADER_BYTES // 1024} KiB in all).",
                        "code": "headers_too_large",
                    },
                )
                return
            length = raw_length.decode("latin-1") if raw_length is not None else None
            if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
                await self._reject_body(send)
                return
            if length is not None and not chunked:
                # The server delivers exactly Content-Length bytes of body: nothing to count.
                await self.app(scope, receive, send)
                return
            await self._counting_body(scope, receive, send)
        finally:
            if logged:
                access_logger.info(
                    "%s %s %d %.1fms", scope["method"], scope["path"], status, (time.perf_counter() - started) * 1000
                )

    def _with_security_headers(self, scope: Scope, send: Send) -> Send:
        no_store = scope["path"].startswith(self.no_store_prefixes)
        hsts_wanted = self.hsts

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = []
                nosniff = hsts = False
                for header in message.get("headers", ()):
                    lower = header[0].lower()
                    if lower == b"cache-control" and no_store:
                        continue
                    headers.append(header)
                    if lower == b"x-content-type-options":
                        nosniff = True
                    elif lower == b"strict-transport-security":
                        hsts = True
                if not nosniff:
                    headers.append(NOSNIFF)
                if no_store:
                    headers.append(NO_STORE)
                if hsts_wanted and not hsts:
                    headers.append((b"strict-transport-security", HSTS_VALUE))
                message = {**message, "headers": headers}
            await send(message)

        return send_with_headers

    async def _counting_body(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app with a body of unknown length (chunked, or no Content-Length), counted as it streams."""
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._reject_body(send)

    async def _reject_body(self, send: Send) -> None:
        await _send_json(
            send,
            413,
            {
                "detail": f"The request body is larger than the {self.max_bytes} bytes allowed.",
                "code": "payload_too_large",
            },
        )

    async def _allowed_for_token(self, authorization: str, origin: str) -> bool | None:
        """Whether the token's own partner registered ``origin``; ``None`` without a valid token."""
        if self.partner_of is None or self.partner_has_origin is None:
            return None
        partner_id = self.partner_of(authorization)
        if partner_id is None:
            return None
        now = time.monotonic()
        cached = self._answers.get((partner_id, origin))
        if cached is not None and now - cached[0] < PARTNER_ORIGIN_CACHE_SECONDS:
            return cached[1]
        answer = await self.partner_has_origin(partner_id, origin)
        if len(self._answers) >= PARTNER_ORIGIN_CACHE_SIZE:
            self._answers.clear()
        self._answers[partner_id, origin] = (now, answer)
        return answer

    async def _cors(self, scope: Scope, send: Send) -> Send | None:
        """``send`` with CORS headers when the request's Origin may read the answer (``send`` itself
        when it may not); ``None`` when this was a preflight, answered here."""
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if not origin:
            return send
        public = scope["path"].startswith(PUBLIC_CORS_PREFIXES)
        preflight = scope["method"] == "OPTIONS" and "access-control-request-method" in headers
        authorization = headers.get("authorization")
        by_token = (
            None if public or preflight or not authorization else await self._allowed_for_token(authorization, origin)
        )
        allowed = public or (by_token if by_token is not None else await self.is_allowed(origin))
        if preflight:
            if not allowed:
                await _send_json(
                    send,
                    403,
                    {"detail": f"Origin {origin} is not registered on any partner.", "code": "origin_not_allowed"},
                )
                return None
            await send(
                {
                    "type": "http.response.start",
                    "status": 204,
                    "headers": [
                        (b"access-control-allow-origin", b"*" if public else origin.encode()),
                        (b"access-control-allow-methods", CORS_ALLOW_METHODS.encode()),
                        (b"access-control-allow-headers", CORS_ALLOW_HEADERS.encode()),
                        (b"access-control-max-age", CORS_MAX_AGE.encode()),
                        (b"vary", b"Origin"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return None
        if not allowed:
            return send

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [
                    (b"access-control-allow-origin", b"*" if public else origin.encode()),
                    (b"access-control-expose-headers", CORS_EXPOSE_HEADERS.encode()),
                    (b"vary", b"Origin"),
                ]
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        return send_with_cors
