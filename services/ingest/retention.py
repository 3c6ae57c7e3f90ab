"""Ingest's retention purge of schema ``mail`` (SPEC §2 "Retention"; docs/admin-guide.md
"What is kept, where, and for how long"), a background task of every ingest process.

Why ingest: it owns ``mail``. The decision "may this body go" is made here and only here
(:data:`RELEASABLE`; ``mailexec queue delete`` applies it through :data:`DISCARD`).

**Bodies** go as soon as nobody needs them: every recipient is final (delivered,
bounced, deleted) and none has a notification pending (``notifier_pending``: set in
the transaction that made it final, by ``shared.notify``'s rule, and cleared by the
notifier in the transaction that stores the DSN or notice it rendered, or right after it
when those rows are busy (``services/notifier/repo.py`` ``handled``) — so a purge
that runs between the two finds the flag and keeps the body, and a DSN's returned
content is never lost; an outcome that owes no DSN sets nothing, so its body goes at the
next pass). One exception: a recipient the dead-letter handler ended keeps its message's
body, so ``mailexec queue dead --requeue`` can still deliver it, until an operator
deletes the message (``discarded_at``) or its records go.

**Records** (the message's envelope, recipients and their program runs, cascaded, and
its queue actions) go ``record_retention_days`` (policy setting) after the message
became final: after the latest ``final_at`` of its recipients. A body some notification
still waits for goes with them at the latest (the bound on "kept for a DSN that never
comes": an event the notifier dead-lettered).

How, so that a delivery never waits for a purge: candidate messages are read in
``(received_at, id)`` order from an index (``messages_body_held``, ``messages_received``)
through a cursor that survives between passes, a window of ``MAILEXEC_RETENTION_BATCH``
at a time; each window is one short transaction that locks only the messages it
changes, ``FOR UPDATE SKIP LOCKED``, with ``lock_timeout`` set. The executor never locks
``mail.messages`` (it reads bodies without a lock), a claim locks recipients only, and
two ingest replicas skip each other's rows. Records that are not due yet (a message
held for weeks) cost one look per sweep, never a stall: the cursor moves past them.

Until policy has answered once, records are not purged (a guessed default could be
shorter than what the admin set); bodies do not depend on the setting.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg

from shared import bodies
from shared.policy_client import PolicyClient, PolicyUnavailable
from shared.retention_metrics import RETENTION_OLDEST, finish_pass, purge_task, record_keep_s
from shared.settings import Settings
from shared.states import FINAL_STATES

from .metrics import BODIES_HELD
from .repo import Database

log = logging.getLogger("mailexec.ingest.retention")

_FINAL = "(" + ", ".join(f"'{s}'" for s in FINAL_STATES) + ")"
KEPT_BODIES = bodies.partition(bodies.KEPT)
LOCK_TIMEOUT = "SET LOCAL lock_timeout = '500ms'"
MAX_WINDOWS = 200  # windows of candidates per kind and pass; a sweep resumes at its cursor


def _nobody_needs_body(*, dead_letters_hold: bool) -> str:
    blockers = [f"r.state NOT IN {_FINAL}", "r.notifier_pending IS NOT NULL"]
    if dead_letters_hold:
        blockers.append("(r.dead_lettered_at IS NOT NULL AND m.discarded_at IS NULL)")
    return ("NOT EXISTS (SELECT 1 FROM mail.recipients r WHERE r.message_id = m.id AND ("
            + " OR ".join(blockers) + "))")


# The one rule (``m``: the mail.messages row): may its body go now?
RELEASABLE = _nobody_needs_body(dead_letters_hold=True)

# ``mailexec queue delete`` of a whole message, once no recipient is left to deliver
# (run after its recipients changed, in the same transaction): the message is discarded
# and its body goes now unless a notification still needs it (then at the purge's next
# pass after the notifier rendered it). Nothing when a recipient is still running.
DISCARD = f"""
WITH d AS (
    UPDATE mail.messages AS m
       SET discarded_at = coalesce(m.discarded_at, now()),
           body_held = m.body_held AND NOT {_nobody_needs_body(dead_letters_hold=False)}
     WHERE m.id = $1
       AND NOT EXISTS (SELECT 1 FROM mail.recipients r
                       WHERE r.message_id = m.id AND r.state NOT IN {_FINAL})
    RETURNING m.id, m.body_held, m.body_slot
), b AS (  -- from whichever partition holds it, ring or kept
    DELETE FROM mail.bodies b USING d
    WHERE NOT d.body_held AND {bodies.of_message("d")}
)
SELECT body_held FROM d
"""

BODY_CANDIDATES = """
SELECT id, received_at FROM mail.messages
WHERE body_held AND (received_at, id) > ($1, $2)
ORDER BY received_at, id
LIMIT $3
"""

RELEASE_BODIES = f"""
WITH released AS (
    UPDATE mail.messages SET body_held = false
    WHERE id IN (SELECT m.id FROM mail.messages m
                 WHERE m.id = ANY($1::uuid[]) AND m.body_held AND {RELEASABLE}
                 FOR UPDATE OF m SKIP LOCKED)
    RETURNING id, body_slot
), b AS (  -- kept bodies; a ring partition's rows go when its turn comes (bodyring.py)
    DELETE FROM mail.{KEPT_BODIES} WHERE message_id IN (SELECT id FROM released
                                                     WHERE body_slot = {bodies.KEPT})
)
SELECT id FROM released
"""

RECORD_CANDIDATES = """
SELECT id, received_at FROM mail.messages
WHERE received_at < now() - make_interval(secs => $1) AND (received_at, id) > ($2, $3)
ORDER BY received_at, id
LIMIT $4
"""

# due: every recipient final for longer than the retention (a message becomes final
# when its last recipient does)
DELETE_RECORDS = f"""
WITH victims AS (
    SELECT m.id FROM mail.messages m
    WHERE m.id = ANY($1::uuid[])
      AND NOT EXISTS (SELECT 1 FROM mail.recipients r
                      WHERE r.message_id = m.id
                        AND (r.state NOT IN {_FINAL} OR r.final_at IS NULL
                             OR r.final_at >= now() - make_interval(secs => $2)))
    FOR UPDATE OF m SKIP LOCKED
), gone AS (
    DELETE FROM mail.messages WHERE id IN (SELECT id FROM victims) RETURNING id
), b AS (  -- none normally: a body goes long before its records (a ring partition's
           -- rows go when its turn comes: bodyring.py settles only messages that exist)
    DELETE FROM mail.{KEPT_BODIES} WHERE message_id IN (SELECT id FROM victims)
), actions AS (
    DELETE FROM mail.queue_actions WHERE message_id IN (SELECT id FROM gone) RETURNING id
)
SELECT (SELECT count(*) FROM gone) AS messages, (SELECT count(*) FROM actions) AS actions
"""

# queue actions of no one message (retry --all, requeue --all): by their own age
DELETE_UNBOUND_ACTIONS = """
DELETE FROM mail.queue_actions WHERE id IN (
    SELECT id FROM mail.queue_actions
    WHERE message_id IS NULL AND NOT events_pending
      AND at < now() - make_interval(secs => $1)
    ORDER BY at
    LIMIT $2
    FOR UPDATE SKIP LOCKED)
