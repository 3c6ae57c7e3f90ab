"""Collecting the events of one message and kind for a short window, then storing the
windows that close together in one transaction.

Why: when a message to many recipients fails for all of them, the executor emits one
event per recipient within moments; the sender should get one DSN listing them all
(SPEC §4), not one per recipient. The first event of a (message, kind) opens a
window of ``dsn_aggregate_window_s``; everything that arrives for the same key before
it closes is flushed together.

Throughput (bounce storms): windows are kept in the order they opened, and one timer
closes every window that is due, :data:`CLOSE_LAG_S` after the first of them (a window
never closes early, at most that much late). Closed windows queue up; at most
:data:`FLUSHERS` flushes run at once, each taking every queued window up to
:data:`MAX_BATCH_EVENTS` events. So windows that close in the same tick, or while a
flush is running, are stored by *one* flush (one transaction), while each window still
becomes its own DSN. The buffer is bounded (``max_items``, below the channel's
prefetch, since buffered messages are unacked): when it is full, the *oldest* windows
close early, the ones most likely to be complete. Only a message whose events are
spread over longer than the buffer lasts at the current rate can get more than one DSN.

Guarantees: a flush is retried with back-off while the database is unavailable and
the buffered AMQP messages stay unacknowledged until it succeeds, so a crash at any
point redelivers them. A batch whose flush fails for another reason (a bug, an event
the renderer refuses) is split, first into its windows and then into single events,
each retried alone, so one bad event does not take its neighbours with it; the flush
callback decides what happens to that one.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aio_pika.abc import AbstractIncomingMessage

from shared.errors import Unavailable
from shared.schemas import Event

log = logging.getLogger("mailexec.notifier.aggregate")

MAX_RETRY_DELAY_S = 30.0
CLOSE_LAG_S = 0.02  # windows due meanwhile close in the same sweep
FLUSHERS = 2  # flushes in flight: one can render while the other waits for the database
MAX_BATCH_EVENTS = 256  # events per flush (windows are never split across flushes)


@dataclass(frozen=True)
class Buffered:
    event: Event
    message: AbstractIncomingMessage


Key = tuple[uuid.UUID | None, str]
Flush = Callable[[list[Buffered]], Awaitable[None]]
OnBroken = Callable[[Buffered, Exception], Awaitable[None]]


def key_of(item: Buffered) -> Key:
    return (item.event.message_id, item.event.kind)


@dataclass
class _Window:
    closes_at: float
    items: list[Buffered] = field(default_factory=list)


class Aggregator:
    def __init__(
        self,
        window_s: float,
        flush: Flush,
        on_broken: OnBroken,
        *,
        max_items: int,
        flushers: int = FLUSHERS,
        max_batch_events: int = MAX_BATCH_EVENTS,
    ) -> None:
        self._window = window_s
        self._flush = flush
        self._on_broken = on_broken
        self._max_items = max_items
        self._flushers = flushers
        self._max_batch = max_batch_events
        self._open: dict[Key, _Window] = {}  # in the order the windows opened
        self._open_items = 0
        self._closed: deque[list[Buffered]] = deque()  # closed windows waiting for a flush
        self._timer: asyncio.TimerHandle | None = None
        self._flushing: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def add(self, item: Buffered) -> None:
        key = key_of(item)
        window = self._open.get(key)
        if window is None:
            loop = asyncio.get_running_loop()
            window = self._open[key] = _Window(loop.time() + self._window)
            if self._timer is None:
                self._timer = loop.call_at(window.closes_at + CLOSE_LAG_S, self._close_due)
        window.items.append(item)
        self._open_items += 1
        # Unacked messages count against the channel's prefetch: never let the buffer
        # alone stall the consumer. Close the oldest windows until there is room.
        while self._open_items >= self._max_items and self._open:
            self._close(next(iter(self._open)))
        self._start_flushes()

    def _close(self, key: Key) -> None:
        window = self._open.pop(key)
        self._open_items -= len(window.items)
        self._closed.append(window.items)

    def _close_due(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._open:
            key, window = next(iter(self._open.items()))
            if window.closes_at > now:
                self._timer = loop.call_at(window.closes_at + CLOSE_LAG_S, self._close_due)
                break
            self._close(key)
        self._start_flushes()

    def _start_flushes(self) -> None:
        while self._closed and len(self._flushing) < self._flushers:
            batch = take_batch(self._closed, self._max_batch)
            task = asyncio.create_task(self._store(batch))
            self._flushing.add(task)
            self._idle.clear()
            task.add_done_callback(self._flushed)

    def _flushed(self, task: asyncio.Task[None]) -> None:
        self._flushing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a flush failed unexpectedly", exc_info=task.exception())
        self._start_flushes()
        if not self._flushing and not self._closed:
            self._idle.set()

    async def _store(self, items: list[Buffered]) -> None:
        await store_with_retry(items, self._flush, self._on_broken)

    async def flush_all(self) -> None:
        """Close every window now and wait for the stores (graceful shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._open:
            self._close(next(iter(self._open)))
        self._start_flushes()
        await self._idle.wait()

    def cancel(self) -> None:
        """Drop everything unflushed (the broker redelivers the unacked messages)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in self._flushing:
            task.cancel()
        self._open.clear()
        self._open_items = 0
        self._closed.clear()


def take_batch(closed: deque[list[Buffered]], max_events: int) -> list[Buffered]:
    """The next flush: whole closed windows, oldest first, up to ``max_events`` events (a
    larger window goes alone: a window is never split across flushes)."""
    batch: list[Buffered] = []
    while closed and (not batch or len(batch) + len(closed[0]) <= max_events):
        batch.extend(closed.popleft())
    return batch


def _split(items: list[Buffered]) -> list[list[Buffered]]:
    """A failed batch in smaller pieces: its windows, or a window's single events."""
    by_key: dict[Key, list[Buffered]] = {}
    for item in items:
        by_key.setdefault(key_of(item), []).append(item)
    if len(by_key) > 1:
        return list(by_key.values())
    return [[item] for item in items]


async def store_with_retry(items: list[Buffered], flush: Flush, on_broken: OnBroken) -> None:
    """``flush(items)`` until it works: back off while the database is unavailable; on any
    other error split the batch (windows, then events) and hand an event that fails alone
    to ``on_broken``."""
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
                "storing a batch failed; retrying it in smaller pieces",
                extra={"error": f"{type(exc).__name__}: {exc}"[:500], "events": len(items)},
            )
            for piece in _split(items):
                await store_with_retry(piece, flush, on_broken)
            return
