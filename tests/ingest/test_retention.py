"""Ingest's retention purge (services/ingest/retention.py) against the real PostgreSQL:
which bodies go and which wait, records after the retention period (rows backdated, not
waited for), that a purge and a delivery never wait for each other, that every batch
walks an index, and the metrics.

The rows are written here as ingest and the executor write them; the executor's own
statements are used where the race is with them (``services/executor/repo.py``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from services.executor.repo import Repo as ExecutorRepo
from services.ingest import bodyring, retention
from services.ingest.repo import Database
from services.ingest.retention import Purger
from services.notifier import repo as notifier_repo
from shared.db import asyncpg_dsn, session_scope
from shared.settings import get_settings
from testing.mailrows import store_body
from tests.conftest import free_port

BODY = b"From: a@example.net\r\nSubject: keep me?\r\n\r\nBODY-LINE\r\n"


async def message(conn: asyncpg.Connection, *recipients: dict[str, Any],
                  received_days_ago: float = 0.0, body: bytes = BODY) -> uuid.UUID:
    """A stored message whose recipients are in the given states (``state``, and
    ``final_days_ago``, ``pending``, ``dead``)."""
    mid = uuid.uuid4()
    await conn.execute(
        "INSERT INTO mail.messages (id, sender, ret, notify, size, received_at) "
        "VALUES ($1, 'alice@example.net', 'FULL', '{FAILURE,DELAY}', $2, "
        "now() - make_interval(secs => $3))",
        mid, len(body), received_days_ago * 86400)
    await store_body(conn, mid, body)
    for i, r in enumerate(recipients):
        state = r.get("state", "delivered")
        final = state in ("delivered", "bounced", "deleted")
        await conn.execute(
            "INSERT INTO mail.recipients (id, message_id, address, account, state, final_at, "
            "notifier_pending, dead_lettered_at, created_at) VALUES ($1, $2, $3, $3, $4, "
            "CASE WHEN $5 THEN now() - make_interval(secs => $6) END, $7, "
            "CASE WHEN $8 THEN now() END, now() - make_interval(secs => $9))",
            uuid.uuid4(), mid, f"r{i}@example.org", state, final,
            r.get("final_days_ago", 0.0) * 86400, r.get("pending"), r.get("dead", False),
            received_days_ago * 86400)
    return mid


async def body_held(conn: asyncpg.Connection, mid: uuid.UUID) -> bool | None:
    """The message's flag, checked against its rows in mail.bodies (held iff it has them:
    the bodies here are in the kept partition, whose rows a release deletes)."""
    row = await conn.fetchrow(
        "SELECT body_held, EXISTS (SELECT 1 FROM mail.bodies WHERE message_id = $1) AS rows "
        "FROM mail.messages WHERE id = $1", mid)
    if row is None:
        return None
    assert row["body_held"] == row["rows"], "body_held disagrees with mail.bodies"
    return bool(row["body_held"])


@pytest.fixture
async def purger(mx_env: dict[str, str]) -> AsyncIterator[Purger]:
    db = Database(mx_env["MAILEXEC_DATABASE_URL"], max_size=4)
    await db.start()
    # no policy: records are purged only with a retention policy gave (set by the tests);
    # batches of 2 so that the windows and the cursor are exercised
    settings = get_settings().model_copy(update={
        "policy_url": f"http://127.0.0.1:{free_port()}", "retention_batch": 2})
    p = Purger(db, settings)
    yield p
    await p.stop()
    await db.close()


async def test_a_body_goes_once_every_recipient_is_final_and_no_notification_needs_it(
        conn: asyncpg.Connection, purger: Purger) -> None:
    done = await message(conn, {"state": "delivered"}, {"state": "deleted"})
    waiting = await message(conn, {"state": "delivered"}, {"state": "deferred"})
    dsn_owed = await message(conn, {"state": "bounced", "pending": ["bounce"]})
    dead = await message(conn, {"state": "bounced", "dead": True})
    discarded = await message(conn, {"state": "bounced", "dead": True})
    await conn.execute("UPDATE mail.messages SET discarded_at = now() WHERE id = $1", discarded)
    more_done = [await message(conn, {"state": "delivered"}) for _ in range(3)]

    assert await purger.release_bodies() == 2 + len(more_done)
    assert [await body_held(conn, m) for m in (done, waiting, dsn_owed, dead, discarded)] == [
        False, True, True, True, False]
    assert not any([await body_held(conn, m) for m in more_done])

    # the notifier stores the DSN and takes its flag off (its own statement): next pass
    async with session_scope() as session:
        await notifier_repo.handled(session, [(dsn_owed, "r0@example.org", "bounce")])
    assert await conn.fetchval("SELECT notifier_pending FROM mail.recipients "
                               "WHERE message_id = $1", dsn_owed) is None
    assert await purger.release_bodies() == 1
    assert not await body_held(conn, dsn_owed)
    # the records stay: GET /v1/messages/{id} still answers, body_held false
    assert await conn.fetchval("SELECT count(*) FROM mail.recipients WHERE message_id = $1",
                               dsn_owed) == 1


async def test_the_space_of_purged_bodies_takes_the_next_bodies_instead_of_growing_the_table(
        conn: asyncpg.Connection, purger: Purger) -> None:
    """Migration 0010, kept by 0011 for the partition bodies stay in past their ring
    slot's turn (the one whose bodies are deleted and vacuumed): vacuum keeps its emptied
    pages (no ACCESS EXCLUSIVE lock to give them back, no regrowth, which PostgreSQL pays a
    page write twice for) and autovacuum frees them unthrottled."""
    attachment = bytes(range(256)) * 256  # 64 KiB: 8 full rows (a page each) and a short one
    size = "SELECT pg_relation_size('mail.bodies_kept')"
    first = [await message(conn, {"state": "delivered"}, body=attachment) for _ in range(30)]
    grown = await conn.fetchval(size)
    assert grown >= 30 * 8 * 8192

    assert await purger.release_bodies() == len(first)
    await conn.execute("VACUUM mail.bodies_kept")  # what autovacuum does after the purge
    assert await conn.fetchval(size) == grown, "vacuum gave the emptied pages back"

    # the same bodies again go into those pages (a few more for where the short last
    # rows land: it levels off after a few rounds), instead of a second table's worth
    second = [await message(conn, {"state": "delivered"}, body=attachment) for _ in range(30)]
    assert await conn.fetchval(size) - grown < grown // 4, "new bodies grew the table"
    assert all([await body_held(conn, m) for m in second])
    options = await conn.fetchval(
        "SELECT reloptions FROM pg_class WHERE oid = 'mail.bodies_kept'::regclass")
    assert "autovacuum_vacuum_cost_delay=0" in options


async def test_the_notifier_clears_only_the_kinds_it_handled(conn: asyncpg.Connection) -> None:
    mid = await message(conn, {"state": "bounced", "pending": ["admin_notice", "bounce"]})
    async with session_scope() as session:
        await notifier_repo.handled(session, [(mid, "r0@example.org", "admin_notice"),
                                              (mid, "r9@example.org", "bounce")])
    assert await conn.fetchval("SELECT notifier_pending FROM mail.recipients "
                               "WHERE message_id = $1", mid) == ["bounce"]


async def test_a_finalisation_owing_a_dsn_holds_the_body_in_its_own_transaction(
        conn: asyncpg.Connection, purger: Purger, mx_env: dict[str, str]) -> None:
    """The executor's record statement sets the flag with the final state: a purge right
    after its commit (before any event reached the notifier) finds the body needed."""
    from services.executor.repo import RecipientUpdate

    mid = await message(conn, {"state": "running"}, {"state": "running"})
    rows = await conn.fetch("SELECT id FROM mail.recipients WHERE message_id = $1 "
                            "ORDER BY address", mid)
    repo = ExecutorRepo(mx_env["MAILEXEC_DATABASE_URL"], pool_size=2)
    await repo.start()
    try:
        ups = [RecipientUpdate(job_id=rows[0]["id"], expected_attempts=0, state="bounced",
                               status="5.3.0", diagnostic="program x exited with status 1",
                               attempts=1, next_program=0, final=True,
                               notifier_pending=["admin_notice", "bounce"]),
               RecipientUpdate(job_id=rows[1]["id"], expected_attempts=0, state="delivered",
                               status="2.0.0", diagnostic=None, attempts=1, next_program=1,
                               final=True)]
        assert await asyncio.gather(*(repo.record(u) for u in ups)) == [True, True]
    finally:
        await repo.close()
    assert await purger.release_bodies() == 0
    assert await body_held(conn, mid)
    pending = await conn.fetch("SELECT address, notifier_pending FROM mail.recipients "
                               "WHERE message_id = $1 ORDER BY address", mid)
    assert [(r["address"], r["notifier_pending"]) for r in pending] == [
        ("r0@example.org", ["admin_notice", "bounce"]), ("r1@example.org", None)]


async def test_records_go_the_retention_period_after_the_message_became_final(
        conn: asyncpg.Connection, purger: Purger) -> None:
    old = await message(conn, {"state": "delivered", "final_days_ago": 31},
                        {"state": "bounced", "final_days_ago": 35}, received_days_ago=36)
    await conn.execute(
        "INSERT INTO mail.program_runs (recipient_id, attempt, program, position, duration_ms, "
        "started_at) SELECT id, 0, 'p', 0, 1, now() FROM mail.recipients WHERE message_id = $1",
        old)
    await conn.execute("INSERT INTO mail.queue_actions (actor, action, message_id, at) "
                       "VALUES ('admin', 'retry', $1, now() - interval '36 days')", old)
    recently_final = await message(conn, {"state": "delivered", "final_days_ago": 31},
                                   {"state": "delivered", "final_days_ago": 10},
                                   received_days_ago=40)
    still_held = await message(conn, {"state": "on_hold"}, received_days_ago=60)
    young = await message(conn, {"state": "delivered", "final_days_ago": 1}, received_days_ago=1)
    many_old = [await message(conn, {"state": "delivered", "final_days_ago": 40},
                              received_days_ago=41) for _ in range(5)]
    await conn.execute("INSERT INTO mail.queue_actions (actor, action, at) VALUES "
                       "('admin', 'retry_all', now() - interval '31 days'), "
                       "('admin', 'retry_all', now() - interval '29 days')")

    assert await purger.purge_records(30) == (1 + len(many_old), 2)
    left = {r["id"] for r in await conn.fetch("SELECT id FROM mail.messages")}
    assert left == {recently_final, still_held, young}
    assert await conn.fetchval("SELECT count(*) FROM mail.program_runs") == 0  # cascaded
    assert await conn.fetchval("SELECT count(*) FROM mail.recipients WHERE message_id = $1",
                               old) == 0
    assert await conn.fetchval("SELECT count(*) FROM mail.queue_actions") == 1
    # a shorter retention takes effect at the next pass
    assert await purger.purge_records(5) == (1, 1)  # and the 29-day-old action
    assert {r["id"] for r in await conn.fetch("SELECT id FROM mail.messages")} == {
        still_held, young}


async def test_a_pass_without_policy_purges_bodies_but_never_records(
        conn: asyncpg.Connection, purger: Purger) -> None:
    old = await message(conn, {"state": "delivered", "final_days_ago": 400},
                        received_days_ago=400)
    before = REGISTRY.get_sample_value("mailexec_retention_purged_total", {"kind": "body"}) or 0
    done = await purger.run_once()
    assert done == {"body": 1, "message": 0, "queue_action": 0}
    assert await body_held(conn, old) is False  # the body goes, the records stay
    assert REGISTRY.get_sample_value("mailexec_retention_purged_total", {"kind": "body"}) == \
        before + 1
    assert REGISTRY.get_sample_value("mailexec_bodies_held") == 0
    assert (REGISTRY.get_sample_value("mailexec_retention_oldest_seconds",
                                      {"kind": "message"}) or 0) > 399 * 86400
    purger.retention_days = 30  # what policy said before it went away
    assert (await purger.run_once())["message"] == 1
    assert REGISTRY.get_sample_value("mailexec_retention_oldest_seconds",
                                     {"kind": "message"}) == 0


async def test_a_purge_and_a_delivery_never_wait_for_each_other(
        conn: asyncpg.Connection, mx_env: dict[str, str]) -> None:
    """The purge's statements hold their locks (open transaction); the executor claims a
    recipient of another message meanwhile, at once. Then the reverse: a claim holds its
    row while the purge runs; the purge neither waits nor takes that message's body."""
    from services.executor.repo import Repo

    done = await message(conn, {"state": "delivered", "final_days_ago": 40}, received_days_ago=41)
    done2 = await message(conn, {"state": "delivered", "final_days_ago": 40},
                          received_days_ago=41)
    live = await message(conn, {"state": "queued"}, {"state": "delivered"})
    live_rcpt = await conn.fetchval("SELECT id FROM mail.recipients WHERE message_id = $1 "
                                    "AND state = 'queued'", live)
    repo = Repo(mx_env["MAILEXEC_DATABASE_URL"], pool_size=2)
    await repo.start()
    purge = await asyncpg.connect(asyncpg_dsn(mx_env["MAILEXEC_DATABASE_URL"]))
    other = await asyncpg.connect(asyncpg_dsn(mx_env["MAILEXEC_DATABASE_URL"]))
    try:
        tx = purge.transaction()
        await tx.start()
        await purge.execute(retention.LOCK_TIMEOUT)
        assert len(await purge.fetch(retention.RELEASE_BODIES, [done, done2, live])) == 2
        await purge.fetchrow(retention.DELETE_RECORDS, [done], 30)
        # a second replica's pass meanwhile skips the locked rows instead of waiting
        started = time.monotonic()
        async with other.transaction():
            assert await other.fetch(retention.RELEASE_BODIES, [done2]) == []
        assert time.monotonic() - started < 0.5
        # a delivery's claim and record go through while the purge holds its locks
        claim = await asyncio.wait_for(repo.claim(live_rcpt, 0, False), 2)
        assert claim.claimed
        await tx.commit()

        # the reverse: the claim's record in flight (row locked), the purge runs
        await conn.execute("UPDATE mail.recipients SET state = 'delivered', final_at = now() "
                           "WHERE id = $1", live_rcpt)
        async with other.transaction():
            await other.execute("SELECT 1 FROM mail.recipients WHERE id = $1 FOR UPDATE",
                                live_rcpt)
            await other.execute("SELECT 1 FROM mail.messages WHERE id = $1 FOR UPDATE", live)
            started = time.monotonic()
            async with purge.transaction():
                await purge.execute(retention.LOCK_TIMEOUT)
                assert await purge.fetch(retention.RELEASE_BODIES, [live]) == []
            assert time.monotonic() - started < 0.5
        assert await body_held(conn, live)
    finally:
        await purge.close()
        await other.close()
        await repo.close()