"""

# each reads one index (messages_body_held, messages_received)
GAUGES = """
SELECT (SELECT count(*) FROM mail.messages WHERE body_held) AS bodies,
       (SELECT extract(epoch FROM now() - min(received_at)) FROM mail.messages
         WHERE body_held) AS body,
       (SELECT extract(epoch FROM now() - min(received_at)) FROM mail.messages) AS message
"""

_START = (datetime.min.replace(tzinfo=UTC), uuid.UUID(int=0))


@dataclass
class Sweep:
    """Where a walk over the candidates of one kind is (kept between passes)."""

    at: tuple[datetime, uuid.UUID] = field(default_factory=lambda: _START)

    def reset(self) -> None:
        self.at = _START


class Purger:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.batch = max(1, settings.retention_batch)
        self.policy = PolicyClient(settings.policy_url, settings.service_token,
                                   timeout_s=5.0, connect_timeout_s=2.0, max_connections=2)
        self.retention_days: int | None = None  # the last value policy gave
        self.bodies = Sweep()
        self.records = Sweep()
        self.periodic = purge_task("ingest retention", self.run_once,
                                   settings.retention_interval_s)

    def start(self) -> None:
        self.periodic.start()

    async def stop(self) -> None:
        await self.periodic.stop()
        await self.policy.close()

    async def run_once(self) -> dict[str, int]:
        """One pass: bodies released, records purged as far as due; rows per kind."""
        done = {"body": await self.release_bodies(), "message": 0, "queue_action": 0}
        days = await self._retention_days()
        if days is not None:
            done["message"], done["queue_action"] = await self.purge_records(days)
        await finish_pass(done, self.refresh_gauges, log)
        return done

    async def _retention_days(self) -> int | None:
        try:
            self.retention_days = (await self.policy.settings()).record_retention_days
        except PolicyUnavailable as exc:
            log.warning("policy settings unavailable; records purged with the last known "
                        "retention, if any", extra={"error": str(exc)[:300],
                                                    "retention_days": self.retention_days})
        return self.retention_days

    async def release_bodies(self) -> int:
        """Delete every body nobody needs any more (:data:`RELEASABLE`)."""
        async def release(conn: asyncpg.Connection, ids: list[uuid.UUID]) -> tuple[int, ...]:
            return (len(await conn.fetch(RELEASE_BODIES, ids)),)

        (total,) = await self._walk(self.bodies, BODY_CANDIDATES, (), release)
        return total

    async def purge_records(self, days: int) -> tuple[int, int]:
        """Delete the records of messages final for more than ``days`` days, and the old
        queue actions bound to no message; (messages, queue actions) deleted."""
        keep_s = record_keep_s(days)

        async def delete(conn: asyncpg.Connection, ids: list[uuid.UUID]) -> tuple[int, ...]:
            row = await conn.fetchrow(DELETE_RECORDS, ids, keep_s)
            return int(row["messages"]), int(row["actions"])

        messages, actions = await self._walk(self.records, RECORD_CANDIDATES, (keep_s,), delete,
                                             counts=2)
        for _ in range(MAX_WINDOWS):
            async with self.db.connection() as conn, conn.transaction():
                await conn.execute(LOCK_TIMEOUT)
                n = _count(await conn.execute(DELETE_UNBOUND_ACTIONS, keep_s, self.batch))
            actions += n
            if n < self.batch:
                break
        return messages, actions

    async def _walk(
        self, sweep: Sweep, candidates: str, args: tuple[object, ...],
        act: Callable[[asyncpg.Connection, list[uuid.UUID]], Awaitable[tuple[int, ...]]],
        counts: int = 1,
    ) -> tuple[int, ...]:
        """Walk one kind's candidates from ``sweep`` a window at a time, each window acted
        on in a short transaction of its own; the sums of what ``act`` counted."""
        totals = [0] * counts
        for _ in range(MAX_WINDOWS):
            async with self.db.connection() as conn:
                window = await conn.fetch(candidates, *args, *sweep.at, self.batch)
                if window:
                    async with conn.transaction():
                        await conn.execute(LOCK_TIMEOUT)
                        done = await act(conn, [r["id"] for r in window])
                    totals = [t + n for t, n in zip(totals, done, strict=True)]
            if len(window) < self.batch:
                sweep.reset()
                break
            sweep.at = (window[-1]["received_at"], window[-1]["id"])
        return tuple(totals)

    async def refresh_gauges(self) -> None:
        async with self.db.connection() as conn:
            row = await conn.fetchrow(GAUGES)
        BODIES_HELD.set(int(row["bodies"]))
        for kind in ("body", "message"):
            RETENTION_OLDEST.labels(kind).set(max(0.0, float(row[kind] or 0.0)))


def _count(status: str) -> int:
    """Rows of an asyncpg command status (``DELETE 12``)."""
    try:
        return int(status.rsplit(" ", 1)[-1])
    except ValueError:
        return 0


async def discard(conn: asyncpg.Connection, message_id: uuid.UUID) -> bool | None:
    """:data:`DISCARD` in the caller's transaction: whether the body is still held
    afterwards (a notification needs it), None when a recipient is still undelivered
    (nothing was changed)."""
    row = await conn.fetchrow(DISCARD, message_id)
    return None if row is None else bool(row["body_held"])
