"""The body ring (migration 0011, services/ingest/bodyring.py) against the real
PostgreSQL: a slot's turn releases the bodies nobody needs, keeps the others readable,
and gives the partition's space back; a store in progress, readers and a second replica
racing a turn lose nothing; ``mailexec queue delete`` removes a ring body at once; and
a running ingest turns the ring by itself.

Bodies are stored with ingest's own statements (``Database.insert_batch``) and read with
the executor's (``Repo.message_body``) and the notifier's (``load_original``).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client import REGISTRY

from services.executor.repo import Repo as ExecutorRepo
from services.ingest import bodyring, retention
from services.ingest.bodyring import BodyRing
from services.ingest.repo import Database, NewMessage
from services.notifier import repo as notifier_repo
from shared import bodies
from shared.db import session_scope
from shared.errors import Unavailable
from shared.settings import get_settings
from tests.conftest import db_conn

SLOT_S = 10.0


@pytest.fixture
async def ingest_db(mx_env: dict[str, str]) -> AsyncIterator[Database]:
    db = Database(mx_env["MAILEXEC_DATABASE_URL"], max_size=4, body_slot_s=SLOT_S)
    await db.start()
    yield db
    await db.close()


@pytest.fixture
async def executor(mx_env: dict[str, str]) -> AsyncIterator[ExecutorRepo]:
    repo = ExecutorRepo(mx_env["MAILEXEC_DATABASE_URL"], pool_size=2)
    await repo.start()
    yield repo
    await repo.close()


def new_message(body: bytes) -> NewMessage:
    mid = uuid.uuid4()
    return NewMessage(
        id=mid, sender="alice@example.net", envid=None, ret="FULL", notify=["FAILURE"],
        body=[body], idempotency_key=None, received_at=datetime.now(UTC),
        recipient_ids=[uuid.uuid4()], addresses=["bob@example.org"], accounts=["bob"],
        notifies=[None], orcpts=[None])


async def store(db: Database, slot: int, *messages: NewMessage) -> None:
    """Stored by ingest's own statement, as if now were a turn of ``slot``."""
    db.slot_now = lambda: slot  # type: ignore[method-assign]
    assert await db.insert_batch(messages) == {m.id for m in messages}


async def finish(conn: asyncpg.Connection, m: NewMessage, state: str = "delivered",
                 pending: list[str] | None = None) -> None:
    """The recipient's outcome, recorded as the executor records it."""
    await conn.execute(
        "UPDATE mail.recipients SET state = $2, final_at = now(), notifier_pending = $3 "
        "WHERE message_id = $1", m.id, state, pending)


async def where(conn: asyncpg.Connection, m: NewMessage) -> tuple[bool, int]:
    row = await conn.fetchrow("SELECT body_held, body_slot FROM mail.messages WHERE id = $1", m.id)
    return bool(row["body_held"]), int(row["body_slot"])


async def rows_in(conn: asyncpg.Connection, slot: int, m: NewMessage | None = None) -> int:
    sql = f"SELECT count(*) FROM mail.{bodies.partition(slot)}"
    if m is None:
        return int(await conn.fetchval(sql))
    return int(await conn.fetchval(sql + " WHERE message_id = $1", m.id))


async def read(executor: ExecutorRepo, m: NewMessage) -> bytes:
    async with executor.message_body(m.id, m.size) as body:
        return body


async def test_a_turn_releases_what_nobody_needs_keeps_the_rest_and_gives_the_space_back(
        conn: asyncpg.Connection, ingest_db: Database, executor: ExecutorRepo) -> None:
    delivered, deferred, dsn_owed, dead, small = (
        new_message(os.urandom(200_000)) for _ in range(5))
    await store(ingest_db, 2, delivered, deferred, dsn_owed, dead, small)
    await finish(conn, delivered)
    await conn.execute("UPDATE mail.recipients SET state = 'deferred' WHERE message_id = $1",
                       deferred.id)
    await finish(conn, dsn_owed, "bounced", ["bounce"])
    await finish(conn, dead, "bounced")
    await conn.execute("UPDATE mail.recipients SET dead_lettered_at = now() "
                       "WHERE message_id = $1", dead.id)
    await finish(conn, small)
    space = f"SELECT pg_relation_size('mail.{bodies.partition(2)}')"
    assert await conn.fetchval(space) > 5 * 200_000

    done = await BodyRing(ingest_db, SLOT_S).empty(conn, 2, turn=6)
    assert (done.emptied, done.kept, done.released) == (True, 3, 2)
    # the partition's files are empty at once: no DELETE, no vacuum
    assert await conn.fetchval(space) == 0
    assert await rows_in(conn, 2) == 0
    assert await where(conn, delivered) == (False, 2)
    assert await where(conn, small) == (False, 2)
    for m in (deferred, dsn_owed, dead):
        assert await where(conn, m) == (True, bodies.KEPT)
        assert await read(executor, m) == m.body[0], "a kept body changed"
    async with session_scope() as session:
        quoted = await notifier_repo.load_original(session, dsn_owed.id, 1000)
    assert quoted == dsn_owed.body[0][:1000]
    with pytest.raises(Unavailable, match="no stored body"):
        await read(executor, delivered)
    assert await conn.fetchval("SELECT extract(epoch FROM for_turn_at) FROM mail.body_ring "
                               "WHERE slot = 2") == 6 * SLOT_S

    # a kept body goes the old way once nobody needs it: retention deletes its rows
    await finish(conn, deferred)
    purger = retention.Purger(ingest_db, get_settings())
    try:
        assert await purger.release_bodies() == 1
    finally:
        await purger.stop()
    assert await rows_in(conn, bodies.KEPT, deferred) == 0
    assert await rows_in(conn, bodies.KEPT, dsn_owed) > 0


