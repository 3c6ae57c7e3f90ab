"""Ingest's SQL on ``mail.messages`` / ``mail.recipients`` / ``mail.program_runs``.

Why raw asyncpg (its own small pool) rather than the shared SQLAlchemy engine: the hot
path stores a whole batch of messages and their recipients in ONE statement (two
data-modifying CTEs over ``unnest`` of arrays, binary protocol, prepared once), which is
what lets one ingest process accept thousands of messages per second. The pool is
created lazily (``min_size=0``), so ingest starts while PostgreSQL is down.

Errors are translated at this boundary by :mod:`shared.db`: an outage becomes
:class:`shared.errors.DatabaseUnavailable` (HTTP 503, LMTP 451); anything else, a
constraint violation included, propagates unchanged (a bug: HTTP 500, LMTP 451).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from shared import bodies, db
from shared.settings import get_settings


@dataclass(frozen=True, slots=True)
class NewMessage:
    id: uuid.UUID
    sender: str
    envid: str | None
    ret: str | None
    notify: Sequence[str]
    # the body as it arrived, in pieces (the HTTP request's chunks, an LMTP DATA): never
    # joined into one more copy; :func:`shared.bodies.rows` cuts them into mail.bodies rows
    body: Sequence[bytes]
    idempotency_key: str | None
    received_at: datetime
    recipient_ids: Sequence[uuid.UUID]
    addresses: Sequence[str]
    accounts: Sequence[str]
    # per recipient: RFC 3461 NOTIFY ("SUCCESS,DELAY"; None = the message's) and ORCPT
    notifies: Sequence[str | None]
    orcpts: Sequence[str | None]
    # envelope.content_hash of the submission when it has an Idempotency-Key, else None
    idempotency_hash: str | None = None

    @property
    def size(self) -> int:
        return sum(len(p) for p in self.body)

    def body_bytes(self) -> bytes:
        """The body in one piece: a copy unless it arrived in one (small bodies only)."""
        return self.body[0] if len(self.body) == 1 else b"".join(self.body)


INSERT_BATCH = """
WITH m AS (
    INSERT INTO mail.messages
        (id, sender, envid, ret, notify, size, idempotency_key, received_at,
         idempotency_hash, body_slot)
    SELECT x.id, x.sender, x.envid, x.ret, string_to_array(x.notify, ','), x.size,
           x.ikey, x.received_at, x.ihash, $16::smallint
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[],
                $7::text[], $8::timestamptz[], $9::text[])
         AS x(id, sender, envid, ret, notify, size, ikey, received_at, ihash)
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id
), r AS (
    INSERT INTO mail.recipients (id, message_id, address, account, notify, orcpt)
    SELECT y.id, y.message_id, y.address, y.account, string_to_array(y.notify, ','), y.orcpt
    FROM unnest($10::uuid[], $11::uuid[], $12::text[], $13::text[], $14::text[], $15::text[])
         AS y(id, message_id, address, account, notify, orcpt)
    JOIN m ON m.id = y.message_id
)
SELECT id FROM m
"""

# Never waits for a row another transaction holds (SKIP LOCKED), so it can't deadlock
# with the executor claiming those very jobs in another order (the soak saw it): a
# claimed job is marked published by its claim, and a row skipped for another reason
# is published again by the relay later, which the executor drops as a duplicate.
MARK_PUBLISHED = """
UPDATE mail.recipients SET published = true
 WHERE id IN (SELECT id FROM mail.recipients WHERE id = ANY($1::uuid[]) AND NOT published
              FOR UPDATE SKIP LOCKED)
"""

DELETE_MESSAGES = f"""
WITH b AS (DELETE FROM mail.bodies b USING mail.messages m
           WHERE m.id = ANY($1::uuid[]) AND {bodies.of_message("m")})
