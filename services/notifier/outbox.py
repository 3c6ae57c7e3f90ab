"""The sender loop: hand each pending ``notifier.notifications`` row to the SMTP relay.

Every DSN and notice was rendered and committed before we get here, so nothing is lost
when the relay, the broker or this process goes away. A worker locks one due row
(``FOR UPDATE SKIP LOCKED``, so several workers and replicas never send the same row
at once), sends it, and records the outcome in the same transaction:

- relay accepted            → ``sent``
- relay down, 4xx, TLS/AUTH → stays ``pending``, ``next_attempt_at`` backs off
  exponentially (``notifier_retry_base_s`` doubling up to ``notifier_retry_max_s``)
- 5xx, or still failing after ``notifier_give_up_after_s`` → ``failed`` with
  ``last_error``; for a DSN (never for a notice: that could loop) a postmaster notice
  "DSN undeliverable" is queued in the same transaction.

The one window where a notification can go out twice: the relay answered 250 to DATA
and this process died before the ``sent`` update committed, a few milliseconds. The row
is still pending and is sent again after restart; the alternative order (mark first,
send after) would lose it instead. Losing the *database* in that window does not re-send:
the process remembers what the relay accepted and records it as sent (never sending it
again) once the database is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from services.notifier import metrics, repo
from services.notifier.dsn import render_undeliverable_dsn_notice, to_bytes
from services.notifier.policy_client import PolicyClient
from services.notifier.smtp import SmtpError, SmtpTarget, send
from shared.db import session_scope
from shared.errors import Unavailable
from shared.settings import Settings

log = logging.getLogger("mailexec.notifier.outbox")

WORKERS = 4
GAUGE_REFRESH_S = 5.0
MAX_IDLE_S = 1.0


def backoff_s(attempt: int, base: float, cap: float) -> float:
    """Delay before attempt ``attempt + 1`` after ``attempt`` failures (1, 2, 4 … × base)."""
    return float(min(cap, base * (2 ** max(0, attempt - 1))))


class Sender:
    def __init__(self, settings: Settings, policy: PolicyClient, target: SmtpTarget) -> None:
        self._settings = settings
        self._policy = policy
        self._target = target
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._gauge_task: asyncio.Task[None] | None = None
        self._idle_s = min(MAX_IDLE_S, max(0.05, settings.notifier_retry_base_s))
        # accepted by the relay, but the database went away before we could record it
        self._sent_unrecorded: set[uuid.UUID] = set()

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker(n)) for n in range(WORKERS)]
        self._gauge_task = asyncio.create_task(self._refresh_gauge())

    async def stop(self, timeout: float = 10.0) -> None:
        """Let in-flight sends finish (so their outcome is recorded), then stop."""
        self._stopping = True
        self._wake.set()
        if self._gauge_task is not None:
            self._gauge_task.cancel()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _worker(self, number: int) -> None:
        delay = 0.5
        while not self._stopping:
            try:
                busy = await self.send_one()
                delay = 0.5
            except Unavailable as exc:
                log.warning("outbox: database unavailable", extra={"error": exc.message})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            except Exception:
                log.exception("outbox: unexpected error in sender worker", extra={"worker": number})
                await asyncio.sleep(1.0)
                continue
            if not busy:
                await self._idle()

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

    async def send_one(self) -> bool:
        """Send the next due notification, if any; True if one was processed."""
        if self._sent_unrecorded:
            await self._record_sent_unrecorded()
        relay_accepted: uuid.UUID | None = None
        try:
            async with session_scope() as session:
                row = await repo.claim_due(session)
                if row is None:
                    return False
                if row.id in self._sent_unrecorded:  # accepted earlier; recorded next round
                    return True
                started = time.monotonic()
                try:
                    reply = await send(self._target, row.rcpt, row.content)
                except SmtpError as exc:
                    metrics.SMTP_SEND_SECONDS.observe(time.monotonic() - started)
                    state = await self._failed_attempt(session, row, exc)
                    reply = str(exc)
                else:
                    metrics.SMTP_SEND_SECONDS.observe(time.monotonic() - started)
                    relay_accepted = row.id
                    await repo.mark_sent(session, row.id)
                    state = "sent"
        except Unavailable:
            # Only ids whose "sent" mark was lost with the database are remembered; an id
            # still being committed by this worker must not be recorded twice by another.
            if relay_accepted is not None:
                self._sent_unrecorded.add(relay_accepted)
            raise
        metrics.DSNS.labels(kind=row.kind, state=state).inc()
        extra = {"notification_id": str(row.id), "message_id": str(row.message_id), "kind": row.kind,
                 "rcpt": row.rcpt, "attempt": row.attempts + 1, "relay": reply[:300]}
        if state == "sent":
            log.info("notification sent", extra=extra)
        elif state == "deferred":
            log.warning("notification deferred", extra=extra)
        else:
            log.error("notification failed", extra=extra)
        return True

    async def _record_sent_unrecorded(self) -> None:
        """Record as sent what the relay accepted while the database was unreachable."""
        pending = list(self._sent_unrecorded)
        async with session_scope() as session:
            for nid in pending:
                await repo.mark_sent(session, nid)
        self._sent_unrecorded.difference_update(pending)
        log.info("recorded notifications sent while the database was away",
                 extra={"count": len(pending)})

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
