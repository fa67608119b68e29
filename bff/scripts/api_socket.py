"""The one door out of a script's sandbox: this process's API on a Unix socket.

A worker that runs scripts serves its own app (the same routes, the same token checks) on a
socket in a fresh private directory, bound into each sandbox at ``/run/bff/api.sock``. Only
``/api/…`` paths answer: not the sandbox providers, the embed pages or the OAuth callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from ..quiet_server import QuietServer


class _ApiOnly:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not str(scope.get("path", "")).startswith("/api/"):
            body = b'{"code":"not_found","detail":"Scripts reach the API (/api/...) only."}'
            await send(
                {
                    "type": "http.response.start",
                    "status": 404,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        if scope["type"] != "http":
            return
        # No peer address on a Unix socket: say so the way TCP would, so logging and throttles work alike.
        scope = {**scope, "client": ("script", 0)}
        await self.app(scope, receive, send)


class ApiSocket:
    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self._lock = asyncio.Lock()
        self._server: QuietServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._dir: str | None = None
        self.path: str | None = None

    async def start(self) -> str:
        """The socket's path; the server starts on first use."""
        async with self._lock:
            if self.path is not None and self._task is not None and not self._task.done():
                return self.path
            self._dir = tempfile.mkdtemp(prefix="bff-scripts-")
            os.chmod(self._dir, 0o711)  # run users may reach the socket, not list the directory
            path = os.path.join(self._dir, "api.sock")
            config = uvicorn.Config(
                _ApiOnly(self._app),
                uds=path,
                lifespan="off",
                access_log=False,
                log_level="warning",
                log_config=None,
                ws="none",
                timeout_graceful_shutdown=1,
            )
            self._server = QuietServer(config)
            self._task = asyncio.create_task(self._server.serve(), name="bff-scripts-api-socket")
            while not self._server.started:
                if self._task.done():
                    self._task.result()  # raises what stopped it
                    raise RuntimeError("the scripts' API socket did not start")
                await asyncio.sleep(0.005)
            os.chmod(path, 0o666)
            self.path = path
            return path

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._task, 5)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        self._server = self._task = None
        self._dir = self.path = None
