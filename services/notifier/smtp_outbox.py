"""The sender: hand each pending ``notifier.notifications`` row to the SMTP relay.

Every DSN and notice was rendered and committed before we get here, so nothing is lost
when the relay, the broker or this process goes away.

How rows move: a dispatcher claims due rows in batches and :data:`WORKERS` workers send
them at once, each on its own SMTP connection kept open between notifications
(:class:`services.notifier.smtp.SmtpSession`). A claimed row is held by a
session-level advisory lock on one dedicated database connection (see
:func:`services.notifier.repo.lock_due`), so several workers and replicas never send
the same row at once, a crashed sender's rows are free again as soon as its connection
is gone, and — unlike a row lock, which lives only as long as its transaction — the
outcome of each send can commit on its own while other sends are still under way:

- relay accepted            → ``sent``; the marks of everything accepted meanwhile
  commit together in one statement (group commit), right after the 250
- relay down, 4xx, TLS/AUTH → stays ``pending``, ``next_attempt_at`` backs off
  exponentially (``notifier_retry_base_s`` doubling up to ``notifier_retry_max_s``)
- 5xx, or still failing after ``notifier_give_up_after_s`` → ``failed`` with
  ``last_error``; for a DSN (never for a notice: that could loop) a postmaster notice
  "DSN undeliverable" is queued in the same transaction.

Only then is the row's lock released (a sent row's with others, in batches: nobody
can claim a sent row anyway). The one window where a notification can go out twice:
the relay answered 250 to DATA and this process died before the ``sent`` mark
committed, a few milliseconds (:data:`MARK_GATHER_S` and one commit). The row is
still pending and is sent again after restart; the alternative order (mark first,
send after) would lose it instead. Losing the *database* in that window does not
re-send from this process: it remembers what the relay accepted and records it as
sent once the database is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from services.notifier import metrics, repo
from services.notifier.mime import to_bytes
from services.notifier.notice_render import render_undeliverable_dsn_notice
from services.notifier.smtp import IDLE_LIMIT_S, SmtpError, SmtpSession, SmtpTarget
from shared.db import get_engine, session_scope, translate_db_errors
from shared.errors import Unavailable
from shared.policy_client import NoticeSettingsReader
from shared.settings import Settings

log = logging.getLogger("mailexec.notifier.smtp_outbox")

WORKERS = 8  # SMTP connections sending at once
HELD_PER_WORKER = 4  # rows claimed per worker: one being sent, the next ones waiting
MARK_GATHER_S = 0.005  # accepted sends gathered into one "sent" statement for this long
MAX_HELD = 1024  # rows held at most, including those waiting for their "sent" mark
UNLOCK_BATCH = 128  # locks of sent rows are released in batches (a sent row is never claimed)
GAUGE_REFRESH_S = 5.0
MAX_IDLE_S = 1.0
MAX_RETRY_DELAY_S = 30.0

T = TypeVar("T")


def backoff_s(attempt: int, base: float, cap: float) -> float:
    """Delay before attempt ``attempt + 1`` after ``attempt`` failures (1, 2, 4 … × base)."""
    return float(min(cap, base * (2 ** max(0, attempt - 1))))


class DedicatedConnection:
    """A database connection of the sender's own, outside the request/response use of the
    pool: one holds the advisory locks of the rows this process is sending, one records
    what was sent. Autocommit: every statement commits on its own. Used by one caller at
    a time; after any error it is thrown away (with its locks) and the next use opens a
    new one (``generation`` counts them)."""

    def __init__(self) -> None:
        self._conn: AsyncConnection | None = None
        self._lock = asyncio.Lock()
        self.generation = 0

    @property
    def connected(self) -> bool:
        return self._conn is not None

    async def run(self, operation: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        async with self._lock:
            try:
                with translate_db_errors():
                    if self._conn is None:
                        conn = await get_engine().connect()
                        self._conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                        self.generation += 1
                    return await operation(self._conn)
            except BaseException:
                await self._discard()
                raise

    async def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.invalidate()
            with contextlib.suppress(Exception):
                await conn.close()

    async def close(self) -> None:
        """Release every lock and give the connection back."""
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is None:
                return
            try:
                with translate_db_errors():
                    await repo.unlock_all(conn)
                    await conn.close()
            except Exception:
                self._conn = conn
                await self._discard()


@dataclass(frozen=True)
class _Accepted:
    row: repo.Outgoing
    reply: str


class Sender:
    def __init__(self, settings: Settings, policy: NoticeSettingsReader, target: SmtpTarget) -> None:
        self._settings = settings
        self._policy = policy
        self._target = target
        self._wake = asyncio.Event()
        self._stopping = False
        self._locks = DedicatedConnection()
        self._marks = DedicatedConnection()
        self._unlock_later: list[tuple[uuid.UUID, int]] = []  # sent rows, lock generation
        self._queue: asyncio.Queue[repo.Outgoing | None] = asyncio.Queue()
        self._held: dict[uuid.UUID, int] = {}  # rows this process holds -> lock generation
        self._to_send = 0  # held rows not sent yet (queued or being sent)
        self._room = asyncio.Event()
        # accepted by the relay, "sent" not yet recorded (kept while the database is away)
        self._accepted: list[_Accepted] = []
        self._accepted_event = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._marker: asyncio.Task[None] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._gauge_task: asyncio.Task[None] | None = None
        self._idle_s = min(MAX_IDLE_S, max(0.05, settings.notifier_retry_base_s))

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._workers = [asyncio.create_task(self._worker(n)) for n in range(WORKERS)]
        self._dispatcher = asyncio.create_task(self._dispatch())
        self._marker = asyncio.create_task(self._mark_loop())
        self._gauge_task = asyncio.create_task(self._refresh_gauge())

    async def stop(self, timeout: float = 10.0) -> None:
        """Let in-flight sends finish and record their outcome; release the rest; stop."""
        self._stopping = True
        self._wake.set()
        self._room.set()
        if self._gauge_task is not None:
            self._gauge_task.cancel()
        if self._dispatcher is not None:
            # Not cancelled mid-claim if it can be helped: that would drop the lock
            # connection, and with it the locks of the rows still being sent.
            _, late = await asyncio.wait([self._dispatcher], timeout=2.0)
            for task in late:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if not self._workers:
            return
        waiting: list[uuid.UUID] = []
        while not self._queue.empty():
            row = self._queue.get_nowait()
            if row is not None:
                waiting.append(row.id)
                self._to_send -= 1
        await self._release(waiting)
        for _ in self._workers:
            self._queue.put_nowait(None)
        _, pending = await asyncio.wait(self._workers, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        if self._marker is not None:
            self._marker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._marker
        with contextlib.suppress(Unavailable):
            await self._record_accepted()
        await self._marks.close()
        await self._locks.close()

    # --- claiming -------------------------------------------------------------------

    async def _dispatch(self) -> None:
        capacity = WORKERS * HELD_PER_WORKER
        delay = 0.5
        while not self._stopping:
            # rows waiting for their "sent" mark do not count, unless marking is stuck
            room = min(capacity - self._to_send, MAX_HELD - len(self._held))
            if room < WORKERS and not (room > 0 and self._queue.empty()):
                self._room.clear()
                await self._room.wait()  # claim in batches, not a row at a time
                continue
            try:
                rows = await self._claim(room)
                delay = 0.5
            except Unavailable as exc:
                log.warning("outbox: database unavailable", extra={"error": exc.message})
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY_S)
                continue
            except Exception:
                log.exception("outbox: unexpected error while claiming notifications")
                await asyncio.sleep(1.0)
                continue
            if not rows:
                await self._idle()
                continue
            for row in rows:
                self._queue.put_nowait(row)

    async def _claim(self, limit: int) -> list[repo.Outgoing]:
        async def claim(conn: AsyncConnection) -> list[repo.Outgoing]:
            if len(self._unlock_later) >= UNLOCK_BATCH:
                await self._unlock_sent(conn)
            ids = await repo.lock_due(conn, limit, self._held.keys())
            if not ids:
                await self._unlock_sent(conn)  # quiet now: let go of everything
                return []
            rows = await repo.load_locked(conn, ids)
            gone = set(ids) - {r.id for r in rows}  # sent or deferred by their last holder
            if gone:
                await repo.unlock(conn, list(gone))
            return rows

        rows = await self._locks.run(claim)
        for row in rows:
            self._held[row.id] = self._locks.generation
        self._to_send += len(rows)
        return rows

    async def _unlock_sent(self, conn: AsyncConnection) -> None:
        generation = self._locks.generation
        batch, self._unlock_later = self._unlock_later, []
        await repo.unlock(conn, [i for i, g in batch if g == generation])

    async def _release(self, ids: Sequence[uuid.UUID], *, sent: bool = False) -> None:
        """Let go of rows whose outcome is recorded (or that were not sent after all).
        A sent row's lock is released later, with others: nobody can claim it anyway."""
        generation = self._locks.generation
        mine = [i for i in ids if self._held.get(i) == generation]
        try:
            if sent:
                self._unlock_later.extend((i, generation) for i in mine)
            elif mine and self._locks.connected:
                await self._locks.run(lambda conn: repo.unlock(conn, mine))
        except Unavailable:
            pass  # the connection is gone, and its locks with it
        finally:
            for i in ids:
                self._held.pop(i, None)
            self._room.set()

    async def _idle(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=self._idle_s)
        self._wake.clear()

    async def _refresh_gauge(self) -> None:
        while not self._stopping:
            try:
                async with session_scope() as session:
                    metrics.OUTBOX_PENDING.set(await repo.count_pending(session))
            except Unavailable:
                pass
            await asyncio.sleep(GAUGE_REFRESH_S)

    # --- sending --------------------------------------------------------------------

    async def _worker(self, number: int) -> None:
        smtp = SmtpSession(self._target)
        try:
            while True:
                try:
                    row = await asyncio.wait_for(self._queue.get(), timeout=IDLE_LIMIT_S)
                except TimeoutError:
                    await smtp.close()  # idle: do not keep the relay's connection
                    continue
                if row is None:
                    return
                try:
                    await self._send(smtp, row)
                except Exception:
                    log.exception("outbox: unexpected error in sender worker", extra={"worker": number})
                    await self._release([row.id])
                finally:
                    self._to_send -= 1
                    self._room.set()
        finally:
            await smtp.close()

    async def _send(self, smtp: SmtpSession, row: repo.Outgoing) -> None:
        started = time.monotonic()
        try:
            reply = await smtp.send(row.rcpt, row.content)
        except SmtpError as exc:
            metrics.SMTP_SEND_SECONDS.observe(time.monotonic() - started)
            await self._record_failure(row, exc)
            return
        metrics.SMTP_SEND_SECONDS.observe(time.monotonic() - started)
        self._accepted.append(_Accepted(row, reply))
        self._accepted_event.set()

    async def _record_failure(self, row: repo.Outgoing, exc: SmtpError) -> None:
        state: str | None = None
        try:
            async with session_scope() as session:
                state = await self._failed_attempt(session, row, exc)
        except Unavailable as db_exc:
            # Nothing recorded: the row stays due and pending and is tried again.
            log.warning("outbox: could not record a failed attempt", extra={"error": db_exc.message})
        finally:
            await self._release([row.id])
        if state is not None:
            metrics.DSNS.labels(kind=row.kind, state=state).inc()
            extra = {"notification_id": str(row.id), "message_id": str(row.message_id),
                     "kind": row.kind, "rcpt": row.rcpt, "attempt": row.attempts + 1,
                     "relay": str(exc)[:300]}
            if state == "deferred":
                log.warning("notification deferred", extra=extra)
            else:
                log.error("notification failed", extra=extra)

    # --- recording what was sent ----------------------------------------------------

    async def _mark_loop(self) -> None:
        delay = 0.5
        while True:
            await self._accepted_event.wait()
            await asyncio.sleep(MARK_GATHER_S)
            self._accepted_event.clear()
            try:
                await self._record_accepted()
                delay = 0.5
            except Exception as exc:
                if isinstance(exc, Unavailable):
                    log.warning("outbox: cannot record sent notifications yet; retrying",
                                extra={"error": exc.message, "count": len(self._accepted),
                                       "retry_in_s": delay})
                else:
                    log.exception("outbox: recording sent notifications failed; retrying")
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY_S)
                self._accepted_event.set()

    async def _record_accepted(self) -> None:
        """Mark everything accepted so far as sent in one statement, then unlock it."""
        batch = list(self._accepted)
        if not batch:
            return
        ids = [a.row.id for a in batch]
        await self._marks.run(lambda conn: repo.mark_sent_many(conn, ids))
        del self._accepted[: len(batch)]
        await self._release(ids, sent=True)
        for accepted in batch:
            row = accepted.row
            metrics.DSNS.labels(kind=row.kind, state="sent").inc()
            log.info(
                "notification sent",
                extra={"notification_id": str(row.id), "message_id": str(row.message_id),
                       "kind": row.kind, "rcpt": row.rcpt, "attempt": row.attempts + 1,
                       "relay": accepted.reply[:300]},
            )

    async def _failed_attempt(self, session: AsyncSession, row: repo.Outgoing, exc: SmtpError) -> str:
        error = f"{self._target.describe()}: {exc}"
        age = (datetime.now(UTC) - row.created_at).total_seconds()
        expired = age > self._settings.notifier_give_up_after_s
        if not exc.permanent and not expired:
            delay = backoff_s(
                row.attempts + 1, self._settings.notifier_retry_base_s, self._settings.notifier_retry_max_s
            )
            await repo.mark_retry(session, row.id, error, delay)
            return "deferred"
        if expired and not exc.permanent:
            error = f"gave up after {int(age)}s; last error: {error}"
        await repo.mark_failed(session, row.id, error)
        if row.kind in repo.DSN_KINDS:
            policy = await self._policy.get()
            notice = render_undeliverable_dsn_notice(
                row.content,
                smtp_error=error,
                postmaster=policy.postmaster,
                reporting_mta=self._settings.reporting_mta,
                max_returned_body_bytes=self._settings.dsn_max_returned_body_bytes,
            )
            nid = await repo.insert_notification(
                session,
                kind="postmaster_copy",
                rcpt=policy.postmaster,
                content=to_bytes(notice),
                message_id=row.message_id,
                event_ids=[],
            )
            metrics.DSNS.labels(kind="postmaster_copy", state="pending").inc()
            log.warning(
                "undeliverable DSN reported to the postmaster",
                extra={"notification_id": str(row.id), "notice_id": str(nid),
                       "postmaster": policy.postmaster},
            )
            self._wake.set()
        return "failed"
