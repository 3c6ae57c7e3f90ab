"""The executor's database access: claim jobs, record outcomes, read message bodies.

Hot path: two statements per delivery, each batched across concurrent jobs
(:class:`services.executor.batching.Batcher`): one ``UPDATE … RETURNING`` claims a
batch, one statement (a data-modifying CTE: recipients updated *and* program runs
inserted, atomically) records a batch. Raw asyncpg over one small pool: the
SQLAlchemy layer costs more CPU per row than the whole claim.

An outage leaves here as :class:`shared.errors.DatabaseUnavailable` (``shared.db``
decides what is one); callers defer the job (never lose it, never bounce because of it).
Any other database error is a bug and propagates as it is: the worker logs it and
requeues the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from services.executor.batching import Batcher
from services.executor.metrics import BODY_BYTES, BODY_BYTES_PEAK
from shared import bodies, db
from shared.bodybudget import BodyBudget
from shared.errors import DatabaseUnavailable, Unavailable
from shared.settings import get_settings

CLAIMABLE = ("queued", "deferred", "suspended")
# ``deleted``: removed from the queue by an operator (ingest's queue control), no DSN

# ``published``: a job being claimed was obviously published; ingest's own marking skips
# rows a claim holds rather than wait for them (services/ingest/repo.MARK_PUBLISHED)
_CLAIM_SQL = """
UPDATE mail.recipients AS r
   SET state = 'running', updated_at = now(), published = true
  FROM unnest($1::uuid[], $2::int[], $3::bool[], $4::int[]) AS j(id, attempt, redelivered, gen)
 WHERE r.id = j.id
   AND r.attempts = j.attempt
   AND r.generation = j.gen
   AND (r.state IN ('queued', 'deferred', 'suspended') OR (r.state = 'running' AND j.redelivered))
