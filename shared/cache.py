"""A small in-process cache for answers fetched from another service (policy).

What it guarantees
    - Concurrent misses for the same key share one fetch (no thundering herd).
    - An answer fetched before :meth:`AsyncCache.invalidate` is never stored after it
      (a generation counter), so a change announced on ``policy.changed`` is never undone
      by a slow in-flight response.
    - Entries live ``ttl_s`` at most, whether or not an invalidation arrives.
    - A fetch that raises stores nothing; every waiter sees the exception.

Used by the one policy client (:mod:`shared.policy_client`), which the executor and
the notifier use as it is and ingest's RCPT-time check with ``keep_account`` (positive
answers only: a refused recipient is asked about again next time).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")

MAX_ENTRIES = 100_000


class AsyncCache:
    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[Hashable, tuple[float, Any]] = {}
        self._inflight: dict[Hashable, asyncio.Future[Any]] = {}
        self._generation = 0

    async def get(
        self,
        key: Hashable,
        fetch: Callable[[], Awaitable[T]],
        keep: Callable[[T], bool] = lambda _value: True,
    ) -> T:
        """The cached answer for ``key``, else ``await fetch()`` (stored if ``keep`` says so)."""
        now = time.monotonic()
        hit = self._entries.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]  # type: ignore[no-any-return]
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        generation = self._generation
        try:
            value = await fetch()
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: waiters (if any) re-raise it themselves
            raise
        finally:
            self._inflight.pop(key, None)
        if generation == self._generation and keep(value):
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[key] = (time.monotonic() + self.ttl_s, value)
        fut.set_result(value)
        return value

    def peek(self, key: Hashable) -> Any:
        """The cached answer for ``key`` if there is a live one, else None (no fetch)."""
        hit = self._entries.get(key)
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None

    def invalidate(self, match: Callable[[Hashable], bool] | None = None) -> None:
        """Forget the entries ``match`` selects (all of them when None)."""
        self._generation += 1
        if match is None:
            self._entries.clear()
        else:
            self._entries = {k: v for k, v in self._entries.items() if not match(k)}
