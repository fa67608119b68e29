"""Coalescing concurrent point reads into one query (the DataLoader pattern).

Under load many requests look up rows by key at once (every token mint reads its partner and
sub-account). Each of those is a pool checkout and a round trip whose Python overhead is larger
than PostgreSQL's work. :class:`BatchedReads` queues the keys asked for while a query is in
flight and reads them all with the next query. A caller's read always starts after the caller
asked, so it sees every change committed before that (never a cached answer).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

MAX_BATCH = 200


class BatchedReads(Generic[K, V]):
    """``await reads.get(key)``: the value ``fetch`` finds for ``key``, fetched with the other keys asked
    for meanwhile. ``fetch(keys)`` returns a mapping; a key it leaves out reads as ``missing``."""

    def __init__(self, fetch: Callable[[Sequence[K]], Awaitable[dict[K, V]]], *, missing: V) -> None:
        self._fetch = fetch
        self._missing = missing
        self._waiting: dict[K, list[asyncio.Future[V]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def get(self, key: K) -> V:
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(future)
        if self._task is None:
            self._task = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                keys = list(self._waiting)[:MAX_BATCH]
                batch = {key: self._waiting.pop(key) for key in keys}
                try:
                    found = await self._fetch(keys)
                except BaseException as exc:  # every caller of this batch hears it
                    for futures in batch.values():
                        for future in futures:
                            if future.done():
                                continue
                            if isinstance(exc, Exception):
                                future.set_exception(exc)
                            else:  # cancelled (shutdown): so are they
                                future.cancel()
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for key, futures in batch.items():
                    value = found.get(key, self._missing)
                    for future in futures:
                        if not future.done():  # a caller that gave up (cancelled) is skipped
                            future.set_result(value)
        finally:
            self._task = None
            for futures in self._waiting.values():  # only if the loop is being torn down mid-batch
                for future in futures:
                    if not future.done():
                        future.cancel()
            self._waiting.clear()