async def test_a_store_in_progress_in_the_slot_is_waited_for_and_kept(
        conn: asyncpg.Connection, ingest_db: Database, executor: ExecutorRepo) -> None:
    """The race the lock exists for: ingest has written a body into the slot but not
    committed when the turn comes. The turn waits for it (or gives up and tries again at
    the next tick) and never truncates a body it could not see."""
    slow = new_message(os.urandom(100_000))
    ring = BodyRing(ingest_db, SLOT_S)
    # the store commits after the turn gave up (it holds the lock past the turn's 200 ms
    # lock_timeout), or 50 ms after the turn began to wait for it
    for outlasts_the_turn, turn in ((True, 10), (False, 14)):
        writer = await db_conn()
        try:
            tx = writer.transaction()
            await tx.start()
            await writer.fetch(
                "INSERT INTO mail.messages (id, sender, notify, size, received_at, body_slot) "
                "VALUES ($1, 'a@example.net', '{FAILURE}', $2, now(), 3)",
                slow.id, slow.size)
            await writer.execute("INSERT INTO mail.recipients (id, message_id, address, account) "
                                 "VALUES ($1, $2, 'bob@example.org', 'bob')",
                                 uuid.uuid4(), slow.id)
            await bodies.copy(writer, 3, [(slow.id, slow.body)])
            turn_task = asyncio.create_task(ring.empty(conn, 3, turn))
            if outlasts_the_turn:
                done = await turn_task
                await tx.commit()
            else:
                await asyncio.sleep(0.05)
                await tx.commit()
                done = await turn_task
        finally:
            await writer.close()
        if outlasts_the_turn:  # not this tick
            assert not done.emptied
            assert await where(conn, slow) == (True, 3)
            assert await read(executor, slow) == slow.body[0]
            # the next tick empties it and keeps the body
            done = await ring.empty(conn, 3, turn)
            assert (done.emptied, done.kept) == (True, 1)
        else:  # waited for the store, then kept it
            assert (done.emptied, done.kept) == (True, 1)
        assert await where(conn, slow) == (True, bodies.KEPT)
        assert await read(executor, slow) == slow.body[0]
        assert await rows_in(conn, 3) == 0
        await conn.execute("DELETE FROM mail.bodies_kept WHERE message_id = $1", slow.id)
        await conn.execute("DELETE FROM mail.messages WHERE id = $1", slow.id)