async def test_every_purge_statement_walks_an_index(conn: asyncpg.Connection) -> None:
    """EXPLAIN of each batch statement on tables large enough for the planner to choose:
    none reads mail.messages or mail.recipients whole."""
    await conn.execute("""
        INSERT INTO mail.messages (id, sender, notify, size, body_held, received_at)
        SELECT gen_random_uuid(), 'a@example.net', '{FAILURE}', 10,
               g % 50 = 0, now() - make_interval(mins => g)
        FROM generate_series(1, 20000) AS g""")
    await conn.execute("INSERT INTO mail.bodies (slot, message_id, off, chunk) "
                       "SELECT 0, id, 0, 'x'::bytea FROM mail.messages WHERE body_held")
    await conn.execute("""
        INSERT INTO mail.recipients (id, message_id, address, account, state, final_at)
        SELECT gen_random_uuid(), id, 'r@example.org', 'r@example.org', 'delivered', received_at
        FROM mail.messages""")
    await conn.execute("ANALYZE mail.messages; ANALYZE mail.recipients; "
                       "ANALYZE mail.queue_actions")
    # a batch is to the table what 500 rows are to a million: 50 of 20000 (on a small
    # table a larger share is cheaper read whole, and the planner rightly does so)
    batch = 50
    ids = [r["id"] for r in await conn.fetch("SELECT id FROM mail.messages LIMIT $1", batch)]
    start = (retention._START[0], retention._START[1])
    plans = {
        "body candidates": (retention.BODY_CANDIDATES, (*start, batch)),
        "release bodies": (retention.RELEASE_BODIES, (ids,)),
        "record candidates": (retention.RECORD_CANDIDATES, (5, *start, batch)),
        "delete records": (retention.DELETE_RECORDS, (ids, 5)),
        "unbound actions": (retention.DELETE_UNBOUND_ACTIONS, (5, batch)),
        "gauges": (retention.GAUGES, ()),
        "discard": (retention.DISCARD, (ids[0],)),
        # the body ring's turn (bodyring.py) finds a slot's held bodies by its own index
        "ring settle": (bodyring.settle_sql(2, skip_locked=True), (2, batch)),
        "ring settle, all": (bodyring.settle_sql(2, skip_locked=False), (2, None)),
    }
    for name, (sql, args) in plans.items():
        plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {sql}", *args))
        assert "Seq Scan on messages" not in plan, f"{name}:\n{plan}"
        assert "Seq Scan on recipients" not in plan, f"{name}:\n{plan}"


