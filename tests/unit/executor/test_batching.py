"""Natural batching: alone, a request is flushed at once; under load, what queued during
one flush rides the next; a failed flush fails each of its callers."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from services.executor.batching import Batcher


class Recorder:
    """The flush callback: answers each request, remembers each batch."""

    def __init__(self, pause: float = 0.0, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.pause = pause
        self.fail_on = fail_on

    async def __call__(self, reqs: Sequence[int]) -> list[int]:
        self.batches.append(list(reqs))
        if self.pause:
            await asyncio.sleep(self.pause)
        if self.fail_on is not None and self.fail_on in reqs:
            raise RuntimeError("flush failed")
        return [r * 10 for r in reqs]


async def started(rec: Recorder, max_batch: int = 512) -> Batcher[int, int]:
    b: Batcher[int, int] = Batcher("t", rec, max_batch=max_batch)
    b.start()
    return b


async def test_a_lone_request_is_flushed_at_once_with_its_own_answer() -> None:
    rec = Recorder()
    b = await started(rec)
    try:
        assert await asyncio.wait_for(b.submit(7), 1) == 70
        assert rec.batches == [[7]]
    finally:
        await b.stop()


async def test_requests_ready_together_share_one_flush() -> None:
    rec = Recorder()
    b = await started(rec)
    try:
        assert await asyncio.gather(*(b.submit(i) for i in range(5))) == [0, 10, 20, 30, 40]
        assert rec.batches == [[0, 1, 2, 3, 4]]
    finally:
        await b.stop()


async def test_under_load_what_queued_during_a_flush_rides_the_next_one() -> None:
    rec = Recorder(pause=0.05)
    b = await started(rec)
    try:
        first = asyncio.ensure_future(b.submit(1))
        await asyncio.sleep(0.01)  # the first flush is running now
        later = [asyncio.ensure_future(b.submit(i)) for i in (2, 3, 4)]
        assert await asyncio.gather(first, *later) == [10, 20, 30, 40]
        assert rec.batches == [[1], [2, 3, 4]]
    finally:
        await b.stop()


async def test_a_batch_never_exceeds_max_batch() -> None:
    rec = Recorder()
    b = await started(rec, max_batch=2)
    try:
        await asyncio.gather(*(b.submit(i) for i in range(5)))
        assert rec.batches == [[0, 1], [2, 3], [4]]
    finally:
        await b.stop()


async def test_a_failed_flush_fails_its_callers_and_not_the_next_batch() -> None:
    rec = Recorder(fail_on=2)
    b = await started(rec, max_batch=2)
    try:
        results = await asyncio.gather(*(b.submit(i) for i in (1, 2, 3)), return_exceptions=True)
        assert isinstance(results[0], RuntimeError) and isinstance(results[1], RuntimeError)
        assert results[2] == 30
    finally:
        await b.stop()


async def test_a_caller_that_gave_up_is_left_out_of_the_flush() -> None:
    rec = Recorder(pause=0.05)
    b = await started(rec)
    try:
        first = asyncio.ensure_future(b.submit(1))
        await asyncio.sleep(0.01)
        gone = asyncio.ensure_future(b.submit(2))
        kept = asyncio.ensure_future(b.submit(3))
        await asyncio.sleep(0)
        gone.cancel()
        assert await asyncio.gather(first, kept) == [10, 30]
        assert rec.batches == [[1], [3]]
    finally:
        await b.stop()


async def test_stop_cancels_the_waiting_callers() -> None:
    rec = Recorder(pause=1.0)
    b = await started(rec)
    first = asyncio.ensure_future(b.submit(1))
    await asyncio.sleep(0.01)
    waiting = asyncio.ensure_future(b.submit(2))
    await asyncio.sleep(0)
    await b.stop()
    for fut in (first, waiting):
        with pytest.raises(asyncio.CancelledError):
            await fut
