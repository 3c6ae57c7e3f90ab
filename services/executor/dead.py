"""``deliveries.dead``: jobs nobody could finish become bounces, never silent drops.

Two kinds arrive here (dead-lettered by ``deliveries``):

- **corrupt**: a body the worker could not parse (rejected). If the job id (or, failing
  that, nothing) can be read and names a recipient row that is not final yet, that row
  is bounced with the ``corrupt`` status (5.3.0) and a ``bounce`` event is sent with the
  envelope read back from ``mail.messages``; an ``admin_notice`` (reason ``corrupt``)
  goes out in every case.
- **poison**: a valid job that exceeded the quorum queue's delivery limit (it kept
  crashing or being requeued). Unless its outcome is already recorded, the recipient is
  bounced 5.3.0 (``FailureKind.POISON``) with a ``bounce`` and an ``admin_notice``.
  If its outcome *is* recorded (the worker recorded it but lost the broker before
  publishing, again and again), the events of that outcome are published again with
  their original ids.

Database trouble → nack with requeue after a pause (this queue has no delivery limit).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aio_pika.abc import AbstractIncomingMessage
from pydantic import ValidationError

from services.executor.events import announce_final, envelope_from_db, event_id
from services.executor.metrics import DELIVERIES
from services.executor.publishing import Publisher
from services.executor.repo import MessageEnvelope, RecipientSnapshot, Repo
from services.executor.verdict import DIAGNOSTICS
from shared.errors import Unavailable
from shared.notify import pending_kinds
from shared.schemas import Event, EventEnvelope, EventRecipient, Job, Notice
from shared.status import FailureKind, NoticeReason, Outcome, status_for

log = logging.getLogger("mailexec.executor.dead")


class DeadLetters:
    def __init__(self, repo: Repo, publisher: Publisher) -> None:
        self.repo = repo
        self.pub = publisher

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            await self._handle(message)
        except (Unavailable, OSError) as exc:
            log.warning("dead-letter handling postponed", extra={"error": str(exc)[:300]})
            await asyncio.sleep(2.0)
            await message.nack(requeue=True)
            return
        except Exception:
            log.exception("dead-letter handling failed; requeued")
            await asyncio.sleep(2.0)
            await message.nack(requeue=True)
            return
        await message.ack()

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        reason = _death_reason(message.headers or {})
        try:
            job = Job.from_json(message.body)
        except (ValidationError, ValueError) as exc:
            await self._corrupt(message.body, str(exc), reason)
            return
        await self._poison(job, reason)

    async def _poison(self, job: Job, reason: str) -> None:
        status, diag = poison_outcome(reason)
        events = poison_events(job, status, diag, datetime.now(UTC))
        if not await self.repo.force_final(job.job_id, "bounced", status, diag,
                                           pending_kinds(e for _, e in events)):
            # Recorded by a worker that could not announce it (its channel died between
            # the commit and the publish, and the redeliveries ran out): announce it
            # now, or the sender never hears of it.
            snap = await self.repo.snapshot(job.job_id)
            sent = await announce_final(self.pub, job, snap) if snap is not None else 0
            log.info("dead job already has a final outcome; its events re-announced",
                     extra={"message_id": str(job.message_id), "recipient": job.recipient,
                            "events": sent})
            return
        for key, event in events:
            await self.pub.event(key, event)
        log.error("poison job bounced", extra={"message_id": str(job.message_id),
                                               "recipient": job.recipient, "outcome": "bounced",
                                               "status": status})
        DELIVERIES.labels("bounced").inc()

    async def _corrupt(self, body: bytes, error: str, reason: str) -> None:
        DELIVERIES.labels("corrupt").inc()
        job_id = _uuid(_loose(body).get("job_id"))
        snap = await self.repo.snapshot(job_id) if job_id else None
        env_row = await self.repo.envelope(snap.message_id) if snap else None
        report = corrupt_report(body, error, reason, snap, env_row, datetime.now(UTC))
        # left pending only with the finalisation (a notice about a recipient that was
        # final already may find the body gone: it says so instead of quoting headers)
        pending = pending_kinds([report.bounce, report.notice] if report.bounce else [])
        if (report.bounce is not None and snap is not None
                and await self.repo.force_final(snap.job_id, "bounced", report.status,
                                                report.diagnostic, pending)):
            await self.pub.event("bounce", report.bounce)
        await self.pub.event("admin_notice", report.notice)
        message_id = report.notice.message_id
        log.error("corrupt job reported", extra={"message_id": str(message_id) if message_id else None,
                                                 "outcome": "corrupt"})


# --- the decisions above, without the I/O ----------------------------------------------


def poison_outcome(reason: str) -> tuple[str, str]:
    """Status and diagnostic of a job the quorum queue gave up on (``x-death`` reason)."""
    why = f"dead-lettered ({reason}) after repeated delivery failures"
    return status_for(FailureKind.POISON), DIAGNOSTICS[FailureKind.POISON].format(why=why)


def poison_events(job: Job, status: str, diag: str, now: datetime) -> list[tuple[str, Event]]:
    """The bounce to the sender and the notice to the postmaster for a poison job; their ids
    are fixed per job, so announcing twice is dropped by the notifier."""
    env = EventEnvelope(sender=job.sender, envid=job.envid, ret=job.ret, notify=list(job.notify),
                        arrival_date=job.arrival)
    rcpt = _recipient(job.recipient, job.orcpt, status, diag, now)
    bounce = Event(kind="bounce", event_id=event_id(job.job_id, -2, "bounce"),
                   message_id=job.message_id, occurred_at=now, envelope=env, recipients=[rcpt])
    notice = Event(kind="admin_notice", event_id=event_id(job.job_id, -2, "admin_notice"),
                   message_id=job.message_id, occurred_at=now, envelope=env, recipients=[rcpt],
                   notice=Notice(reason=NoticeReason.POISON, account=job.recipient, detail=diag))
    return [("bounce", bounce), ("admin_notice", notice)]


@dataclass(frozen=True)
class CorruptReport:
    """What a job that cannot be parsed comes to: the recipient's bounce, when its row and
    envelope could be found (sent only if the row was not final yet), and always a notice."""

    status: str
    diagnostic: str
    bounce: Event | None
    notice: Event


def corrupt_report(body: bytes, error: str, reason: str, snap: RecipientSnapshot | None,
                   env_row: MessageEnvelope | None, now: datetime) -> CorruptReport:
    loose = _loose(body)
    job_id = _uuid(loose.get("job_id"))
    status = status_for(Outcome.CORRUPT)
    diag = f"delivery job could not be parsed: {error[:300]}"
    message_id = snap.message_id if snap else _uuid(loose.get("message_id"))
    rcpt = None
    bounce = None
    if snap is not None and env_row is not None:
        rcpt = _recipient(snap.address, snap.orcpt, status, diag, now)
        env = envelope_from_db(env_row, snap.notify)
        bounce = Event(kind="bounce", event_id=event_id(snap.job_id, -2, "bounce"),
                       message_id=snap.message_id, occurred_at=now, envelope=env, recipients=[rcpt])
    else:
        env = EventEnvelope(sender="", arrival_date=now)
    notice = Notice(reason=NoticeReason.CORRUPT, account=snap.address if snap else None,
                    detail=f"{diag} (dead-letter reason {reason}); body starts {body[:200]!r}")
    ev_id = event_id(job_id, -2, "admin_notice") if job_id else uuid.uuid4()
    report = Event(kind="admin_notice", event_id=ev_id, message_id=message_id, occurred_at=now,
                   envelope=env, recipients=[rcpt] if rcpt else [], notice=notice)
    return CorruptReport(status, diag, bounce, report)


def _recipient(address: str, orcpt: str | None, status: str, diag: str, now: datetime
               ) -> EventRecipient:
    return EventRecipient(address=address, orcpt=orcpt, action="failed", status=status,
                          diagnostic=diag, last_attempt=now)


def _death_reason(headers: dict[str, Any]) -> str:
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        reason = deaths[0].get("reason")
        if isinstance(reason, bytes):
            reason = reason.decode(errors="replace")
        return str(reason)
    return "unknown"


def _loose(body: bytes) -> dict[str, Any]:
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return obj if isinstance(obj, dict) else {}


def _uuid(value: object) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value else None
    except ValueError:
        return None