async def test_the_purges_run_with_their_services_least_privilege_roles(
        conn: asyncpg.Connection) -> None:
    """Every purge statement, and the notifier's hand-over, works under the role of the
    service that runs it (the grants of 0001 and 0008; the cascade to recipients and
    program runs runs as the table owner)."""
    from sqlalchemy import text

    from services.notifier import retention as notifier_retention

    mid = await message(conn, {"state": "bounced", "final_days_ago": 40, "pending": ["bounce"]},
                        received_days_ago=41)
    async with session_scope() as session:
        await session.execute(text("SET LOCAL ROLE mailexec_notifier"))
        await notifier_repo.handled(session, [(mid, "r0@example.org", "bounce")])
        for sql in (notifier_retention._CONTENT_VICTIMS, notifier_retention._DELETE_NOTIFICATIONS,
                    notifier_retention._DELETE_SEEN, notifier_retention._OLDEST):
            await session.execute(text(sql), {"batch": 10, "keep_s": 86400})
        await session.execute(text(notifier_retention._CLEAR_CONTENT),
                              {"ids": [uuid.uuid4()], "reported": [None]})
    assert await conn.fetchval("SELECT notifier_pending FROM mail.recipients "
                               "WHERE message_id = $1", mid) is None
    for sql, args in [(retention.RELEASE_BODIES, ([mid],)), (retention.DISCARD, (mid,)),
                      (retention.DELETE_RECORDS, ([mid], 30)),
                      (retention.DELETE_UNBOUND_ACTIONS, (30, 10)), (retention.GAUGES, ())]:
        async with conn.transaction():
            await conn.execute("SET LOCAL ROLE mailexec_ingest")
            await conn.fetch(sql, *args)
    assert await conn.fetchval("SELECT count(*) FROM mail.messages") == 0
    # the body ring's turn, as ingest (a partition truncated under its lock)
    turn = await conn.fetchval("SELECT now() + interval '1 hour'")
    async with conn.transaction():
        await conn.execute("SET LOCAL ROLE mailexec_ingest")
        assert await conn.fetchval(bodyring.CLAIM, 3, turn) == 3
        assert await conn.fetchval(bodyring.EMPTIED_FOR, 3, turn) is True
        await conn.execute("LOCK TABLE mail.bodies_ring3 IN ACCESS EXCLUSIVE MODE")
        await conn.fetch(bodyring.settle_sql(3, skip_locked=False), 3, None)
        await conn.execute("TRUNCATE mail.bodies_ring3")