async def test_readers_racing_turns_always_get_the_whole_body(
        conn: asyncpg.Connection, ingest_db: Database, executor: ExecutorRepo,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The executor reads bodies while turns move them (a few per statement): each read
    is the whole body, never half of it, never its rows twice, never nothing."""
    monkeypatch.setattr(bodyring, "BATCH", 3)
    ring = BodyRing(ingest_db, SLOT_S)
    waiting: list[NewMessage] = []
    reads = 0
    stop = asyncio.Event()

    async def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            for m in list(waiting):
                assert await read(executor, m) == m.body[0]
                reads += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(reader())
    try:
        for turn in range(20, 32):
            slot = bodies.slot_of(turn)
            fresh = [new_message(os.urandom(30_000 + turn)) for _ in range(8)]
            await store(ingest_db, slot, *fresh)
            waiting.extend(fresh)
            done = await ring.empty(conn, bodies.slot_of(turn + 1), turn + 1)
            assert done.emptied
            assert not task.done()
    finally:
        stop.set()
        await task
    assert reads > 100
    assert {await where(conn, m) for m in waiting[:8]} == {(True, bodies.KEPT)}


async def test_queue_delete_removes_a_ring_body_at_once(
        conn: asyncpg.Connection, ingest_db: Database) -> None:
    m = new_message(os.urandom(50_000))
    await store(ingest_db, 4, m)
    await finish(conn, m)
    async with conn.transaction():
        assert await retention.discard(conn, m.id) is False
    assert await rows_in(conn, 4, m) == 0
    assert await where(conn, m) == (False, 4)


async def test_one_replica_empties_a_slot_once_per_turn(
        conn: asyncpg.Connection, ingest_db: Database) -> None:
    m = new_message(b"Subject: x\r\n\r\nbody\r\n")
    now = time.time()
    turn = bodies.turn_at(now, SLOT_S) + 1
    slot = bodies.slot_of(turn)
    await store(ingest_db, slot, m)
    await finish(conn, m)
    first, second = BodyRing(ingest_db, SLOT_S), BodyRing(ingest_db, SLOT_S)
    done = await first.run_once(now)
    assert done is not None and done.emptied and (done.slot, done.turn) == (slot, turn)
    assert await second.run_once(now) is None
    # a replica at the next slot holds its row: the other skips it at once (no wait, no
    # "busy"), and empties it at a later tick once nobody is at it
    nxt = bodies.slot_of(turn + 1)
    holder = await db_conn()
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM mail.body_ring WHERE slot = $1 FOR UPDATE", nxt)
            busy = REGISTRY.get_sample_value("mailexec_body_ring_turns_total", {"result": "busy"})
            t0 = time.monotonic()
            skipped = await second.run_once(now + SLOT_S)
            assert skipped is not None and not skipped.emptied
            assert time.monotonic() - t0 < 0.2
            assert REGISTRY.get_sample_value(
                "mailexec_body_ring_turns_total", {"result": "busy"}) == busy
    finally:
        await holder.close()
    later = await second.run_once(now + SLOT_S)
    assert later is not None and later.emptied and later.slot == nxt


async def test_a_running_ingest_turns_the_ring_by_itself(
        clean_db: None, services: Any, mta_headers: dict[str, str]) -> None:
    """ingest with 1-second turns: a message nobody has delivered yet moves to the kept
    partition within a few turns and stays readable; one delivered meanwhile is released,
    and the ring partitions hold nothing but the last turns' bodies."""
    ingest = services("ingest", extra_env={"MAILEXEC_BODY_SLOT_S": "1"})
    sent = {}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ingest.port}",
                                 headers=mta_headers) as client:
        for name in ("waiting", "delivered"):
            body = f"Subject: {name}\r\n\r\n".encode() + os.urandom(40_000).hex().encode()
            r = await client.post("/v1/messages", params={"from": "a@example.net",
                                                          "to": f"{name}@example.org"},
                                  content=body, headers={"Content-Type": "message/rfc822"})
            assert r.status_code == 202, r.text
            sent[name] = (uuid.UUID(r.json()["id"]), body)
    c = await db_conn()
    try:
        await c.execute("UPDATE mail.recipients SET state = 'delivered', final_at = now() "
                        "WHERE message_id = $1", sent["delivered"][0])
        ring_rows = ("SELECT count(*) FROM mail.bodies WHERE slot <> 0 "
                     "AND message_id = ANY($1::uuid[])")
        ids = [mid for mid, _ in sent.values()]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            states = {name: tuple(await c.fetchrow(
                "SELECT body_held, body_slot FROM mail.messages WHERE id = $1", mid))
                for name, (mid, _) in sent.items()}
            left = await c.fetchval(ring_rows, ids)
            if states["waiting"] == (True, 0) and not states["delivered"][0] and not left:
                break
            await asyncio.sleep(0.2)
        assert states["waiting"] == (True, 0), states
        assert states["delivered"][0] is False, states
        assert left == 0, "a ring partition still has rows of a body its turn settled"
        assert await bodies.read(c, sent["waiting"][0]) == sent["waiting"][1]
        assert await bodies.read(c, sent["delivered"][0]) is None
        assert await c.fetchval("SELECT count(*) FROM mail.body_ring WHERE emptied_at IS NOT NULL") >= 2
    finally:
        await c.close()


async def test_the_ring_still_turns_after_the_turns_length_changed(
        conn: asyncpg.Connection, ingest_db: Database) -> None:
    """MAILEXEC_BODY_SLOT_S 10 -> 60 (a restart with another setting): the turns emptied
    with 10-second turns don't hold back the first 60-second turn."""
    now = time.time()
    short = BodyRing(ingest_db, 10.0)
    for k in range(bodies.RING):
        done = await short.run_once(now + 10.0 * k)
        assert done is not None and done.emptied
    long = BodyRing(ingest_db, 60.0)
    done = await long.run_once(now + 40.0)
    assert done is not None and done.emptied
