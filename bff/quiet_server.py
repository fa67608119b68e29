"""A uvicorn server that leaves signals alone: the process that starts it handles them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import uvicorn


class QuietServer(uvicorn.Server):
    """``bff demo`` stops its two servers on one signal; a worker's script socket stops with the worker."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
