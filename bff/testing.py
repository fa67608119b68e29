"""Running the BFF (or any ASGI app) for real in a test: a free port and uvicorn on a thread.

Our own tests, the browser suite and the benchmarks use these; so can a partner's QA suite
that wants a BFF with the sandbox on next to its own test server::

    from bff.testing import serve_in_thread
    with serve_in_thread(create_app(settings)) as bff_url:
        ...
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve_in_thread(app: ASGIApp, *, port: int | None = None, host: str = "127.0.0.1") -> Iterator[str]:
    """A real uvicorn server on a thread; yields its base URL once it listens, stops it on exit."""
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
