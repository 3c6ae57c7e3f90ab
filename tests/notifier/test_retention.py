"""Retention and the notifier, against the real PostgreSQL, RabbitMQ and an SMTP sink:

- the DSN hand-over: a body purge run as eagerly as possible — right after the
  executor's finalising statement committed, before the notifier has seen the event —
  keeps the body, the RET=FULL bounce returns the full original, and the next purge
  deletes the body;
- the notifier's own purge (services/notifier/retention.py): content once sent, kept
  while a send is retried, gone once failed for good; records and seen_events after
  their windows (rows backdated); the recipients a DSN reported survive its content.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg
import pytest
from prometheus_client import REGISTRY

from services.executor import worker
from services.executor.events import events_for
from services.executor.repo import Repo as ExecutorRepo
from services.executor.verdict import Verdict
from services.ingest.repo import Database
from services.ingest.retention import Purger as IngestPurger
from services.notifier import retention
from services.notifier.dsn import render_dsn_bytes
from services.notifier.retention import Purger
from services.notifier.visibility import user_may_read
from shared.policy_client import NoticeSettings
from shared.schemas import Job
from shared.settings import get_settings
from testing.mailrows import BODY_OF_M
from tests.conftest import db_conn, free_port
from tests.notifier.conftest import (
    ORIGINAL,
    Publish,
    SmtpSink,
    StartNotifier,
    make_event,
    recipient,
    store_message,
    wait_for,
    wait_sent,
)

BOB = "bob@example.org"
QUIET = {"retention_interval_s": 3600.0}  # the background pass stays out of the way


class Policy:
    """What policy would answer (the purgers read it through their policy client)."""

    def __init__(self, days: int = 30, delay_warning_after_s: int = 14400) -> None:
        self.current = NoticeSettings(include_output=True, postmaster="postmaster@x.example",
                                      delay_warning_after_s=delay_warning_after_s,
                                      record_retention_days=days)

    async def get(self) -> NoticeSettings:
        return self.current


async def test_a_purge_between_finalisation_and_rendering_keeps_the_returned_content(
        conn: asyncpg.Connection, sink: SmtpSink, notifier: StartNotifier, publish: Publish,
        mx_env: dict[str, str]) -> None:
    mid, rid = uuid.uuid4(), uuid.uuid4()
    await store_message(mid, sender="alice@example.net", ret="FULL")
    await conn.execute("INSERT INTO mail.recipients (id, message_id, address, account, state) "
                       "VALUES ($1, $2, $3, $3, 'running')", rid, mid, BOB)
    job = Job(job_id=rid, message_id=mid, recipient=BOB, sender="alice@example.net", ret="FULL",
              arrival=datetime.now(UTC), size=len(ORIGINAL))
    verdict = Verdict(kind="bounced", status="5.3.0",
                      diagnostic="program mymail exited with status 1")
    events = events_for(job, verdict, 1)
    repo = ExecutorRepo(mx_env["MAILEXEC_DATABASE_URL"], pool_size=1)
    await repo.start()
    try:  # the executor's own finalising statement (worker._conclude)
        assert await repo.record(worker.recipient_update(job, verdict, [e for _, e in events]))
    finally:
        await repo.close()

    db = Database(mx_env["MAILEXEC_DATABASE_URL"], max_size=2)
    await db.start()
    purger = IngestPurger(db, get_settings().model_copy(
        update={"policy_url": f"http://127.0.0.1:{free_port()}"}))
    try:
        # as eager as a purge can be: the outcome is committed, no notifier has seen it yet
        assert await purger.release_bodies() == 0
        assert await conn.fetchval(f"SELECT {BODY_OF_M} FROM mail.messages m WHERE id = $1",
                                   mid) == ORIGINAL

        await notifier(sink.url, **QUIET)
        for key, event in events:
            await publish(event, key)
        await wait_for(lambda: sink.received, what="the bounce")
        dsn = sink.received[0].data
        assert b"BODY-MARKER-LINE" in dsn and b"Subject: quarterly numbers" in dsn
        assert await conn.fetchval("SELECT notifier_pending FROM mail.recipients WHERE id = $1",
                                   rid) is None
        # rendered: the body goes at the next pass, the records stay
        assert await purger.release_bodies() == 1
        row = await conn.fetchrow(
            f"SELECT {BODY_OF_M} AS body, body_held, size FROM mail.messages m WHERE id = $1", mid)
        assert row["body"] is None and not row["body_held"] and row["size"] == len(ORIGINAL)
    finally:
        await purger.stop()
        await db.close()


async def test_a_busy_recipient_row_never_holds_up_the_dsn(
        conn: asyncpg.Connection, sink: SmtpSink, notifier: StartNotifier,
        publish: Publish) -> None:
    """The row whose flag the notifier clears is locked elsewhere (a deadlock-prone
    moment): the DSN is stored and sent all the same, and the flag comes off once the row
    is free — never the other way round."""
    mid, rid = uuid.uuid4(), uuid.uuid4()
    await store_message(mid, sender="alice@example.net", ret="FULL")
    await conn.execute("INSERT INTO mail.recipients (id, message_id, address, account, state, "
                       "final_at, notifier_pending) VALUES ($1, $2, $3, $3, 'bounced', now(), "
                       "'{bounce}')", rid, mid, BOB)
    locker = await db_conn()
    tx = locker.transaction()
    await tx.start()
    try:
        await locker.execute("SELECT 1 FROM mail.recipients WHERE id = $1 FOR UPDATE", rid)
        await notifier(sink.url, **QUIET)
        await publish(make_event("bounce", mid, [recipient(BOB)], ret="FULL"))
        await wait_for(lambda: sink.received, what="the DSN, its row busy")
        assert b"BODY-MARKER-LINE" in sink.received[0].data
        assert await conn.fetchval("SELECT notifier_pending FROM mail.recipients WHERE id = $1",
                                   rid) == ["bounce"]
    finally:
        await tx.rollback()
        await locker.close()

    async def cleared() -> bool:
        return await conn.fetchval("SELECT notifier_pending IS NULL FROM mail.recipients "
                                   "WHERE id = $1", rid)  # type: ignore[no-any-return]

    await wait_for(cleared, timeout=5, what="the flag cleared once the row was free")


async def test_content_goes_once_sent_and_stays_while_a_send_is_retried(
        conn: asyncpg.Connection, sink: SmtpSink, notifier: StartNotifier,
        publish: Publish) -> None:
    sent_mid, retried_mid = uuid.uuid4(), uuid.uuid4()
    for mid in (sent_mid, retried_mid):
        await store_message(mid, sender="alice@example.net")
    sink.handler.refuse_rcpt["carol@example.net"] = "451 4.3.0 try again later"
    runtime = await notifier(sink.url, **QUIET)
    await publish(make_event("bounce", sent_mid, [recipient(BOB)]))
    await publish(make_event("bounce", retried_mid, [recipient(BOB)], sender="carol@example.net"))
    await wait_sent(sink, "alice@example.net", sent_mid, "bounce", what="the sent DSN, recorded sent")

    async def retried() -> bool:
        return bool(await conn.fetchval(
            "SELECT attempts > 0 FROM notifier.notifications WHERE message_id = $1", retried_mid))

    await wait_for(retried, what="a failed send")
    before = REGISTRY.get_sample_value("mailexec_retention_purged_total",
                                       {"kind": "notification_content"}) or 0
    assert (await runtime.retention.run_once())["notification_content"] == 1
    rows = {r["message_id"]: r for r in await conn.fetch(
        "SELECT message_id, state, content, reported FROM notifier.notifications")}
    assert rows[sent_mid]["state"] == "sent" and rows[sent_mid]["content"] is None
    assert rows[sent_mid]["reported"] == [BOB]
    assert rows[retried_mid]["state"] == "pending" and rows[retried_mid]["content"] is not None
    assert REGISTRY.get_sample_value("mailexec_retention_purged_total",
                                     {"kind": "notification_content"}) == before + 1
    # the user still sees its DSN, by what it reported
    assert user_may_read("bounce", None, BOB, rows[sent_mid]["reported"])

    # failed for good: its content goes too (the postmaster got a copy, gone once sent)
    await conn.execute("UPDATE notifier.notifications SET state = 'failed' "
                       "WHERE message_id = $1", retried_mid)
    assert (await runtime.retention.run_once())["notification_content"] == 1
    assert await conn.fetchval("SELECT count(*) FROM notifier.notifications "
                               "WHERE content IS NOT NULL") == 0


async def test_records_and_seen_events_go_after_their_windows(
        conn: asyncpg.Connection, mx_env: dict[str, str]) -> None:
    def days(n: float) -> str:
        return f"now() - interval '{n} days'"

    async def notification(kind: str, state: str, age_days: float, content: bytes | None,
                           reported: list[str] | None = None) -> uuid.UUID:
        nid = uuid.uuid4()
        await conn.execute(
            "INSERT INTO notifier.notifications (id, message_id, kind, rcpt, state, content, "
            f"reported, created_at) VALUES ($1, $2, $3, 'a@example.net', $4, $5, $6, {days(age_days)})",
            nid, uuid.uuid4(), kind, state, content, reported)
        return nid

    old_sent = await notification("bounce", "sent", 31, None, [BOB])
    old_failed = await notification("admin_notice", "failed", 40, None)
    old_pending = await notification("bounce", "pending", 40, b"still to send")
    young = await notification("bounce", "sent", 29, None, [BOB])
    delayed = await notification("delayed", "sent", 1.5, None, [BOB])  # < its 2-day window
    # a row from before migration 0008: its reported recipients are read from its content
    legacy_content = render_dsn_bytes(
        make_event("bounce", uuid.uuid4(), [recipient("Bob@Example.org")]), None,
        reporting_mta="mx.test.example", max_returned_body_bytes=100, include_output=True)
    legacy = await notification("bounce", "sent", 1, legacy_content)
    seen = [uuid.uuid4() for _ in range(3)]
    await conn.execute("INSERT INTO notifier.seen_events (event_id, at) VALUES "
                       f"($1, {days(31)}), ($2, {days(30.5)}), ($3, {days(29)})", *seen)

    settings = get_settings().model_copy(update={"retention_batch": 2, **QUIET})
    purger = Purger(settings, Policy(days=30, delay_warning_after_s=2 * 86400))  # type: ignore[arg-type]
    done = await purger.run_once()
    assert done == {"notification_content": 1, "notification": 2, "seen_event": 2}
    left = {r["id"] for r in await conn.fetch("SELECT id FROM notifier.notifications")}
    assert left == {old_pending, young, delayed, legacy}
    assert old_sent not in left and old_failed not in left
    assert await conn.fetchval("SELECT reported FROM notifier.notifications WHERE id = $1",
                               legacy) == ["bob@example.org"]
    assert [r["event_id"] for r in await conn.fetch("SELECT event_id FROM notifier.seen_events")
            ] == [seen[2]]
    assert REGISTRY.get_sample_value("mailexec_retention_oldest_seconds",
                                     {"kind": "seen_event"}) == pytest.approx(29 * 86400, rel=0.01)

    # a shorter retention, but a longer delay-warning window keeps the warning's record
    purger.policy = Policy(days=1, delay_warning_after_s=2 * 86400)  # type: ignore[assignment]
    await purger.run_once()
    left = {r["id"] for r in await conn.fetch("SELECT id FROM notifier.notifications")}
    assert left == {old_pending, delayed, legacy}

    # nothing but content until policy has answered: a guessed retention deletes nothing
    unknown = Policy(days=1)
    unknown.current = NoticeSettings(include_output=True, postmaster="p@x.example",
                                     delay_warning_after_s=1, record_retention_days=1,
                                     from_policy=False)
    purger.policy = unknown  # type: ignore[assignment]
    await conn.execute("UPDATE notifier.notifications SET created_at = now() - interval '9 days'")
    assert (await purger.run_once())["notification"] == 0


async def test_every_notifier_purge_statement_walks_an_index(conn: asyncpg.Connection) -> None:
    """A batch is to the table what 500 rows are to a million: 50 of 20000 (a larger
    share of a small table is cheaper read whole, and the planner rightly does so)."""
    await conn.execute("""
        INSERT INTO notifier.notifications (id, message_id, kind, rcpt, state, content,
                                            created_at)
        SELECT gen_random_uuid(), gen_random_uuid(), 'bounce', 'a@example.net',
               CASE WHEN g % 100 = 0 THEN 'pending' ELSE 'sent' END,
               CASE WHEN g % 100 = 0 THEN 'x'::bytea END, now() - make_interval(mins => g)
        FROM generate_series(1, 20000) AS g""")
    await conn.execute("INSERT INTO notifier.seen_events (event_id, at) SELECT gen_random_uuid(), "
                       "now() - make_interval(mins => g) FROM generate_series(1, 20000) AS g")
    await conn.execute("ANALYZE notifier.notifications; ANALYZE notifier.seen_events")
    for name, sql in {"content": retention._CONTENT_VICTIMS,
                      "notifications": retention._DELETE_NOTIFICATIONS,
                      "seen events": retention._DELETE_SEEN, "oldest": retention._OLDEST}.items():
        plan = "\n".join(r[0] for r in await conn.fetch(
            "EXPLAIN " + sql.replace(":batch", "50").replace(":keep_s", "86400")))
        assert "Seq Scan" not in plan, f"{name}:\n{plan}"
