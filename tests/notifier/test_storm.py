"""Bounce storms: many messages' events arriving together are stored in a few combined
transactions and sent over kept SMTP connections, and still every message gets exactly
one DSN with exactly its recipients; a bad event in a combined batch is dead-lettered
alone; a database outage during a combined batch loses and duplicates nothing; two
notifiers sharing the outbox never send a row twice."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.conftest import DB_NAME, db_conn
from tests.helpers import TcpProxy
from tests.notifier.conftest import (
    Publish,
    SinkHandler,
    SmtpSink,
    StartNotifier,
    delivery_status_blocks,
    make_event,
    notifications,
    queue_depth,
    ready,
    recipient,
    store_message,
    wait_for,
)


@dataclass
class _CountingHandler(SinkHandler):
    """Also counts the connections (sessions) the relay saw."""

    connections: int = 0

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        self.connections += 1
        session.host_name = hostname
        return responses


async def _counting_sink(**smtp_kwargs: Any) -> SmtpSink:
    sink = SmtpSink(**smtp_kwargs)
    sink.handler = _CountingHandler()
    return await sink.start()


def _plan(messages: int, seed: int) -> dict[uuid.UUID, tuple[str, list[str]]]:
    """message id -> (sender, recipients): 1 to 5 recipients each."""
    rng = random.Random(seed)
    return {
        uuid.uuid4(): (f"sender{n}@example.net", [f"r{n}-{k}@example.org" for k in range(rng.randint(1, 5))])
        for n in range(messages)
    }


async def _store_and_publish(
    publish: Publish, plan: dict[uuid.UUID, tuple[str, list[str]]], seed: int, bad: list[bytes] | None = None
) -> list[Any]:
    """Store the messages, then publish one event per recipient, all messages interleaved."""
    for mid, (sender, _) in plan.items():
        await store_message(mid, sender=sender)
    events: list[Any] = [
        make_event("bounce", mid, [recipient(rcpt)], sender=sender)
        for mid, (sender, rcpts) in plan.items()
        for rcpt in rcpts
    ]
    random.Random(seed).shuffle(events)
    for body in bad or []:
        events.insert(len(events) // 2, body)
    await asyncio.gather(*(publish(e) for e in events))
    return events


def _check_one_dsn_each(sink: SmtpSink, plan: dict[uuid.UUID, tuple[str, list[str]]]) -> None:
    per_sender = Counter(rcpt for r in sink.received for rcpt in r.rcpt_tos)
    assert per_sender == Counter(sender for sender, _ in plan.values())  # one DSN per message
    for mid, (sender, rcpts) in plan.items():
        (dsn,) = sink.to(sender)
        _, *blocks = delivery_status_blocks(dsn.message)
        assert sorted(b["Final-Recipient"] for b in blocks) == sorted(f"rfc822; {a}" for a in rcpts)
        assert str(mid) in dsn.data.decode()


async def test_bounces_of_many_messages_together_give_one_dsn_each(
    notifier: StartNotifier, publish: Publish
) -> None:
    sink = await _counting_sink()
    try:
        await _many_messages_together(notifier, sink, publish)
    finally:
        await sink.stop()


async def _many_messages_together(notifier: StartNotifier, sink: SmtpSink, publish: Publish) -> None:
    await notifier(sink.url, dsn_aggregate_window_s=0.5)
    plan = _plan(40, seed=1)
    events = await _store_and_publish(publish, plan, seed=1)

    await wait_for(lambda: len(sink.received) >= len(plan), timeout=20, what="every DSN")
    await asyncio.sleep(0.8)  # longer than the window: a second DSN would show now
    _check_one_dsn_each(sink, plan)
    rows = await notifications()
    assert len(rows) == len(plan) and all(r["state"] == "sent" for r in rows)
    by_message = {r["message_id"]: sorted(r["event_ids"]) for r in rows}
    for mid in plan:
        assert by_message[mid] == sorted(str(e.event_id) for e in events if e.message_id == mid)
    # windows that closed together were stored together: fewer transactions than DSNs
    assert len({r["created_at"] for r in rows}) < len(rows) / 2
    # and sent over kept connections, not one connection per DSN
    assert isinstance(sink.handler, _CountingHandler)
    assert sink.handler.connections < len(plan) / 2


async def test_a_bad_event_in_a_combined_batch_is_dead_lettered_alone(
    notifier: StartNotifier, sink: SmtpSink, publish: Publish, broker: Any, caplog: Any
) -> None:
    """One event whose DSN the database refuses (a trigger, for want of a real way to
    make a valid event fail) and one malformed body, in the middle of everything else."""
    conn = await db_conn()
    try:
        await conn.execute(
            "CREATE FUNCTION notifier.refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN IF NEW.rcpt = 'poison@example.net' THEN RAISE EXCEPTION 'poison refused'; END IF; "
            "RETURN NEW; END $$; "
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON notifier.notifications "
            "FOR EACH ROW EXECUTE FUNCTION notifier.refuse_poison()"
        )
        await notifier(sink.url, dsn_aggregate_window_s=0.5)
        plan = _plan(12, seed=2)
        poison = uuid.uuid4()
        await store_message(poison, sender="poison@example.net")
        poison_event = make_event(
            "bounce", poison, [recipient("victim@example.org")], sender="poison@example.net"
        )
        malformed = orjson.dumps({"v": 1, "kind": "bounce", "event_id": str(uuid.uuid4())})
        await _store_and_publish(publish, plan, seed=2, bad=[malformed, poison_event.to_json()])

        await wait_for(lambda: len(sink.received) >= len(plan), timeout=20, what="the good DSNs")
        await wait_for(lambda: _depth(broker, "notifier.dead", 2), timeout=20, what="2 dead-lettered")
        await asyncio.sleep(0.8)
        _check_one_dsn_each(sink, plan)
        assert not sink.to("poison@example.net")
        assert await queue_depth(broker, "notifier.events") == 0
        assert len(await notifications()) == len(plan)
        assert not await conn.fetchval(
            "SELECT count(*) FROM notifier.seen_events WHERE event_id = $1", poison_event.event_id
        )
        assert "storing a batch failed; retrying it in smaller pieces" in caplog.text
    finally:
        await conn.execute(
            "DROP TRIGGER IF EXISTS refuse_poison ON notifier.notifications; "
            "DROP FUNCTION IF EXISTS notifier.refuse_poison()"
        )
        await conn.close()


async def _depth(broker: Any, name: str, n: int) -> bool:
    return await queue_depth(broker, name) == n


async def test_database_outage_during_a_combined_batch_loses_nothing(
    clean_db: None, services: Any, sink: SmtpSink, publish: Publish, broker: Any
) -> None:
    proxy = await TcpProxy(5432).start()
    try:
        env = {
            "MAILEXEC_DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:{proxy.port}/{DB_NAME}",
            "MAILEXEC_SMTP_URL": sink.url,
            "MAILEXEC_DSN_AGGREGATE_WINDOW_S": "1.0",
            "MAILEXEC_NOTIFIER_RETRY_BASE_S": "0.2",
            "MAILEXEC_NOTIFIER_RETRY_MAX_S": "0.5",
            "MAILEXEC_LOG_LEVEL": "info",
        }
        proc = services("notifier", extra_env=env, wait=False)
        await ready(proc)
        plan = _plan(15, seed=3)
        for mid, (sender, _) in plan.items():
            await store_message(mid, sender=sender)  # directly, not through the proxy
        # published, then the database goes away before their windows close
        events = [
            make_event("bounce", mid, [recipient(r)], sender=sender)
            for mid, (sender, rcpts) in plan.items()
            for r in rcpts
        ]
        await asyncio.gather(*(publish(e) for e in events))
        await wait_for(lambda: _depth(broker, "notifier.events", 0), what="events handed to the notifier")
        await proxy.cut()
        await asyncio.sleep(3.0)  # flushes fail and back off meanwhile
        assert sink.received == []
        assert await notifications() == []
        assert await _depth(broker, "notifier.dead", 0)
        await proxy.restore()

        await wait_for(lambda: len(sink.received) >= len(plan), timeout=40, what="every DSN after the outage")
        await asyncio.sleep(1.5)
        _check_one_dsn_each(sink, plan)
        rows = await notifications()
        assert len(rows) == len(plan) and all(r["state"] == "sent" for r in rows)
        conn = await db_conn()
        try:
            seen = await conn.fetchval("SELECT count(*) FROM notifier.seen_events")
        finally:
            await conn.close()
        assert seen == len(events)
        assert await _depth(broker, "notifier.dead", 0)
        assert "cannot store notifications yet" in proc.log_tail(400)
    finally:
        await proxy.stop()


async def test_two_notifiers_share_the_outbox_and_send_each_dsn_once(
    notifier: StartNotifier, sink: SmtpSink, publish: Publish
) -> None:
    await notifier(sink.url, dsn_aggregate_window_s=0.2)
    await notifier(sink.url, dsn_aggregate_window_s=0.2)
    plan = {uuid.uuid4(): (f"s{n}@example.net", ["bob@example.org"]) for n in range(150)}
    await _store_and_publish(publish, plan, seed=4)
    await wait_for(lambda: len(sink.received) >= len(plan), timeout=30, what="every DSN")
    await asyncio.sleep(1.0)
    _check_one_dsn_each(sink, plan)
    rows = await notifications()
    assert len(rows) == len(plan)
    assert all((r["state"], r["attempts"]) == ("sent", 1) for r in rows)


async def test_a_kept_connection_the_relay_closed_is_replaced_without_deferring(
    notifier: StartNotifier, publish: Publish
) -> None:
    sink = await _counting_sink(timeout=0.3)  # the relay closes connections idle for 0.3 s
    try:
        # a deferral would wait 30 s: the DSNs below must not be deferred
        await notifier(sink.url, dsn_aggregate_window_s=0.05, notifier_retry_base_s=30)
        for n in range(3):
            mid = uuid.uuid4()
            await store_message(mid, sender=f"s{n}@example.net")
            sender = f"s{n}@example.net"
            await publish(make_event("bounce", mid, [recipient("bob@example.org")], sender=sender))
            await wait_for(lambda n=n: len(sink.received) > n, timeout=5, what=f"DSN {n}")
            await asyncio.sleep(0.6)  # the relay drops the idle connection meanwhile
        rows = await notifications()
        assert [(r["state"], r["attempts"]) for r in rows] == [("sent", 1)] * 3
        assert isinstance(sink.handler, _CountingHandler)
        assert sink.handler.connections == 3
    finally:
        await sink.stop()


async def test_a_storm_of_postmaster_notices_is_stored_in_batches_and_rate_limited(
    notifier: StartNotifier, sink: SmtpSink, publish: Publish, broker: Any
) -> None:
    """A broken program on a busy account: every failed delivery is an admin notice.
    They are stored many per transaction (one each, serialised, managed ~20/s and filled
    the queue), and the rate limit still lets one notice per account through."""
    from tests.notifier.conftest import POSTMASTER, program_failed_notice

    await notifier(sink.url)
    accounts = ["busy1@example.org", "busy2@example.org"]
    events = []
    for n in range(300):
        account = accounts[n % 2]
        mid = uuid.uuid4()
        await store_message(mid, sender="alice@example.net")
        events.append(make_event("admin_notice", mid, [recipient(account, "admin_notice")],
                                 notice=program_failed_notice(account)))
    await asyncio.gather(*(publish(e) for e in events))  # arriving as a storm does

    async def drained() -> bool:
        return await queue_depth(broker, "notifier.events") == 0

    await wait_for(drained, timeout=30, what="all 300 notices consumed")
    await wait_for(lambda: len(sink.received) >= 2, what="the two notices")
    await asyncio.sleep(0.5)
    rows = [r for r in await notifications() if r["kind"] == "admin_notice"]
    assert len(rows) == 2  # one per account; the other 298 counted as suppressed
    assert sorted(r.rcpt_tos[0] for r in sink.received) == [POSTMASTER] * 2
    conn = await db_conn()
    try:
        seen = await conn.fetchval("SELECT count(*) FROM notifier.seen_events")
        # now() is the transaction's start: rows of one transaction share it
        transactions = await conn.fetchval("SELECT count(DISTINCT at) FROM notifier.seen_events")
    finally:
        await conn.close()
    assert seen == 300  # every event recorded: a redelivery produces nothing again
    assert transactions < 300 / 4, transactions
