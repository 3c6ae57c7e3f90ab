"""shared/bodybudget.py: who may hold a body now, and who waits — the decision both ingest
(receiving) and the executor (reading from PostgreSQL) take before holding a body."""

from __future__ import annotations

import asyncio

import pytest

from shared.bodybudget import UNKNOWN_SIZE_GRANT, BodyBudget


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_bodies_that_fit_are_granted_at_once_and_the_next_waits_for_room() -> None:
    b = BodyBudget(10)
    assert await b.acquire(4) == 4
    assert await b.acquire(6) == 6
    third = asyncio.create_task(b.acquire(3))
    await _settle()
    assert not third.done() and b.waiting == 1
    b.release(4)
    assert await third == 3
    assert b.held == 9 and b.peak == 10


async def test_first_come_first_served_a_small_body_does_not_overtake_a_large_one() -> None:
    b = BodyBudget(10)
    await b.acquire(8)
    large = asyncio.create_task(b.acquire(9))
    await _settle()
    small = asyncio.create_task(b.acquire(1))  # would fit now, but the large one came first
    await _settle()
    assert not large.done() and not small.done()
    b.release(8)
    assert await large == 9
    assert await small == 1  # in its turn, beside the large one
    assert b.held == 10


async def test_a_body_larger_than_the_budget_runs_alone_never_refused() -> None:
    b = BodyBudget(10)
    assert await b.acquire(5) == 5
    huge = asyncio.create_task(b.acquire(50))
    await _settle()
    assert not huge.done()
    b.release(5)
    assert await huge == 10  # capped: it fills the budget, nothing else beside it
    behind = asyncio.create_task(b.acquire(1))
    await _settle()
    assert not behind.done()
    b.release(10)
    assert await behind == 1


async def test_unknown_size_is_admitted_small_grows_without_waiting_and_holds_back_new_bodies() -> None:
    b = BodyBudget(UNKNOWN_SIZE_GRANT * 4)
    h = await b.hold(None)
    assert h.granted == UNKNOWN_SIZE_GRANT
    h.cover(UNKNOWN_SIZE_GRANT * 6)  # a chunked upload past the limit: no deadlock, counted
    assert b.held == UNKNOWN_SIZE_GRANT * 6 and b.peak == b.held
    newcomer = asyncio.create_task(b.hold(1000))
    await _settle()
    assert not newcomer.done()  # over the limit: new bodies wait until it is released
    h.release()
    h.release()  # once only
    assert b.held == 1000 and (await newcomer).granted == 1000


async def test_a_waiter_given_up_leaves_the_queue_and_does_not_block_those_behind() -> None:
    b = BodyBudget(10)
    await b.acquire(10)
    first = asyncio.create_task(b.acquire(10))
    await _settle()
    second = asyncio.create_task(b.acquire(2))
    await _settle()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert b.waiting == 1
    b.release(8)
    assert await second == 2
    assert b.held == 4


async def test_the_gauges_follow_what_is_held_and_its_peak() -> None:
    class G:
        value = 0.0

        def set(self, v: float) -> None:
            self.value = v

    held, peak = G(), G()
    b = BodyBudget(100, held, peak)
    h = await b.hold(40)
    h.cover(70)
    assert (held.value, peak.value) == (70, 70)
    h.release()
    assert (held.value, peak.value) == (0, 70)
