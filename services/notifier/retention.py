"""The notifier's retention purge of its own schema (docs/admin-guide.md "What is kept,
where, and for how long"), a background task of every notifier replica.

What it deletes, each in batches of ``MAILEXEC_RETENTION_BATCH`` rows taken with
``FOR UPDATE SKIP LOCKED`` (two replicas never wait for each other, and the sender,
which only touches ``pending`` rows, never meets these locks), each batch its own short
transaction with ``lock_timeout`` set, every ``MAILEXEC_RETENTION_INTERVAL_S``:

- **content** of notifications that are final: ``sent``, or ``failed`` for good (a
  failed DSN went on to the postmaster in a copy of its own, which goes the same way
  once sent). A pending notification keeps it, however many sends failed: it is what
  the next try sends. The recipients a DSN reports stay in ``reported`` (a user's
  visibility and the once-per-window delay warnings read them); for a row written
  before that column existed they are read from the content one last time.
- **notification records** (final ones) ``record_retention_days`` after they were
  written, but never before ``delay_warning_after_s`` (a delay warning's record is
  what keeps the next one from repeating it within that time).
- **seen_events** ``record_retention_days`` after they were seen. The window they guard
  is the time in which a copy of an event can still be announced: the executor
  re-announces a recorded outcome from the recipient's row (a redelivered or retried
  job), ingest re-publishes a queue action's bounce from its audit row, and both live
  that long (ingest's purge deletes them ``record_retention_days`` after the message
  became final). Deleted earlier, a late copy would be a second DSN.

Retention is a policy setting read through the notifier's policy client; until policy
has answered once nothing but content is deleted (a guessed default could be shorter
than what the admin set).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.notifier.repo import DSN_KINDS, reported_of
from shared.db import session_scope
from shared.policy_client import NoticeSettingsReader
from shared.retention_metrics import RETENTION_OLDEST, finish_pass, purge_task, record_keep_s
from shared.settings import Settings

log = logging.getLogger("mailexec.notifier.retention")

LOCK_TIMEOUT = "SET LOCAL lock_timeout = '500ms'"
MAX_BATCHES_PER_KIND = 200  # per pass; the rest waits for the next interval

_CONTENT_VICTIMS = """
SELECT id, kind, reported, CASE WHEN reported IS NULL THEN content END AS content
FROM notifier.notifications
WHERE content IS NOT NULL AND state <> 'pending'
ORDER BY created_at
LIMIT :batch
FOR UPDATE SKIP LOCKED
"""

_CLEAR_CONTENT = """
UPDATE notifier.notifications AS n
   SET content = NULL,
       reported = CASE WHEN n.reported IS NOT NULL OR t.reported IS NULL THEN n.reported
                       ELSE ARRAY(SELECT jsonb_array_elements_text(CAST(t.reported AS jsonb))) END
  FROM unnest(CAST(:ids AS uuid[]), CAST(:reported AS text[])) AS t(id, reported)
 WHERE n.id = t.id
"""

_DELETE_NOTIFICATIONS = """
DELETE FROM notifier.notifications WHERE id IN (
    SELECT id FROM notifier.notifications
    WHERE state <> 'pending' AND created_at < now() - make_interval(secs => :keep_s)
    ORDER BY created_at
    LIMIT :batch
    FOR UPDATE SKIP LOCKED)
"""

_DELETE_SEEN = """
DELETE FROM notifier.seen_events WHERE event_id IN (
    SELECT event_id FROM notifier.seen_events
    WHERE at < now() - make_interval(secs => :keep_s)
    ORDER BY at
    LIMIT :batch
    FOR UPDATE SKIP LOCKED)
"""

# each reads the first entry of one partial index (migration 0008)
_OLDEST = """
SELECT
  (SELECT extract(epoch FROM now() - min(created_at)) FROM notifier.notifications
    WHERE content IS NOT NULL AND state <> 'pending') AS notification_content,
  (SELECT extract(epoch FROM now() - min(created_at)) FROM notifier.notifications
    WHERE state <> 'pending') AS notification,
  (SELECT extract(epoch FROM now() - min(at)) FROM notifier.seen_events) AS seen_event
"""

KINDS = ("notification_content", "notification", "seen_event")


@dataclass(frozen=True)
class Windows:
    """How long (seconds) final notifications and seen events are kept."""

    notifications_s: float
    seen_events_s: float


def windows(record_retention_days: int, delay_warning_after_s: int) -> Windows:
    """The keep times the purge applies (module docstring)."""
    records = record_keep_s(record_retention_days)
    return Windows(notifications_s=max(records, float(delay_warning_after_s)),
                   seen_events_s=records)


class Purger:
    def __init__(self, settings: Settings, policy: NoticeSettingsReader) -> None:
        self.batch = max(1, settings.retention_batch)
        self.policy = policy
        self.periodic = purge_task("notifier retention", self.run_once,
                                   settings.retention_interval_s)

    def start(self) -> None:
        self.periodic.start()

    async def stop(self) -> None:
        await self.periodic.stop()

    async def run_once(self) -> dict[str, int]:
        """One pass: every kind purged as far as it is due; returns the rows per kind."""
        done = {kind: 0 for kind in KINDS}
        done["notification_content"] = await self._batches(self._clear_content_batch)
        current = await self.policy.get()
        if current.from_policy:
            keep = windows(current.record_retention_days, current.delay_warning_after_s)
            done["notification"] = await self._batches(
                lambda s: self._delete(s, _DELETE_NOTIFICATIONS, keep.notifications_s))
            done["seen_event"] = await self._batches(
                lambda s: self._delete(s, _DELETE_SEEN, keep.seen_events_s))
        await finish_pass(done, self.refresh_oldest, log)
        return done

    async def refresh_oldest(self) -> None:
        async with session_scope() as session:
            row = (await session.execute(text(_OLDEST))).one()
        for kind in KINDS:
            value = getattr(row, kind)
            RETENTION_OLDEST.labels(kind).set(max(0.0, float(value or 0.0)))

    async def _batches(self, one: Callable[[AsyncSession], Awaitable[int]]) -> int:
        total = 0
        for _ in range(MAX_BATCHES_PER_KIND):
            async with session_scope() as session:
                await session.execute(text(LOCK_TIMEOUT))
                n = await one(session)
            total += n
            if n < self.batch:
                break
        return total

    async def _clear_content_batch(self, session: AsyncSession) -> int:
        rows = (await session.execute(text(_CONTENT_VICTIMS), {"batch": self.batch})).all()
        if not rows:
            return 0
        reported: list[str | None] = []
        for r in rows:
            if r.reported is None and r.kind in DSN_KINDS and r.content is not None:
                reported.append(orjson.dumps(sorted(reported_of(None, r.content))).decode())
            else:
                reported.append(None)
        await session.execute(text(_CLEAR_CONTENT),
                              {"ids": [r.id for r in rows], "reported": reported})
        return len(rows)

    async def _delete(self, session: AsyncSession, sql: str, keep_s: float) -> int:
        result = await session.execute(text(sql), {"keep_s": keep_s, "batch": self.batch})
        return int(result.rowcount or 0)  # type: ignore[attr-defined]