RETURNING r.id, r.delay_notified_at
"""

_RECORD_SQL = """
WITH u AS (
    UPDATE mail.recipients AS r
       SET state = j.state, status = j.status, diagnostic = j.diagnostic,
           attempts = j.attempts, next_program = j.next_program, updated_at = now(),
           final_at = CASE WHEN j.final THEN now() ELSE r.final_at END,
           delay_notified_at = CASE WHEN j.delay_notified
                                    THEN coalesce(r.delay_notified_at, now())
                                    ELSE r.delay_notified_at END,
           notifier_pending = CASE WHEN j.pending = '' THEN r.notifier_pending
                                   ELSE ARRAY(SELECT DISTINCT k FROM unnest(
                                            coalesce(r.notifier_pending, '{}')
                                            || string_to_array(j.pending, ',')) AS k
                                        ORDER BY k) END
      FROM unnest($1::uuid[], $2::int[], $3::text[], $4::text[], $5::text[], $6::int[], $7::int[],
                  $8::bool[], $9::bool[], $20::text[])
           AS j(id, expected, state, status, diagnostic, attempts, next_program, final, delay_notified,
                pending)
     WHERE r.id = j.id AND r.state = 'running' AND r.attempts = j.expected
    RETURNING r.id
), ins AS (
    INSERT INTO mail.program_runs (recipient_id, attempt, program, position, exit_status, signal,
                                   timed_out, output_excerpt, duration_ms, started_at)
    SELECT x.rid, x.attempt, x.program, x.position, x.exit_status, x.signal, x.timed_out,
           x.output_excerpt, x.duration_ms, x.started_at
      FROM unnest($10::uuid[], $11::int[], $12::text[], $13::int[], $14::int[], $15::int[],
                  $16::bool[], $17::text[], $18::int[], $19::timestamptz[])
           AS x(rid, attempt, program, position, exit_status, signal, timed_out, output_excerpt,
                duration_ms, started_at)
     WHERE x.rid IN (SELECT id FROM u)
)
SELECT id FROM u
"""


@dataclass(frozen=True)
class ClaimRequest:
    job_id: uuid.UUID
    attempt: int
    redelivered: bool
    generation: int = 0


@dataclass(frozen=True)
class Claim:
    claimed: bool
    delay_notified_at: datetime | None = None


@dataclass(frozen=True)
class RunRow:
    attempt: int
    program: str
    position: int
    exit_status: int | None
    signal: int | None
    timed_out: bool
    output_excerpt: str
    duration_ms: int
    started_at: datetime


@dataclass(frozen=True)
class RecipientUpdate:
    """The outcome of one claimed job; applied only if the row is still ours."""

    job_id: uuid.UUID
    expected_attempts: int
    state: str
    status: str | None
    diagnostic: str | None
    attempts: int
    next_program: int
    final: bool
    delay_notified: bool = False
    runs: Sequence[RunRow] = field(default_factory=tuple)
    # kinds of notification announced with this outcome that will read the message's
    # body (shared.notify.pending_kinds): the body stays until the notifier handled them
    notifier_pending: Sequence[str] = ()


@dataclass(frozen=True)
class RecipientSnapshot:
    """What is recorded for a recipient (used when a job arrives whose outcome exists)."""

    job_id: uuid.UUID
    message_id: uuid.UUID
    address: str
    orcpt: str | None
    notify: list[str] | None  # RFC 3461 NOTIFY of this recipient; None = the message's
    state: str
    status: str | None
    diagnostic: str | None
    attempts: int
    next_program: int
    delay_notified_at: datetime | None
    updated_at: datetime
    last_run: dict[str, Any] | None


@dataclass(frozen=True)
class MessageEnvelope:
    message_id: uuid.UUID
    sender: str
    envid: str | None
    ret: str | None
    notify: list[str]
    size: int
    received_at: datetime


class Repo:
    def __init__(self, database_url: str, *, pool_size: int | None = None,
                 body_memory_bytes: int = 32 * 1024 * 1024) -> None:
        self._database_url = database_url
        self.body_budget = BodyBudget(body_memory_bytes, BODY_BYTES, BODY_BYTES_PEAK)
        self._pool_size = pool_size or get_settings().executor_database_pool_size
        self._pool: asyncpg.Pool | None = None
        self.claims: Batcher[ClaimRequest, Claim] = Batcher("claim", self._claim_batch)
        self.records: Batcher[RecipientUpdate, bool] = Batcher("record", self._record_batch)
        self._bodies: dict[uuid.UUID, tuple[asyncio.Future[bytes], int]] = {}
        self._budget: dict[uuid.UUID, int] = {}  # bytes of the budget each held body took

    async def start(self, timeout: float = 30.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                with db.translate_db_errors():
                    self._pool = await db.create_pool(
                        self._database_url, min_size=1, max_size=self._pool_size
                    )
                break
            except DatabaseUnavailable:  # anything else (a wrong password) fails at once
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.5)
        self.claims.start()
        self.records.start()

    async def close(self) -> None:
        await self.claims.stop()
        await self.records.stop()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def ping(self) -> bool:
        try:
            async with self._conn() as conn:
                await conn.fetchval("SELECT 1")
            return True
        except Exception:
            return False

    def _conn(self) -> contextlib.AbstractAsyncContextManager[asyncpg.Connection]:
        return db.acquire(self._pool)

    # --- hot path --------------------------------------------------------------------

    async def claim(self, job_id: uuid.UUID, attempt: int, redelivered: bool,
                    generation: int = 0) -> Claim:
        return await self.claims.submit(ClaimRequest(job_id, attempt, redelivered, generation))

    async def record(self, update: RecipientUpdate) -> bool:
        """True when the outcome was recorded (False: someone else owns the row now)."""
        return await self.records.submit(update)

    async def _claim_batch(self, reqs: Sequence[ClaimRequest]) -> list[Claim]:
        # The same job twice in one batch (a duplicate publish): only the first may run.
        first: dict[uuid.UUID, int] = {}
        for i, r in enumerate(reqs):
            first.setdefault(r.job_id, i)
        unique = [reqs[i] for i in first.values()]
        async with self._conn() as conn:
            rows = await conn.fetch(
                _CLAIM_SQL,
                [r.job_id for r in unique],
                [r.attempt for r in unique],
                [r.redelivered for r in unique],
                [r.generation for r in unique],
            )
        got = {row["id"]: row["delay_notified_at"] for row in rows}
        out = []
        for i, r in enumerate(reqs):
            if first[r.job_id] == i and r.job_id in got:
                out.append(Claim(True, got[r.job_id]))
            else:
                out.append(Claim(False))
        return out

    async def _record_batch(self, ups: Sequence[RecipientUpdate]) -> list[bool]:
        cols: list[list[Any]] = [[] for _ in range(20)]
        v: Any
        for u in ups:
            for i, v in enumerate(
                (u.job_id, u.expected_attempts, u.state, u.status, u.diagnostic, u.attempts,
                 u.next_program, u.final, u.delay_notified)
            ):
                cols[i].append(v)
            cols[19].append(",".join(u.notifier_pending))
            for run in u.runs:
                for i, v in enumerate(
                    (u.job_id, run.attempt, run.program, run.position, run.exit_status, run.signal,
                     run.timed_out, run.output_excerpt, run.duration_ms, run.started_at),
                    start=9,
                ):
                    cols[i].append(v)
        async with self._conn() as conn:
            rows = await conn.fetch(_RECORD_SQL, *cols)
        done = {row["id"] for row in rows}
        return [u.job_id in done for u in ups]

    # --- message bodies, shared by concurrent jobs of one message ------------------------
    # (mail.bodies, migrations 0009/0011: shared.bodies.read joins a body's rows here rather
    # than by string_agg in PostgreSQL, which would copy the body once more there)

    @contextlib.asynccontextmanager
    async def message_body(self, message_id: uuid.UUID, size: int) -> AsyncIterator[bytes]:
        """The raw message, fetched once however many jobs of the message run at once,
        within the executor's body memory budget (``size``: the message's size)."""
        entry = self._bodies.get(message_id)
        if entry is None:
            fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            self._bodies[message_id] = (fut, 1)
            try:
                self._budget[message_id] = await self.body_budget.acquire(size)
                async with self._conn() as conn:
                    body = await bodies.read(conn, message_id)
                if body is None:
                    raise Unavailable(f"message {message_id} has no stored body", code="no_body")
                fut.set_result(body)
                del body  # this frame lives on across the yield: don't hold it past the job
            except BaseException as exc:
                fut.set_exception(exc)
                fut.exception()  # the budget, if granted, is released below with the last ref
        else:
            fut = entry[0]
            self._bodies[message_id] = (fut, entry[1] + 1)
        try:
            yield await asyncio.shield(fut)
        finally:
            f, refs = self._bodies[message_id]
            if refs <= 1:
                del self._bodies[message_id]
                held = self._budget.pop(message_id, None)
                if held is not None:
                    self.body_budget.release(held)
            else:
                self._bodies[message_id] = (f, refs - 1)

    # --- rare paths ----------------------------------------------------------------------

    async def generation(self, job_id: uuid.UUID) -> int | None:
        """The row's generation (None: no such row): tells a stale copy of a job, one an
        operator superseded (queue control), from a duplicate, once the claim failed."""
        async with self._conn() as conn:
            value = await conn.fetchval(
                "SELECT generation FROM mail.recipients WHERE id = $1", job_id)
        return None if value is None else int(value)

    async def snapshot(self, job_id: uuid.UUID) -> RecipientSnapshot | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(
                "SELECT id, message_id, address, orcpt, notify, state, status, diagnostic, attempts, "
                "next_program, delay_notified_at, updated_at FROM mail.recipients WHERE id = $1",
                job_id,
            )
            if row is None:
                return None
            run = await conn.fetchrow(
                "SELECT program, position, exit_status, signal, timed_out, output_excerpt "
                "FROM mail.program_runs WHERE recipient_id = $1 ORDER BY id DESC LIMIT 1",
                job_id,
            )
        return RecipientSnapshot(
            job_id=row["id"], message_id=row["message_id"], address=row["address"],
            orcpt=row["orcpt"], notify=list(row["notify"]) if row["notify"] else None,
            state=row["state"], status=row["status"],
            diagnostic=row["diagnostic"], attempts=row["attempts"],
            next_program=row["next_program"], delay_notified_at=row["delay_notified_at"],
            updated_at=row["updated_at"], last_run=dict(run) if run else None,
        )

    async def envelope(self, message_id: uuid.UUID) -> MessageEnvelope | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(
                "SELECT id, sender, envid, ret, notify, size, received_at FROM mail.messages "
                "WHERE id = $1",
                message_id,
            )
        if row is None:
            return None
        return MessageEnvelope(
            message_id=row["id"], sender=row["sender"], envid=row["envid"], ret=row["ret"],
            notify=list(row["notify"] or []), size=row["size"], received_at=row["received_at"],
        )

    async def force_final(
        self, job_id: uuid.UUID, state: str, status: str, diagnostic: str,
        notifier_pending: Sequence[str] = (),
    ) -> bool:
        """Record a final outcome for a job that can't run (poison, corrupt), if not final yet;
        the row is marked dead-lettered (``mailexec queue dead`` lists it).
        ``notifier_pending``: as :attr:`RecipientUpdate.notifier_pending`."""
        async with self._conn() as conn:
            row = await conn.fetchrow(
                "UPDATE mail.recipients SET state = $2, status = $3, diagnostic = $4, "
                "final_at = now(), updated_at = now(), dead_lettered_at = now(), "
                "notifier_pending = CASE WHEN cardinality($5::text[]) = 0 THEN notifier_pending "
                "ELSE ARRAY(SELECT DISTINCT k FROM unnest(coalesce(notifier_pending, '{}') "
                "|| $5::text[]) AS k ORDER BY k) END "
                "WHERE id = $1 AND state NOT IN ('delivered', 'bounced', 'deleted') "
                "AND state <> 'on_hold' RETURNING id",
                job_id, state, status, diagnostic, list(notifier_pending),
            )
        return row is not None
