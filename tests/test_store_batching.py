"""BatchedReads: concurrent point reads share one query, and each read starts after it was asked for."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest

from bff.store.batching import BatchedReads


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(100):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never became true")


class Source:
    """A fetch that records each batch of keys and can be held open or made to fail."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: Exception | None = None
        self.values = {"a": 1, "b": 2, "c": 3}

    async def fetch(self, keys: Sequence[str]) -> dict[str, int]:
        self.batches.append(list(keys))
        snapshot = dict(self.values)  # what the query sees: the data as it was when it started
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return {k: snapshot[k] for k in keys if k in snapshot}


async def test_concurrent_reads_share_one_fetch_and_missing_keys_read_as_missing() -> None:
    source = Source()
    reads = BatchedReads(source.fetch, missing=-1)
    results = await asyncio.gather(reads.get("a"), reads.get("b"), reads.get("a"), reads.get("zz"))
    assert results == [1, 2, 1, -1]
    assert source.batches == [["a", "b", "zz"]]


async def test_keys_asked_while_a_fetch_runs_go_into_the_next_one_and_see_later_changes() -> None:
    source = Source()
    reads = BatchedReads(source.fetch, missing=-1)
    source.gate.clear()
    first = asyncio.create_task(reads.get("a"))
    await until(lambda: source.batches == [["a"]])
    # Asked after the first query started: it must not be answered by that query.
    source.values["a"] = 10
    second = asyncio.create_task(reads.get("a"))
    await asyncio.sleep(0.01)
    source.gate.set()
    assert await first == 1 and await second == 10
    assert source.batches == [["a"], ["a"]]


async def test_a_failed_fetch_fails_its_callers_only() -> None:
    source = Source()
    reads = BatchedReads(source.fetch, missing=-1)
    source.fail = RuntimeError("database down")
    results = await asyncio.gather(reads.get("a"), reads.get("b"), return_exceptions=True)
    assert [type(r) for r in results] == [RuntimeError, RuntimeError]
    source.fail = None
    assert await reads.get("c") == 3


async def test_a_caller_that_gives_up_does_not_disturb_the_others() -> None:
    source = Source()
    reads = BatchedReads(source.fetch, missing=-1)
    source.gate.clear()
    impatient = asyncio.create_task(reads.get("a"))
    patient = asyncio.create_task(reads.get("a"))
    await until(lambda: source.batches == [["a"]])
    impatient.cancel()
    source.gate.set()
    assert await patient == 1
    with pytest.raises(asyncio.CancelledError):
        await impatient
