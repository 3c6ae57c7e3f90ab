"""DSN aggregation windows: the events of one message and kind that arrive within
``dsn_aggregate_window_s`` of the first are stored together (one DSN lists them all)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque

from services.notifier.aggregate import Aggregator, Buffered, key_of, store_with_retry, take_batch
from shared.errors import Unavailable
from tests.unit.notifier.builders import event, recipient

WINDOW = 0.15


async def until(cond: object, timeout: float = 3.0) -> None:
    """Wait for ``cond()`` (a machine under load may run timers late, never early)."""
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def item(kind: str = "bounce", message_id: uuid.UUID | None = None, address: str = "a@example.org"
         ) -> Buffered:
    # the AMQP message is only carried along (acked by the consumer after the store)
    return Buffered(event(kind, message_id=message_id, recipients=[recipient(address, kind)]),
                    message=None)  # type: ignore[arg-type]


class Store:
    """The flush callback: what each flush stored, and when."""

    def __init__(self) -> None:
        self.flushes: list[tuple[float, list[Buffered]]] = []
        self.broken: list[Buffered] = []

    async def flush(self, items: list[Buffered]) -> None:
        self.flushes.append((time.monotonic(), list(items)))

    async def on_broken(self, item: Buffered, exc: Exception) -> None:
        self.broken.append(item)

    def windows(self) -> list[list[str]]:
        """Per flush, per (message, kind): the recipients, in the order stored."""
        out: list[list[str]] = []
        for _, items in self.flushes:
            groups: dict[object, list[str]] = {}
            for it in items:
                groups.setdefault(key_of(it), []).append(it.event.recipients[0].address)
            out.extend(groups.values())
        return out


def aggregator(store: Store, max_items: int = 100) -> Aggregator:
    return Aggregator(WINDOW, store.flush, store.on_broken, max_items=max_items)


async def test_the_recipients_of_one_message_failing_together_are_stored_together() -> None:
    store, mid = Store(), uuid.uuid4()
    agg = aggregator(store)
    t0 = time.monotonic()
    for addr in ("a@example.org", "b@example.org", "c@example.org"):
        agg.add(item(message_id=mid, address=addr))
        await asyncio.sleep(0.01)
    await until(lambda: store.flushes)
    assert store.windows() == [["a@example.org", "b@example.org", "c@example.org"]]
    assert store.flushes[0][0] - t0 >= WINDOW  # a window never closes early
    await asyncio.sleep(0.05)
    assert len(store.flushes) == 1


async def test_each_kind_and_each_message_has_its_own_window() -> None:
    store, mid = Store(), uuid.uuid4()
    agg = aggregator(store)
    agg.add(item("bounce", mid, "a@example.org"))
    agg.add(item("delayed", mid, "b@example.org"))
    agg.add(item("bounce", uuid.uuid4(), "c@example.org"))
    agg.add(item("bounce", mid, "d@example.org"))
    await until(lambda: len(store.windows()) == 3)
    assert sorted(store.windows()) == [["a@example.org", "d@example.org"], ["b@example.org"],
                                       ["c@example.org"]]


async def test_an_event_after_its_window_closed_opens_a_new_one() -> None:
    store, mid = Store(), uuid.uuid4()
    agg = aggregator(store)
    agg.add(item(message_id=mid, address="a@example.org"))
    await until(lambda: store.flushes)
    agg.add(item(message_id=mid, address="b@example.org"))
    await until(lambda: len(store.flushes) == 2)
    assert store.windows() == [["a@example.org"], ["b@example.org"]]


async def test_a_full_buffer_closes_the_oldest_window_early() -> None:
    store = Store()
    agg = aggregator(store, max_items=3)
    old, new = uuid.uuid4(), uuid.uuid4()
    t0 = time.monotonic()
    agg.add(item(message_id=old, address="a@example.org"))
    agg.add(item(message_id=old, address="b@example.org"))
    agg.add(item(message_id=new, address="c@example.org"))
    await until(lambda: store.flushes)
    assert store.windows() == [["a@example.org", "b@example.org"]]
    assert store.flushes[0][0] - t0 < WINDOW  # closed before its window ended
    await until(lambda: len(store.flushes) == 2)
    assert store.windows() == [["a@example.org", "b@example.org"], ["c@example.org"]]
    assert store.flushes[1][0] - t0 >= WINDOW


async def test_shutdown_stores_every_open_window_at_once() -> None:
    store = Store()
    agg = Aggregator(60.0, store.flush, store.on_broken, max_items=100)
    agg.add(item(address="a@example.org"))
    agg.add(item(address="b@example.org"))
    await asyncio.wait_for(agg.flush_all(), 1)
    assert sorted(store.windows()) == [["a@example.org"], ["b@example.org"]]


def test_a_flush_takes_whole_windows_up_to_its_size() -> None:
    w1, w2, w3 = [item() for _ in range(2)], [item()], [item() for _ in range(3)]
    closed = deque([w1, w2, w3])
    assert take_batch(closed, 3) == w1 + w2
    assert take_batch(closed, 3) == w3
    big = [item() for _ in range(5)]
    closed = deque([big, w2])
    assert take_batch(closed, 3) == big  # never split: a larger window goes alone
    assert take_batch(closed, 3) == w2


async def test_an_outage_is_waited_out_and_nothing_is_lost() -> None:
    stored: list[list[Buffered]] = []
    calls = 0

    async def flaky(items: list[Buffered]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise Unavailable("database down")
        stored.append(items)

    items = [item(), item()]
    await asyncio.wait_for(store_with_retry(items, flaky, Store().on_broken), 3)
    assert stored == [items]


async def test_one_bad_event_does_not_take_its_neighbours_with_it() -> None:
    bad = item(address="bad@example.org")
    mid = uuid.uuid4()
    window = [item(message_id=mid, address="a@example.org"), bad,
              item(message_id=mid, address="b@example.org")]
    other = [item(address="c@example.org")]
    store = Store()

    async def picky(items: list[Buffered]) -> None:
        if bad in items:
            raise ValueError("the renderer refuses this one")
        await store.flush(items)

    await store_with_retry(window + other, picky, store.on_broken)
    assert store.broken == [bad]
    assert sorted(a for w in store.windows() for a in w) == [
        "a@example.org", "b@example.org", "c@example.org"]
