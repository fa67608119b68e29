"""A lean HTTP/1.1 transport for the provider client: asyncio streams under ``httpx.AsyncClient``.

Why: a sync fetches many large JSON pages, and httpx's default transport (httpcore, h11, anyio)
spends about three times the CPU of this one per page. The client above it (URLs, headers, auth,
cookies, redirects, decoding gzip/deflate/br, the ``Response``) stays httpx's.

What it does: keep-alive connections pooled per origin (a total cap with waiting, idle ones
dropped after ``keepalive_expiry``), TLS with httpx's own verified SSL context, bodies framed by
``Content-Length``, chunked encoding or the end of the connection, httpx's timeouts and exception
types, and one retry on a fresh connection for an idempotent request whose reused connection the
server had already closed. Answers are read whole before they are returned.

What it hands to ``httpx.AsyncHTTPTransport`` unchanged: schemes other than http(s), requests with
``Expect``, ``Upgrade`` or a streamed body of unknown length (``Transfer-Encoding``).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import NoReturn, TypeVar

import httpx

__all__ = ["Http11Transport"]

HEAD_LIMIT = 64 * 1024  # bytes of a response's status line and headers, and of one chunk-size line
MAX_CONNECTIONS = 100  # open connections, all origins (httpx's default)
MAX_IDLE_PER_ORIGIN = 10
KEEPALIVE_EXPIRY = 5.0  # seconds an idle connection is kept (httpx's default)
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
DEFAULT_PORTS = {"http": 80, "https": 443}
NO_BODY_STATUS = frozenset({204, 304})
HEX_DIGITS = b"0123456789abcdefABCDEF"
DELEGATED_HEADERS = (b"expect", b"upgrade", b"transfer-encoding")

Origin = tuple[str, str, int]
T = TypeVar("T")


class _Stale(Exception):
    """A reused connection ended (closed, reset) before any byte of the answer."""


@dataclass(eq=False)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    origin: Origin
    reused: bool = False
    idle_since: float = 0.0

    def usable(self, now: float, expiry: float) -> bool:
        """Still open, not past its idle time, and nothing unasked-for waiting on it."""
        return (
            now - self.idle_since < expiry
            and not self.reader.at_eof()
            and self.reader.exception() is None
            and not self.writer.is_closing()
        )

    def close(self) -> None:
        self.writer.close()


@dataclass
class _Answer:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    keep_alive: bool = True


class Http11Transport(httpx.AsyncBaseTransport):
    """``httpx.AsyncClient(transport=Http11Transport())``: HTTP/1.1 over asyncio streams.

    ``ssl_context`` defaults to ``httpx.create_ssl_context()`` (certifi, or ``SSL_CERT_FILE`` /
    ``SSL_CERT_DIR``; verification on). Proxies from the environment are not used, as they never
    were for a client given its own transport."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = MAX_CONNECTIONS,
        max_idle_per_origin: int = MAX_IDLE_PER_ORIGIN,
        keepalive_expiry: float = KEEPALIVE_EXPIRY,
    ) -> None:
        self._ssl = ssl_context or httpx.create_ssl_context()
        self._ssl.set_alpn_protocols(["http/1.1"])
        self._fallback = httpx.AsyncHTTPTransport(verify=self._ssl, retries=0)
        self._max_connections = max_connections
        self._max_idle = max_idle_per_origin
        self._expiry = keepalive_expiry
        self._idle: dict[Origin, list[_Connection]] = {}
        self._open = 0  # connections open or being opened: idle ones included
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False
        self._sweeper: asyncio.TimerHandle | None = None

    # ---- the request ----------------------------------------------------------------------------

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in DEFAULT_PORTS or any(k.lower() in DELEGATED_HEADERS for k, _ in request.headers.raw):
            return await self._fallback.handle_async_request(request)
        if self._closed:
            raise RuntimeError("The transport is closed.")
        origin: Origin = (url.scheme, url.raw_host.decode("ascii"), url.port or DEFAULT_PORTS[url.scheme])
        timeouts: Mapping[str, float | None] = request.extensions.get("timeout") or {}
        payload = _head(request) + await request.aread()
        loop = asyncio.get_running_loop()
        phase = "pool"
        try:
            async with asyncio.timeout(None) as deadline:
                for attempt in (1, 2):
                    phase = "pool"
                    deadline.reschedule(_at(loop, timeouts.get("pool")))
                    conn = await self._acquire(origin, fresh=attempt == 2)
                    try:
                        if conn is None:
                            phase = "connect"
                            deadline.reschedule(_at(loop, timeouts.get("connect")))
                            conn = await self._connect(origin, request)
                        phase = "write"
                        deadline.reschedule(_at(loop, timeouts.get("write")))
                        await _send(conn, payload, request)
                        phase = "read"
                        answer = await _receive(conn, request, _Reads(deadline, timeouts.get("read")))
                    except _Stale as exc:
                        self._discard(conn)
                        if attempt == 1 and request.method in IDEMPOTENT:
                            continue
                        raise httpx.RemoteProtocolError(
                            "Server disconnected without sending a response.", request=request
                        ) from exc
                    except BaseException:  # cancelled or failed half-way: the connection is done for
                        self._discard(conn)
                        raise
                    self._release(
                        conn, answer.keep_alive and "close" not in request.headers.get("connection", "").lower()
                    )
                    break
        except TimeoutError:
            raise _TIMEOUTS[phase](f"Timed out ({phase}).", request=request) from None
        return httpx.Response(
            answer.status,
            headers=answer.headers,
            stream=httpx.ByteStream(answer.body),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": answer.reason},
            request=request,
        )

    async def _connect(self, origin: Origin, request: httpx.Request) -> _Connection:
        scheme, host, port = origin
        tls = scheme == "https"
        try:
            reader, writer = await asyncio.open_connection(
                host,
                port,
                ssl=self._ssl if tls else None,
                server_hostname=host if tls else None,
                limit=HEAD_LIMIT,
            )
        except TimeoutError:
            raise
        except OSError as exc:  # refused, unreachable, unknown name, TLS verification
            raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from exc
        return _Connection(reader, writer, origin)

    # ---- the pool -------------------------------------------------------------------------------

    async def _acquire(self, origin: Origin, *, fresh: bool = False) -> _Connection | None:
        """An idle connection to ``origin`` (unless ``fresh``), or None with a slot reserved for a
        new one; waits while ``max_connections`` are open."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            idle = None if fresh else self._idle.get(origin)
            while idle:
                conn = idle.pop()
                if conn.usable(now, self._expiry):
                    conn.reused = True
                    return conn
                self._drop(conn)
            if self._open < self._max_connections:
                self._open += 1
                return None
            if self._evict_one():
                continue
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # it was this one's turn: pass it on
                else:
                    self._waiters.remove(waiter)
                raise

    def _release(self, conn: _Connection, reusable: bool) -> None:
        idle = self._idle.setdefault(conn.origin, [])
        if not reusable or self._closed or len(idle) >= self._max_idle:
            self._discard(conn)
            return
        loop = asyncio.get_running_loop()
        conn.idle_since = loop.time()
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = loop.call_at(conn.idle_since + self._expiry, self._sweep)
        self._wake()

    def _discard(self, conn: _Connection | None) -> None:
        """Close a connection taken from the pool (or a slot reserved for one) and free its slot."""
        if conn is not None:
            conn.close()
        self._open -= 1
        self._wake()

    def _drop(self, conn: _Connection) -> None:
        conn.close()
        self._open -= 1

    def _sweep(self) -> None:
        """Close the idle connections past their keep-alive time (or closed by the server), then
        come back when the next one is due."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._sweeper = None
        for origin, idle in list(self._idle.items()):
            keep = [c for c in idle if c.usable(now, self._expiry)]
            for conn in set(idle).difference(keep):
                self._drop(conn)
            if keep:
                self._idle[origin] = keep
            else:
                del self._idle[origin]
        if self._idle:
            due = min(idle[0].idle_since for idle in self._idle.values()) + self._expiry
            self._sweeper = loop.call_at(due, self._sweep)

    def _evict_one(self) -> bool:
        """Close the longest-idle connection of any origin to make room; False if none is idle."""
        oldest = min((idle[0] for idle in self._idle.values() if idle), key=lambda c: c.idle_since, default=None)
        if oldest is None:
            return False
        self._idle[oldest.origin].remove(oldest)
        self._drop(oldest)
        return True

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            for conn in idle:
                self._drop(conn)
        self._idle.clear()
        await self._fallback.aclose()