DELETE FROM mail.messages WHERE id = ANY($1::uuid[])
"""

# A message's body in one piece (small ones only: the relay's inline jobs)
JOINED_BODY = bodies.joined("m")

FIND_BY_KEY = """
SELECT m.id, m.idempotency_hash, coalesce(bool_and(r.published), true) AS all_published,
       coalesce(array_agg(r.address ORDER BY r.address) FILTER (WHERE r.id IS NOT NULL),
                '{}') AS addresses
FROM mail.messages m LEFT JOIN mail.recipients r ON r.message_id = m.id
WHERE m.idempotency_key = $1
GROUP BY m.id, m.idempotency_hash
"""

RELAY_SELECT = """
SELECT r.id, r.message_id, r.address, r.orcpt, r.state, r.attempts, r.next_program,
       r.generation, m.sender, m.envid, m.ret, coalesce(r.notify, m.notify) AS notify, m.size, m.received_at,
       CASE WHEN m.size <= $2 AND m.body_held THEN """ + JOINED_BODY + """ END AS body
FROM mail.recipients r JOIN mail.messages m ON m.id = r.message_id
WHERE NOT r.published AND r.created_at < now() - make_interval(secs => $1)
ORDER BY r.created_at
LIMIT $3
FOR UPDATE OF r SKIP LOCKED
"""

COUNT_UNPUBLISHED = "SELECT count(*) FROM mail.recipients WHERE NOT published"

GET_MESSAGE = """
SELECT id, sender, envid, ret, notify, size, received_at, idempotency_key, body_held
FROM mail.messages WHERE id = $1
"""

GET_RECIPIENTS = """
SELECT r.id, r.address, r.account, r.orcpt, coalesce(r.notify, m.notify) AS notify, r.state,
       r.attempts, r.next_program, r.status, r.diagnostic, r.created_at, r.updated_at, r.final_at
FROM mail.recipients r JOIN mail.messages m ON m.id = r.message_id
WHERE r.message_id = $1 AND ($2::text IS NULL OR r.account = $2)
ORDER BY r.address, r.id
"""

GET_RUNS = """
SELECT recipient_id, program, position, attempt, exit_status, signal, timed_out,
       output_excerpt, duration_ms, started_at
FROM mail.program_runs WHERE recipient_id = ANY($1::uuid[])
ORDER BY attempt, position, id
"""

# Newest first through messages_received (migration 0005), each message checked for a
# recipient of the account/state asked for; sender= through messages_sender. The filters
# of one recipient apply together (alice's recipient in state bounced, not alice's
# delivered one beside bob's bounced one).
LIST_MESSAGES = """
SELECT m.id, m.sender, m.size, m.received_at
FROM mail.messages m
WHERE ($6::text IS NULL OR m.sender = $6)
  AND ($3::timestamptz IS NULL OR (m.received_at, m.id) < ($3, $4::uuid))
  AND (($1::text IS NULL AND $2::text IS NULL) OR EXISTS (
        SELECT 1 FROM mail.recipients r
        WHERE r.message_id = m.id
          AND ($1::text IS NULL OR r.account = $1)
          AND ($2::text IS NULL OR r.state = $2)))
ORDER BY m.received_at DESC, m.id DESC
LIMIT $5
"""

LIST_RECIPIENTS = """
SELECT message_id, address, account, state, attempts, status, created_at, updated_at, final_at
FROM mail.recipients
WHERE message_id = ANY($1::uuid[]) AND ($2::text IS NULL OR account = $2)
ORDER BY message_id, address, id
"""

# --- the dashboard (GET /v1/status); every query reads one index of migration 0005 ---

# literally recipients_waiting's predicate (0005), so the planner uses it; ``deleted``
# (0006, final too) is filtered on top
_NOT_FINAL = "state NOT IN ('delivered', 'bounced')"

WAITING = f"""
SELECT state, count(*) AS n, extract(epoch FROM now() - min(created_at)) AS oldest_s
FROM mail.recipients WHERE {_NOT_FINAL} AND state <> 'deleted' GROUP BY state
"""

RECEIVED_SINCE = "SELECT count(*) FROM mail.messages WHERE received_at > now() - make_interval(secs => $1)"

FINAL_SINCE = """
SELECT count(*) FILTER (WHERE state = 'delivered') AS delivered,
       count(*) FILTER (WHERE state = 'bounced') AS bounced
