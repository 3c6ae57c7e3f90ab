"""Collecting the events of one message and kind for a short window, then storing them once.

Why: when a message to many recipients fails for all of them, the executor emits one
event per recipient within moments; the sender should get one DSN listing them all
(SPEC §4), not one per recipient. The first event of a (message, kind) opens a
window of ``dsn_aggregate_window_s``; everything that arrives for the same key before
it closes is flushed together.

Guarantees: a flush is retried with back-off while the database is unavailable and
the buffered AMQP messages stay unacknowledged until it succeeds, so a crash at any
point redelivers them. A batch whose flush fails for another reason (a bug, an event
the renderer refuses) is split and each event retried alone, so one bad event does
not take its neighbours with it; the flush callback decides what happens to that one.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aio_pika.abc import AbstractIncomingMessage

from shared.errors import Unavailable
from shared.schemas import Event

log = logging.getLogger("mailexec.notifier.aggregate")

MAX_RETRY_DELAY_S = 30.0


@dataclass(frozen=True)
class Buffered:
    event: Event
    message: AbstractIncomingMessage


Key = tuple[uuid.UUID | None, str]
Flush = Callable[[list[Buffered]], Awaitable[None]]
OnBroken = Callable[[Buffered, Exception], Awaitable[None]]


class Aggregator:
    def __init__(self, window_s: float, flush: Flush, on_broken: OnBroken, *, max_items: int) -> None:
        self._window = window_s
        self._flush = flush
        self._on_broken = on_broken
        self._max_items = max_items
        self._buffers: dict[Key, list[Buffered]] = {}
        self._timers: dict[Key, asyncio.Task[None]] = {}
        self._flushing: set[asyncio.Task[None]] = set()

    @property
    def buffered(self) -> int:
        return sum(len(items) for items in self._buffers.values())

    def add(self, item: Buffered) -> None:
        key: Key = (item.event.message_id, item.event.kind)
        items = self._buffers.setdefault(key, [])
        items.append(item)
        if len(items) == 1:
            self._timers[key] = asyncio.create_task(self._close_later(key))
        # Unacked messages count against the channel's prefetch: never let the buffer
        # alone stall the consumer.
        if self.buffered >= self._max_items:
            for k in list(self._buffers):
                self._close_now(k)

    async def _close_later(self, key: Key) -> None:
        await asyncio.sleep(self._window)
        self._timers.pop(key, None)
        self._spawn_store(key)

    def _close_now(self, key: Key) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self._spawn_store(key)

    def _spawn_store(self, key: Key) -> None:
        items = self._buffers.pop(key, [])
        if items:
            task = asyncio.create_task(self._store(items))
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)

    async def _store(self, items: list[Buffered]) -> None:
        await store_with_retry(items, self._flush, self._on_broken)

    async def flush_all(self) -> None:
        """Close every window now and wait for the stores (graceful shutdown)."""
        for key in list(self._buffers):
            self._close_now(key)
        if self._flushing:
            await asyncio.gather(*self._flushing, return_exceptions=True)

    def cancel(self) -> None:
        """Drop everything unflushed (the broker redelivers the unacked messages)."""
        for task in [*self._timers.values(), *self._flushing]:
            task.cancel()
        self._timers.clear()
        self._buffers.clear()


async def store_with_retry(items: list[Buffered], flush: Flush, on_broken: OnBroken) -> None:
    """``flush(items)`` until it works: back off while the database is unavailable; on any
    other error split the batch and hand an event that fails alone to ``on_broken``."""
    delay = 0.5
    while True:
        try:
            await flush(items)
            return
        except Unavailable as exc:
            log.warning(
                "cannot store notifications yet; retrying",
                extra={"error": exc.message, "events": len(items), "retry_in_s": delay},
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_DELAY_S)
        except Exception as exc:
            if len(items) == 1:
                await on_broken(items[0], exc)
                return
            log.warning(
                "storing a batch failed; retrying its events one by one",
                extra={"error": f"{type(exc).__name__}: {exc}"[:500], "events": len(items)},
            )
            for item in items:
                await store_with_retry([item], flush, on_broken)
            return