# ---- the wire -----------------------------------------------------------------------------------


def _head(request: httpx.Request) -> bytes:
    lines = [request.method.encode("ascii"), b" ", request.url.raw_path, b" HTTP/1.1\r\n"]
    for name, value in request.headers.raw:
        lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    head = b"".join(lines)
    # One CR and one LF per line and nothing else: no header or path can smuggle in a line of its own.
    n = len(request.headers.raw) + 2
    if head.count(b"\r") != n or head.count(b"\n") != n or head.count(b"\r\n") != n or b"\0" in head:
        raise httpx.LocalProtocolError("Invalid character in the request line or a header.", request=request)
    return head


async def _send(conn: _Connection, payload: bytes, request: httpx.Request) -> None:
    try:
        conn.writer.write(payload)
        await conn.writer.drain()
    except ConnectionError as exc:
        if conn.reused:
            raise _Stale() from exc
        raise httpx.WriteError(str(exc) or type(exc).__name__, request=request) from exc
    except TimeoutError:
        raise
    except OSError as exc:
        raise httpx.WriteError(str(exc) or type(exc).__name__, request=request) from exc


@dataclass
class _Reads:
    """Each read may take the request's ``read`` timeout, as in httpx (not the whole answer)."""

    deadline: asyncio.Timeout
    seconds: float | None

    async def __call__(self, awaitable: Awaitable[T]) -> T:
        self.deadline.reschedule(_at(asyncio.get_running_loop(), self.seconds))
        return await awaitable