FROM mail.recipients WHERE final_at IS NOT NULL AND final_at > now() - make_interval(secs => $1)
"""

LATEST_FAILURES = """
(SELECT id, message_id, address, account, state, status, diagnostic, attempts,
        final_at AS at
 FROM mail.recipients WHERE state = 'bounced' AND final_at IS NOT NULL
 ORDER BY final_at DESC LIMIT $1)
UNION ALL
(SELECT id, message_id, address, account, state, status, diagnostic, attempts,
        updated_at AS at
 FROM mail.recipients WHERE state = 'deferred' ORDER BY updated_at DESC LIMIT $1)
ORDER BY at DESC NULLS LAST, id
LIMIT $1
"""



@dataclass(frozen=True, slots=True)
class Waiting:
    count: int
    oldest_s: float | None  # None: none waits in this state


def waiting_by_state(rows: Sequence[asyncpg.Record]) -> dict[str, Waiting]:
    """The rows of :data:`WAITING`, by state."""
    return {r["state"]: Waiting(int(r["n"]), None if r["oldest_s"] is None else float(r["oldest_s"]))
            for r in rows}


@dataclass(frozen=True, slots=True)
class Dashboard:
    waiting: dict[str, int]  # recipients not final, by state
    oldest_waiting_s: float | None
    received: int  # messages, in the window
    delivered: int  # recipients final in the window
    bounced: int
    failures: list[asyncpg.Record]  # LATEST_FAILURES
    runs: list[asyncpg.Record]  # GET_RUNS of those recipients


class Database:
    """A lazily connecting asyncpg pool and the statements ingest runs on it."""

    def __init__(self, database_url: str, *, max_size: int | None = None,
                 body_slot_s: float | None = None) -> None:
        self.database_url = database_url
        self.max_size = max_size or get_settings().ingest_database_pool_size
        self.body_slot_s = body_slot_s or get_settings().body_slot_s
        self.pool: asyncpg.Pool | None = None

    async def start(self) -> None:
        self.pool = await db.create_pool(self.database_url, max_size=self.max_size)

    async def close(self) -> None:
        if self.pool is not None:
            with contextlib.suppress(Exception):
                await self.pool.close()
            self.pool = None

    def connection(self) -> contextlib.AbstractAsyncContextManager[asyncpg.Connection]:
        return db.acquire(self.pool)

    async def ping(self) -> bool:
        try:
            async with self.connection() as conn:
                await conn.fetchval("SELECT 1", timeout=2)
            return True
        except Exception:
            return False

    async def insert_batch(self, messages: Sequence[NewMessage]) -> set[uuid.UUID]:
        """Store messages and recipients atomically; the ids actually inserted.

        A message whose Idempotency-Key already exists is skipped (with its recipients).
        """
        cols: list[list[Any]] = [[] for _ in range(15)]
        # the ring slot of now: the batch's bodies and their messages' body_slot
        slot = self.slot_now()
        for m in messages:
            for i, v in enumerate(
                (m.id, m.sender, m.envid, m.ret, ",".join(m.notify), m.size,
                 m.idempotency_key, m.received_at, m.idempotency_hash)
            ):
                cols[i].append(v)
            cols[9].extend(m.recipient_ids)
            cols[10].extend([m.id] * len(m.recipient_ids))
            cols[11].extend(m.addresses)
            cols[12].extend(m.accounts)
            cols[13].extend(m.notifies)
            cols[14].extend(m.orcpts)
        async with self.connection() as conn, conn.transaction():
            inserted = {r[0] for r in await conn.fetch(INSERT_BATCH, *cols, slot)}
            # the bodies of the messages stored, not of those an Idempotency-Key skipped
            await bodies.copy(conn, slot,
                              ((m.id, m.body) for m in messages if m.id in inserted))
        return inserted

    def slot_now(self) -> int:
        """The ring slot new bodies go to now (shared/bodies.py)."""
        return bodies.slot_at(time.time(), self.body_slot_s)

    async def mark_published(self, recipient_ids: Sequence[uuid.UUID]) -> None:
        if recipient_ids:
            async with self.connection() as conn:
                await conn.execute(MARK_PUBLISHED, list(recipient_ids))

    async def delete_messages(self, message_ids: Sequence[uuid.UUID]) -> None:
        if message_ids:
            async with self.connection() as conn:
                await conn.execute(DELETE_MESSAGES, list(message_ids))

    async def find_by_key(self, key: str) -> asyncpg.Record | None:
        async with self.connection() as conn:
            return await conn.fetchrow(FIND_BY_KEY, key)

    async def count_unpublished(self) -> int:
        async with self.connection() as conn:
            return int(await conn.fetchval(COUNT_UNPUBLISHED))

    async def get_message(
        self, message_id: uuid.UUID, account: str | None
    ) -> tuple[asyncpg.Record | None, list[asyncpg.Record], list[asyncpg.Record]]:
        async with self.connection() as conn:
            msg = await conn.fetchrow(GET_MESSAGE, message_id)
            if msg is None:
                return None, [], []
            rcpts = await conn.fetch(GET_RECIPIENTS, message_id, account)
            runs = await conn.fetch(GET_RUNS, [r["id"] for r in rcpts]) if rcpts else []
        return msg, rcpts, runs

    async def list_messages(
        self,
        *,
        account: str | None,
        state: str | None,
        before: tuple[datetime, uuid.UUID] | None,
        limit: int,
        sender: str | None = None,
        recipients_of: str | None = None,
    ) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
        """A page of messages (newest first) and their recipients; with ``recipients_of``
        only that account's recipients (a user's listing)."""
        async with self.connection() as conn:
            rows: list[asyncpg.Record] = await conn.fetch(
                LIST_MESSAGES,
                account,
                state,
                before[0] if before else None,
                before[1] if before else None,
                limit,
                sender,
            )
            rcpts: list[asyncpg.Record] = (
                await conn.fetch(LIST_RECIPIENTS, [r["id"] for r in rows], recipients_of)
                if rows else []
            )
        return rows, rcpts

    async def waiting(self) -> dict[str, Waiting]:
        """Recipients not yet final, by state: how many, and the oldest one's age
        (``GET /v1/status`` and ``mailexec_oldest_job_age_seconds``). One scan of
        ``recipients_waiting`` (migration 0005), small on a healthy system."""
        async with self.connection() as conn:
            return waiting_by_state(await conn.fetch(WAITING))

    async def dashboard(self, *, window_s: float, failures: int) -> Dashboard:
        """The numbers of ``GET /v1/status`` in one connection (one snapshot each)."""
        async with self.connection() as conn:
            waiting = await conn.fetch(WAITING)
            received = int(await conn.fetchval(RECEIVED_SINCE, window_s))
            final = await conn.fetchrow(FINAL_SINCE, window_s)
            latest = await conn.fetch(LATEST_FAILURES, failures)
            runs = (await conn.fetch(GET_RUNS, [r["id"] for r in latest])) if latest else []
        by_state = waiting_by_state(waiting)
        oldest = [w.oldest_s for w in by_state.values() if w.oldest_s is not None]
        return Dashboard(
            waiting={state: w.count for state, w in by_state.items()},
            oldest_waiting_s=max(oldest) if oldest else None,
            received=received,
            delivered=int(final["delivered"]) if final else 0,
            bounced=int(final["bounced"]) if final else 0,
            failures=list(latest),
            runs=list(runs),
        )
