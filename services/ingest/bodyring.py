"""The body ring's turns (migration 0011, ``shared/bodies.py``): just before a ring
partition of ``mail.bodies`` takes new bodies again, the bodies still needed in it move
to the kept partition, the others are released, and the partition is emptied by
``TRUNCATE`` — the space of delivered mail comes back at once, whatever its rate,
without a ``DELETE`` or a vacuum pass (docs/admin-guide.md "How bodies are stored").

A background task of every ingest process, every quarter of ``MAILEXEC_BODY_SLOT_S``.
During turn *k* (new bodies go to slot ``slot_of(k)``) it empties ``slot_of(k + 1)``:

1. **Settle** the slot's held bodies in small transactions that lock only the messages
   they change (``FOR UPDATE SKIP LOCKED``): each is either released (retention's own
   rule, :data:`retention.RELEASABLE`: nobody needs it, so ``body_held`` goes false) or
   copied to ``bodies_kept`` with its message's ``body_slot`` set to 0 in the same
   statement. A reader (``shared.bodies.READ_CHUNKS``) takes the slot and the rows in one
   statement, so it reads the body whole from one place or the other.
2. **Empty** it in one short transaction: claim the turn in ``mail.body_ring`` (one
   replica per turn; a replica that finds another at it skips), take the partition's
   ACCESS EXCLUSIVE lock (waits for a store or read in progress there; ``lock_timeout``),
   settle what is left (nothing, unless a message was locked in step 1), ``TRUNCATE``.
   A failure (lock timeout) rolls it all back; the next tick tries again.

Why this cannot lose a body: a store writes its message row (with ``body_slot``) and its
rows in one transaction, so once step 2 holds the lock, every body of the slot that will
ever commit has committed and is settled; a store whose message row was not committed
yet writes its rows after the ``TRUNCATE``. Clocks that disagree between replicas only
make a turn move more bodies. Tests: ``tests/ingest/test_body_ring.py``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from shared import bodies
from shared.periodic import Periodic
from shared.retention_metrics import RETENTION_PURGED

from .metrics import BODIES_KEPT, BODY_RING_TURNS
from .repo import Database
from .retention import RELEASABLE

log = logging.getLogger("mailexec.ingest.bodyring")

BATCH = 100  # messages settled per statement in step 1
LOCK_TIMEOUT = "SET LOCAL lock_timeout = '200ms'"

# another replica (or ingest worker) at the same slot holds its row: skip, not wait
CLAIM = """
UPDATE mail.body_ring SET for_turn_at = $2, emptied_at = now()
WHERE slot = (SELECT slot FROM mail.body_ring WHERE slot = $1 AND for_turn_at < $2
              FOR UPDATE SKIP LOCKED)
RETURNING slot
"""

# whether the slot was emptied for the turn starting at $2 (or a later one): a time, not a
# turn's number, so that it still compares after MAILEXEC_BODY_SLOT_S changed
EMPTIED_FOR = "SELECT for_turn_at >= $2 FROM mail.body_ring WHERE slot = $1"


def settle_sql(slot: int, *, skip_locked: bool) -> str:
    """Release or keep up to ``$2`` (NULL: all) held bodies of ring slot ``slot`` (= $1):
    (kept, released) counts."""
    lock = "FOR UPDATE OF m SKIP LOCKED" if skip_locked else "FOR UPDATE OF m"
    return f"""
WITH c AS (
    SELECT m.id, {RELEASABLE} AS done FROM mail.messages m
    WHERE m.body_held AND m.body_slot = $1
    LIMIT $2
    {lock}
), s AS (
    UPDATE mail.messages m
       SET body_held = NOT c.done,
           body_slot = CASE WHEN c.done THEN m.body_slot ELSE {bodies.KEPT} END
      FROM c WHERE m.id = c.id
    RETURNING m.id, c.done
), k AS (
    INSERT INTO mail.{bodies.partition(bodies.KEPT)} (slot, message_id, off, chunk)
    SELECT {bodies.KEPT}, b.message_id, b.off, b.chunk FROM mail.{bodies.partition(slot)} b
    WHERE b.message_id IN (SELECT id FROM s WHERE NOT done)
)
SELECT count(*) FILTER (WHERE NOT done) AS kept, count(*) FILTER (WHERE done) AS released
FROM s
"""


_SETTLE = {(slot, skip): settle_sql(slot, skip_locked=skip)
           for slot in range(1, bodies.RING + 1) for skip in (True, False)}


@dataclass
class Turn:
    slot: int
    turn: int  # the turn the slot was emptied for
    kept: int = 0
    released: int = 0
    emptied: bool = False  # False: another replica had, or a lock was busy


class BodyRing:
    def __init__(self, db: Database, slot_s: float) -> None:
        self.db = db
        self.slot_s = slot_s
        self.periodic = Periodic("body ring", self.run_once, slot_s / 4,
                                 on_error=lambda _: BODY_RING_TURNS.labels("error").inc())

    def start(self) -> None:
        self.periodic.start()

    async def stop(self) -> None:
        await self.periodic.stop()

    async def run_once(self, now: float | None = None) -> Turn | None:
        """Empty the slot of the next turn unless that is done; None when it was."""
        turn = bodies.turn_at(time.time() if now is None else now, self.slot_s) + 1
        slot = bodies.slot_of(turn)
        async with self.db.connection() as conn:
            if await conn.fetchval(EMPTIED_FOR, slot, self.start_of(turn)):
                return None
            return await self.empty(conn, slot, turn)

    def start_of(self, turn: int) -> datetime:
        return datetime.fromtimestamp(turn * self.slot_s, UTC)

    async def empty(self, conn: asyncpg.Connection, slot: int, turn: int) -> Turn:
        """Steps 1 and 2 of the module docstring for ring slot ``slot``, for ``turn``."""
        done = Turn(slot, turn)
        while True:
            async with conn.transaction():
                row = await conn.fetchrow(_SETTLE[(slot, True)], slot, BATCH)
            self._count(done, row)
            if row["kept"] + row["released"] < BATCH:
                break
        try:
            async with conn.transaction():
                await conn.execute(LOCK_TIMEOUT)
                if await conn.fetchval(CLAIM, slot, self.start_of(turn)) is None:
                    return done  # another replica emptied it for this turn, or is at it
                await conn.execute(f"LOCK TABLE mail.{bodies.partition(slot)} "
                                   "IN ACCESS EXCLUSIVE MODE")
                row = await conn.fetchrow(_SETTLE[(slot, False)], slot, None)
                await conn.execute(f"TRUNCATE mail.{bodies.partition(slot)}")
            self._count(done, row)
            done.emptied = True
        except asyncpg.LockNotAvailableError:
            BODY_RING_TURNS.labels("busy").inc()
            log.info("body ring: a lock was busy; slot emptied at the next tick",
                     extra={"slot": slot, "turn": turn})
            return done
        BODY_RING_TURNS.labels("emptied").inc()
        if done.kept:
            log.info("body ring: bodies still needed kept", extra={
                "slot": slot, "turn": turn, "kept": done.kept, "released": done.released})
        return done

    @staticmethod
    def _count(done: Turn, row: asyncpg.Record) -> None:
        """A committed statement's bodies, in the turn's sums and the metrics."""
        kept, released = int(row["kept"]), int(row["released"])
        done.kept += kept
        done.released += released
        BODIES_KEPT.inc(kept)
        RETENTION_PURGED.labels("body").inc(released)