async def _receive(conn: _Connection, request: httpx.Request, read: _Reads) -> _Answer:
    """The whole answer to the request just sent on ``conn``."""
    reader = conn.reader
    first = True
    try:
        while True:  # skip interim 1xx answers (100 Continue, 103 Early Hints)
            try:
                head = await read(reader.readuntil(b"\r\n\r\n"))
            except asyncio.IncompleteReadError as exc:
                if first and conn.reused and not exc.partial:
                    raise _Stale() from exc
                _fail(request, "Server disconnected without sending a response.")
            except ConnectionError as exc:
                if first and conn.reused:
                    raise _Stale() from exc
                raise
            except asyncio.LimitOverrunError:
                _fail(request, f"The response head is longer than {HEAD_LIMIT} bytes.")
            first = False
            answer = _parse_head(head, request)
            if answer.status >= 200:
                break
            if answer.status == 101:
                _fail(request, "Unexpected 101 Switching Protocols.")
        if request.method == "HEAD" or answer.status in NO_BODY_STATUS:
            return answer
        framing = _framing(answer, request)
        if isinstance(framing, str):
            answer.body = await _read_chunked(reader, request, read)
        elif framing is None:
            answer.keep_alive = False
            answer.body = await _read_some(reader, None, read)
        else:
            answer.body = await _read_some(reader, framing, read)
        return answer
    except asyncio.IncompleteReadError:
        _fail(request, "Server disconnected before the end of the response body.")
    except asyncio.LimitOverrunError:
        _fail(request, f"A chunk-size line is longer than {HEAD_LIMIT} bytes.")
    except TimeoutError:
        raise
    except OSError as exc:  # resets, TLS errors
        raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc


def _parse_head(head: bytes, request: httpx.Request) -> _Answer:
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3 or not parts[1].isdigit():
        _fail(request, f"Malformed status line {lines[0][:100]!r}.")
    answer = _Answer(int(parts[1]), parts[2] if len(parts) == 3 else b"")
    connection = b""
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or line[:1] in b" \t":
            _fail(request, f"Malformed header line {line[:100]!r}.")
        value = value.strip(b" \t")
        answer.headers.append((name, value))
        if name.lower() == b"connection":
            connection += b"," + value.lower()
    tokens = {t.strip() for t in connection.split(b",")}
    http10 = parts[0] == b"HTTP/1.0"
    answer.keep_alive = b"close" not in tokens and (not http10 or b"keep-alive" in tokens)
    return answer


def _framing(answer: _Answer, request: httpx.Request) -> int | str | None:
    """``"chunked"``, a ``Content-Length``, or None: the body runs to the end of the connection."""
    lengths: set[bytes] = set()
    codings = b""
    for name, value in answer.headers:
        lowered = name.lower()
        if lowered == b"transfer-encoding":
            codings += b"," + value.lower()
        elif lowered == b"content-length":
            lengths.update(v.strip() for v in value.split(b","))
    if codings:
        answer.keep_alive = answer.keep_alive and not lengths  # both at once: no reuse (RFC 9112 §6.3)
        return "chunked" if codings.rsplit(b",", 1)[-1].strip() == b"chunked" else None
    if not lengths:
        return None
    if len(lengths) != 1 or not (length := lengths.pop()).isdigit():
        _fail(request, "Invalid Content-Length.")
    return int(length)


async def _read_some(reader: asyncio.StreamReader, n: int | None, read: _Reads) -> bytes:
    """``n`` bytes, or (``None``) everything up to the end of the connection."""
    parts: list[bytes] = []
    left = -1 if n is None else n
    while left:
        chunk = await read(reader.read(left if left > 0 else 1 << 20))
        if not chunk:
            if n is None:
                break
            raise asyncio.IncompleteReadError(b"".join(parts), n)
        parts.append(chunk)
        if n is not None:
            left -= len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def _read_chunked(reader: asyncio.StreamReader, request: httpx.Request, read: _Reads) -> bytes:
    parts: list[bytes] = []
    while True:
        line = await read(reader.readuntil(b"\r\n"))
        size = line[:-2].split(b";", 1)[0].strip(b" \t")  # chunk extensions are ignored
        if not size or size.strip(HEX_DIGITS) or len(size) > 16:
            _fail(request, f"Malformed chunk size {size[:20]!r}.")
        n = int(size, 16)
        if n == 0:
            break
        parts.append(await read(reader.readexactly(n)))
        if await read(reader.readexactly(2)) != b"\r\n":
            _fail(request, "A chunk does not end with CRLF.")
    while await read(reader.readuntil(b"\r\n")) != b"\r\n":
        pass  # trailer fields: read and dropped
    return b"".join(parts)


def _at(loop: asyncio.AbstractEventLoop, seconds: float | None) -> float | None:
    return None if seconds is None else loop.time() + seconds


def _fail(request: httpx.Request, message: str) -> NoReturn:
    raise httpx.RemoteProtocolError(message, request=request)


_TIMEOUTS: dict[str, type[httpx.TimeoutException]] = {
    "pool": httpx.PoolTimeout,
    "connect": httpx.ConnectTimeout,
    "write": httpx.WriteTimeout,
    "read": httpx.ReadTimeout,
}
