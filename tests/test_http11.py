"""The provider client's HTTP/1.1 transport against real servers on 127.0.0.1: raw asyncio servers
for full control over the bytes on the wire, uvicorn for a realistic one."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gc
import gzip
import hashlib
import ipaddress
import json
import os
import socket
import ssl
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from conftest import BFF
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bff.connectors.http11 import Http11Transport
from bff.testing import serve_in_thread


@dataclass
class Seen:
    """One request as the server read it."""

    line: bytes
    headers: dict[bytes, bytes]
    body: bytes
    conn: int  # which connection (0, 1, …)
    n: int  # which request on that connection


@dataclass
class Server:
    url: str
    requests: list[Seen] = field(default_factory=list)
    connections: int = 0
    closed_by_client: int = 0  # connections the client closed (EOF between requests)


Answer = Callable[[Seen, asyncio.StreamWriter], Awaitable[bool]]  # False: close the connection


async def read_request(reader: asyncio.StreamReader, conn: int, n: int) -> Seen | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    line, *rest = head[:-4].split(b"\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(b":") for h in rest)}
    body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
    return Seen(line, headers, body, conn, n)


@contextlib.asynccontextmanager
async def raw_server(
    answer: Answer, *, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1"
) -> AsyncIterator[Server]:
    server = Server(url="")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = server.connections
        server.connections += 1
        n = 0
        try:
            while (seen := await read_request(reader, conn, n)) is not None:
                server.requests.append(seen)
                n += 1
                if not await answer(seen, writer):
                    return
                await writer.drain()
            server.closed_by_client += 1
        finally:
            writer.close()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    port = listener.sockets[0].getsockname()[1]
    server.url = f"{'https' if tls else 'http'}://{host}:{port}"
    async with listener:
        yield server


def ok(body: bytes = b"hello", extra: bytes = b"") -> Answer:
    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body))
        return True

    return answer


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=Http11Transport(), timeout=httpx.Timeout(5.0)) as c:
        yield c


async def test_a_content_length_body(client: httpx.AsyncClient) -> None:
    async with raw_server(ok(b"0123456789" * 10_000)) as server:
        response = await client.get(server.url + "/a%20b?q=1")
    assert response.status_code == 200
    assert response.content == b"0123456789" * 10_000
    assert response.reason_phrase == "OK"
    assert response.http_version == "HTTP/1.1"
    assert server.requests[0].line == b"GET /a%20b?q=1 HTTP/1.1"
    assert server.requests[0].headers[b"host"] == server.url.removeprefix("http://").encode()


async def test_a_chunked_body_with_extensions_and_trailers_leaves_the_connection_clean(
    client: httpx.AsyncClient,
) -> None:
    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;name=value\r\nhello\r\nA \r\n, chunked!\r\n0;last\r\nX-Checksum: 1\r\nX-More: 2\r\n\r\n"
        )
        return True

    async with raw_server(answer) as server:
        first = await client.get(server.url)
        second = await client.get(server.url)
    assert first.content == second.content == b"hello, chunked!"
    assert server.connections == 1  # the trailers were read to their end: the next answer parsed cleanly


async def test_a_malformed_chunk_size_is_a_protocol_error(client: httpx.AsyncClient) -> None:
    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1_0\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n")
        return True

    async with raw_server(answer) as server:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(server.url)


@pytest.mark.parametrize(
    "head",
    [
        b"Content-Length: 5\r\nContent-Length: 6\r\n",  # two lengths: which one frames the body?
        b"Content-Length: -5\r\n",
        b"Content-Length: 0x5\r\n",
    ],
)
async def test_an_invalid_content_length_is_a_protocol_error(client: httpx.AsyncClient, head: bytes) -> None:
    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\n" + head + b"\r\nhello!")
        return True

    async with raw_server(answer) as server:
        with pytest.raises(httpx.RemoteProtocolError, match="Content-Length"):
            await client.get(server.url)


async def test_a_body_cut_short_is_a_protocol_error(client: httpx.AsyncClient) -> None:
    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
        return False

    async with raw_server(answer) as server:
        with pytest.raises(httpx.RemoteProtocolError, match="before the end"):
            await client.get(server.url)


async def test_both_transfer_encoding_and_content_length_frame_by_chunks_and_end_the_connection(
    client: httpx.AsyncClient,
) -> None:
    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
        return True

    async with raw_server(answer) as server:
        first = await client.get(server.url)
        second = await client.get(server.url)
    assert first.text == second.text == "hello"
    assert server.connections == 2


async def test_a_body_without_length_runs_to_the_end_of_the_connection(client: httpx.AsyncClient) -> None:
    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end " + b"." * 300_000)
        return False

    async with raw_server(answer) as server:
        first = await client.get(server.url)
        second = await client.get(server.url)
    assert first.content == second.content == b"until the end " + b"." * 300_000
    assert server.connections == 2


async def test_a_gzip_answer_comes_out_decoded_through_the_client(client: httpx.AsyncClient) -> None:
    rows = [{"id": i, "name": f"row {i}"} for i in range(2000)]

    async def page(request: Request) -> JSONResponse:
        return JSONResponse(rows)

    app = Starlette(routes=[Route("/rows", page)], middleware=[Middleware(GZipMiddleware, minimum_size=100)])
    with serve_in_thread(app) as url:
        response = await client.get(url + "/rows", headers={"Accept-Encoding": "gzip"})
        again = await client.get(url + "/rows", headers={"Accept-Encoding": "gzip"})
    assert response.headers["content-encoding"] == "gzip"
    assert response.json() == again.json() == rows
    assert (
        int(response.headers.get("content-length", 0)) < len(json.dumps(rows))
        or "transfer-encoding" in response.headers
    )


async def test_a_gzip_answer_from_the_wire_is_decoded(client: httpx.AsyncClient) -> None:
    packed = gzip.compress(b'{"ok": true}')

    async with raw_server(ok(packed, b"Content-Encoding: gzip\r\n")) as server:
        response = await client.get(server.url)
    assert response.json() == {"ok": True}


async def test_keep_alive_serves_many_requests_on_one_connection(client: httpx.AsyncClient) -> None:
    async with raw_server(ok()) as server:
        for _ in range(5):
            assert (await client.get(server.url)).text == "hello"
    assert server.connections == 1
    assert [s.n for s in server.requests] == [0, 1, 2, 3, 4]


async def test_connection_close_from_either_side_is_not_reused(client: httpx.AsyncClient) -> None:
    async with raw_server(ok(extra=b"Connection: close\r\n")) as server:
        await client.get(server.url)
        await client.get(server.url)
    assert server.connections == 2
    async with raw_server(ok()) as server:
        await client.get(server.url, headers={"Connection": "close"})
        await client.get(server.url)
    assert server.connections == 2


async def test_http_1_0_is_reused_only_with_keep_alive(client: httpx.AsyncClient) -> None:
    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        keep = b"Connection: keep-alive\r\n" if b"keep" in seen.line else b""
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n" + keep + b"\r\nok")
        return True

    async with raw_server(answer) as server:
        await client.get(server.url + "/keep")
        await client.get(server.url + "/keep")
        assert server.connections == 1
        await client.get(server.url + "/plain")
        await client.get(server.url + "/plain")
    assert server.connections == 2


def closes_reused_connections_unanswered() -> Answer:
    """Answers the first request of each connection; closes on any later one without a byte, as
    a server does that dropped a keep-alive connection just as the request went out."""

    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        if seen.n > 0:
            return False
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return True

    return answer


async def test_a_get_on_a_connection_the_server_closed_is_retried_on_a_fresh_one(client: httpx.AsyncClient) -> None:
    async with raw_server(closes_reused_connections_unanswered()) as server:
        await client.get(server.url)
        response = await client.get(server.url + "/again")
    assert response.text == "ok"
    assert [(s.line, s.conn) for s in server.requests] == [
        (b"GET / HTTP/1.1", 0),
        (b"GET /again HTTP/1.1", 0),
        (b"GET /again HTTP/1.1", 1),
    ]


async def test_a_post_on_a_connection_the_server_closed_is_not_retried(client: httpx.AsyncClient) -> None:
    async with raw_server(closes_reused_connections_unanswered()) as server:
        await client.get(server.url)
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await client.post(server.url + "/pay", content=b"once")
        assert [s.line for s in server.requests].count(b"POST /pay HTTP/1.1") == 1
        assert (await client.get(server.url)).text == "ok"  # the pool goes on with a fresh connection


async def test_an_idle_connection_the_server_closed_is_not_used(client: httpx.AsyncClient) -> None:
    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        return False  # closes after answering, without saying so

    async with raw_server(answer) as server:
        await client.get(server.url)
        await asyncio.sleep(0.1)
        response = await client.post(server.url, content=b"x")
    assert response.text == "ok"
    assert server.connections == 2


async def test_a_silent_server_is_a_read_timeout_and_its_connection_is_not_reused() -> None:
    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        if seen.line.startswith(b"GET /slow"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf.")
            await writer.drain()
            await asyncio.sleep(0.5)
            writer.write(b"late.")
            return True
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh")
        return True

    async with httpx.AsyncClient(transport=Http11Transport(), timeout=httpx.Timeout(5.0, read=0.2)) as client:
        async with raw_server(answer) as server:
            with pytest.raises(httpx.ReadTimeout):
                await client.get(server.url + "/slow")
            assert (await client.get(server.url + "/next")).text == "fresh"
    assert server.connections == 2


async def test_a_request_cancelled_half_way_frees_its_connection() -> None:
    transport = Http11Transport(max_connections=1)
    async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(5.0, pool=0.5)) as client:
        answered = asyncio.Event()

        async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
            if seen.line.startswith(b"GET /slow"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf.")
                answered.set()
                await asyncio.sleep(0.3)
                writer.write(b"rest.")
                return True
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh")
            return True

        async with raw_server(answer) as server:
            task = asyncio.create_task(client.get(server.url + "/slow"))
            await answered.wait()
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # The only slot is free again, and no half-read connection comes back from the pool.
            assert (await client.get(server.url + "/next")).text == "fresh"
        assert server.connections == 2


async def test_requests_wait_for_a_free_connection_and_time_out_as_pool_timeouts() -> None:
    release = asyncio.Event()

    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        if seen.line.startswith(b"GET /hold"):
            await release.wait()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return True

    transport = Http11Transport(max_connections=1)
    async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(5.0, pool=0.2)) as client:
        async with raw_server(answer) as server:
            held = asyncio.create_task(client.get(server.url + "/hold"))
            await asyncio.sleep(0.05)
            with pytest.raises(httpx.PoolTimeout):
                await client.get(server.url + "/other")
            waiting = asyncio.create_task(client.get(server.url + "/other"))
            await asyncio.sleep(0.05)
            release.set()
            assert (await held).text == (await waiting).text == "ok"
        assert server.connections == 1


async def test_a_refused_connection_is_a_connect_error(client: httpx.AsyncClient) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(httpx.ConnectError) as caught:
        await client.get(f"http://127.0.0.1:{port}/")
    assert caught.value.request.url.port == port


async def test_an_oversized_response_head_is_a_protocol_error(client: httpx.AsyncClient) -> None:
    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"a" * 70_000 + b"\r\nContent-Length: 0\r\n\r\n")
        return True

    async with raw_server(answer) as server:
        with pytest.raises(httpx.RemoteProtocolError, match="head"):
            await client.get(server.url)


async def test_a_header_with_a_line_break_is_refused_before_sending(client: httpx.AsyncClient) -> None:
    async with raw_server(ok()) as server:
        with pytest.raises(httpx.LocalProtocolError):
            await client.get(server.url, headers={"X-Note": "a\r\nX-Injected: 1"})
    assert server.requests == []


async def test_a_post_body_arrives_intact() -> None:
    async def digest(request: Request) -> JSONResponse:
        body = await request.body()
        return JSONResponse({"sha256": hashlib.sha256(body).hexdigest(), "type": request.headers["content-type"]})

    body = os.urandom(300_000)
    app = Starlette(routes=[Route("/echo", digest, methods=["POST", "PUT"])])
    async with httpx.AsyncClient(transport=Http11Transport()) as client:
        with serve_in_thread(app) as url:
            posted = await client.post(url + "/echo", content=body, headers={"Content-Type": "application/x-test"})
            form = await client.put(url + "/echo", data={"a": "1 2", "b": "ü"})
    assert posted.json() == {"sha256": hashlib.sha256(body).hexdigest(), "type": "application/x-test"}
    assert form.json()["sha256"] == hashlib.sha256(b"a=1+2&b=%C3%BC").hexdigest()


async def test_head_204_and_304_answers_have_no_body(client: httpx.AsyncClient) -> None:
    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        if seen.line.startswith(b"HEAD"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        elif b"/204" in seen.line:
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        elif b"/304" in seen.line:
            writer.write(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext")
        return True

    async with raw_server(answer) as server:
        head = await client.head(server.url)
        empty = await client.delete(server.url + "/204")
        unchanged = await client.get(server.url + "/304")
        after = await client.get(server.url)
    assert (head.status_code, head.content, head.headers["content-length"]) == (200, b"", "100")
    assert (empty.status_code, empty.content) == (204, b"")
    assert (unchanged.status_code, unchanged.content) == (304, b"")
    assert after.text == "next"  # no body was waited for: the same connection goes on
    assert server.connections == 1


async def test_interim_1xx_answers_are_skipped(client: httpx.AsyncClient) -> None:
    final = ok(b"final")

    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n")
        return await final(seen, writer)

    async with raw_server(answer) as server:
        response = await client.get(server.url)
    assert (response.status_code, response.text) == (200, "final")


async def test_idle_connections_close_after_the_keep_alive_expiry_and_on_aclose() -> None:
    async with raw_server(ok()) as server:
        async with httpx.AsyncClient(transport=Http11Transport(keepalive_expiry=0.2)) as client:
            await client.get(server.url)
            await asyncio.sleep(0.1)
            assert server.closed_by_client == 0
            await asyncio.sleep(0.4)
            assert server.closed_by_client == 1
            await client.get(server.url)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ResourceWarning)
                await client.aclose()
                gc.collect()
        await asyncio.sleep(0.1)
        assert server.closed_by_client == 2
    # aclose closed it, not the garbage collector (asyncio warns about a writer left unclosed)
    assert [str(w.message) for w in caught if "unclosed" in str(w.message)] == []


async def test_an_expect_header_goes_through_httpx_own_transport(client: httpx.AsyncClient) -> None:
    async with raw_server(ok()) as server:
        delegated = await client.get(server.url, headers={"Expect": "x-test"})
        direct = await client.get(server.url)
    assert "network_stream" in delegated.extensions  # httpcore's, which this transport does not set
    assert "network_stream" not in direct.extensions


# ---- TLS ----------------------------------------------------------------------------------------


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


async def test_tls_verifies_the_server_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    async with raw_server(ok(b"secret"), tls=server_ctx, host="localhost") as server:
        async with httpx.AsyncClient(transport=Http11Transport()) as client:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await client.get(server.url)
        trusting = ssl.create_default_context(cafile=str(cert))
        async with httpx.AsyncClient(transport=Http11Transport(ssl_context=trusting)) as client:
            first = await client.get(server.url)
            second = await client.get(server.url.replace("localhost", "127.0.0.1"))
            third = await client.get(server.url)
        assert first.text == second.text == third.text == "secret"
        assert server.connections == 2  # one per origin (localhost, 127.0.0.1), kept alive over TLS
    other = tmp_path / "other"
    other.mkdir()
    wrong_cert, wrong_key = self_signed(other)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(wrong_cert, wrong_key)
    async with raw_server(ok(), tls=server_ctx, host="localhost") as server:
        async with httpx.AsyncClient(transport=Http11Transport(ssl_context=trusting)) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(server.url)  # trusting one certificate is not trusting another


async def test_the_provider_client_of_the_app_goes_through_it(bff: BFF) -> None:
    """The shared provider client retries a GET whose keep-alive connection the server dropped:
    httpx's own transport would raise ``RemoteProtocolError`` here."""
    async with raw_server(closes_reused_connections_unanswered()) as server:
        first = await bff.services.http.get(server.url + "/page/1")
        second = await bff.services.http.get(server.url + "/page/2")
    assert first.text == second.text == "ok"
    assert [s.conn for s in server.requests] == [0, 0, 1]
