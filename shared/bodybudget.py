"""How many bytes of message bodies a service holds in memory at once.

One budget per process, shared by everything in it that holds bodies: the executor's
bodies read from PostgreSQL (``MAILEXEC_EXECUTOR_BODY_MEMORY_BYTES``), ingest's bodies
being received over HTTP or LMTP until they are stored
(``MAILEXEC_INGEST_BODY_MEMORY_BYTES``). Whoever would go over it waits, first come,
first served — a large message waits its turn instead of being overtaken forever by small
ones — and while it waits it reads nothing, so the sender is held back by TCP rather
than by the service's memory growing. A body larger than the whole budget is granted
when nothing else is held: it is never refused for the budget's sake.

A body whose size is not known when it starts (a chunked HTTP request, LMTP DATA without
``SIZE=``) is admitted with :data:`UNKNOWN_SIZE_GRANT` bytes and its growth is
accounted as it arrives (:meth:`BodyBudget.grow`) without waiting: stopping a body
half-way while others also wait for more could leave every holder waiting for the
others (a deadlock). Growth past the limit makes every new body wait until enough is
released, so the excess is bounded by the bodies of unknown size already admitted.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Protocol

UNKNOWN_SIZE_GRANT = 256 * 1024


class _Gauge(Protocol):
    def set(self, value: float) -> None: ...


class BodyBudget:
    """At most ``limit`` bytes of message bodies held at once (see the module's text)."""

    def __init__(self, limit: int, held: _Gauge | None = None, peak: _Gauge | None = None) -> None:
        self.limit = max(1, limit)
        self.held = 0
        self.peak = 0
        self._held_gauge = held
        self._peak_gauge = peak
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    @property
    def waiting(self) -> int:
        """Bodies waiting for room now."""
        return len(self._waiters)

    async def acquire(self, size: int) -> int:
        """Wait for ``size`` bytes (capped at the limit); returns what to release."""
        n = min(max(size, 1), self.limit)
        if not self._waiters and self.held + n <= self.limit:
            self._grant(n)
            return n
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, fut)
        self._waiters.append(entry)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # granted just as we were cancelled
                self.release(n)
            else:
                self._waiters.remove(entry)
                self._wake()
            raise
        return n

    async def hold(self, size: int | None) -> Hold:
        """Admit one body: ``size`` if it is known, else :data:`UNKNOWN_SIZE_GRANT`."""
        return Hold(self, await self.acquire(UNKNOWN_SIZE_GRANT if size is None else size))

    def grow(self, n: int) -> None:
        """Account ``n`` more bytes of a body already admitted, without waiting."""
        if n > 0:
            self._grant(n)

    def release(self, n: int) -> None:
        self.held -= n
        self._set_held()
        self._wake()

    def _grant(self, n: int) -> None:
        self.held += n
        self._set_held()
        if self.held > self.peak:
            self.peak = self.held
            if self._peak_gauge is not None:
                self._peak_gauge.set(self.peak)

    def _set_held(self) -> None:
        if self._held_gauge is not None:
            self._held_gauge.set(self.held)

    def _wake(self) -> None:
        # the head waits while the rest is held, unless nothing is (an over-limit body
        # was capped at the limit, so it fits an empty budget)
        while self._waiters and self.held + self._waiters[0][0] <= self.limit:
            n, fut = self._waiters.popleft()
            if not fut.done():
                self._grant(n)
                fut.set_result(None)


class Hold:
    """One admitted body's share of the budget: :meth:`cover` its bytes as they arrive,
    :meth:`release` it (once; later calls do nothing) when the body is dropped."""

    def __init__(self, budget: BodyBudget, granted: int) -> None:
        self.budget = budget
        self.granted = granted

    def cover(self, size: int) -> None:
        if size > self.granted:
            self.budget.grow(size - self.granted)
            self.granted = size

    def release(self) -> None:
        if self.granted:
            self.budget.release(self.granted)
            self.granted = 0
