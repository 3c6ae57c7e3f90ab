"""Events for the notifier (docs/internals.md "Event body"), built from a verdict.

Event ids are deterministic (UUIDv5 of job id, attempt and kind): an event announced
again after a crash (see ``worker.py``) carries the same id, and the notifier's
``seen_events`` table drops the copy. :func:`rederive` rebuilds the verdict of an
outcome that is already recorded, from the recipient row and its last program run.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

from services.executor.publishing import Publisher
from services.executor.repo import MessageEnvelope, RecipientSnapshot
from services.executor.verdict import DIAGNOSTICS, Verdict
from shared.schemas import Event, EventEnvelope, EventRecipient, Job, Notice
from shared.states import FINAL_STATES
from shared.status import FailureKind

EVENT_NS = uuid.UUID("5f0c8a52-3c1e-4a43-9a8e-6d2f4b1c7e90")


def event_id(job_id: uuid.UUID, attempt: int, kind: str) -> uuid.UUID:
    return uuid.uuid5(EVENT_NS, f"{job_id}:{attempt}:{kind}")


def envelope_of(job: Job) -> EventEnvelope:
    return EventEnvelope(sender=job.sender, envid=job.envid, ret=job.ret, notify=list(job.notify),
                         arrival_date=job.arrival)


def envelope_from_db(env: MessageEnvelope, notify_of_recipient: list[str] | None = None) -> EventEnvelope:
    """The event envelope from the stored message; NOTIFY is the recipient's when it has one."""
    notify = [n for n in (notify_of_recipient or env.notify)
              if n in ("NEVER", "SUCCESS", "FAILURE", "DELAY")] or [
        "FAILURE", "DELAY"]
    ret = env.ret if env.ret in ("FULL", "HDRS") else None
    return EventEnvelope(sender=env.sender, envid=env.envid, ret=ret,  # type: ignore[arg-type]
                         notify=notify, arrival_date=env.received_at)  # type: ignore[arg-type]


def events_for(
    job: Job, v: Verdict, attempt: int, envelope: EventEnvelope | None = None
) -> list[tuple[str, Event]]:
    """(routing key, event) pairs to publish for a recorded verdict.

    ``attempt`` is the recipient's ``attempts`` after recording (names the event).
    """
    now = datetime.now(UTC)
    env = envelope or envelope_of(job)
    out: list[tuple[str, Event]] = []

    def recipient(action: str, status: str, output: str, diagnostic: str) -> EventRecipient:
        until = None
        if action == "delayed" and v.will_retry_until_s is not None:
            until = job.arrival + timedelta(seconds=v.will_retry_until_s)
        return EventRecipient(
            address=job.recipient, orcpt=job.orcpt, action=action,  # type: ignore[arg-type]
            status=status, diagnostic=diagnostic, last_attempt=now, will_retry_until=until,
            program=v.program, exit_status=v.exit_status, signal=v.signal, timed_out=v.timed_out,
            output_excerpt=output,
        )

    def event(kind: str, rcpt: EventRecipient, notice: Notice | None = None) -> Event:
        return Event(kind=kind, event_id=event_id(job.job_id, attempt, kind),  # type: ignore[arg-type]
                     message_id=job.message_id, occurred_at=now, envelope=env,
                     recipients=[rcpt], notice=notice)

    if v.kind == "bounced":
        assert v.status is not None
        out.append(("bounce", event("bounce", recipient("failed", v.status, v.dsn_output, v.diagnostic))))
        if v.notice is not None:
            detail = v.notice_detail or v.diagnostic
            notice = Notice(reason=v.notice, account=v.account, detail=detail)
            full = recipient("failed", v.status, v.output, v.notice_detail or v.diagnostic)
            out.append(("admin_notice", event("admin_notice", full, notice)))
    elif v.kind == "delivered":
        if "SUCCESS" in job.notify:
            out.append(("delivered", event("delivered", recipient("delivered", "2.0.0", "", v.diagnostic))))
    if v.delay_warning and v.kind in ("suspended", "deferred"):
        status = v.status if v.status and v.status.startswith("4.") else "4.0.0"
        rcpt = recipient("delayed", status, v.dsn_output, v.diagnostic)
        # one delayed warning per job, whatever attempt it happened at
        ev = Event(kind="delayed", event_id=event_id(job.job_id, -1, "delayed"),
                   message_id=job.message_id, occurred_at=now, envelope=env, recipients=[rcpt])
        out.append(("delayed", ev))
    return out


_RE_CACHE: dict[FailureKind, re.Pattern[str]] = {}


def _template_re(kind: FailureKind) -> re.Pattern[str]:
    if kind not in _RE_CACHE:
        parts = re.split(r"\{[a-z]+\}", DIAGNOSTICS[kind])
        _RE_CACHE[kind] = re.compile("^" + ".*".join(re.escape(p) for p in parts) + "$", re.S)
    return _RE_CACHE[kind]


def rederive(snap: RecipientSnapshot) -> Verdict:
    """The verdict behind a recorded final outcome, to announce it again after a crash."""
    run = snap.last_run or {}
    diag = snap.diagnostic or ""
    kind = "delivered" if snap.state == "delivered" else "bounced"
    v = Verdict(kind=kind, status=snap.status, diagnostic=diag)  # type: ignore[arg-type]
    if kind == "delivered":
        return v
    for fk in DIAGNOSTICS:
        if _template_re(fk).match(diag):
            v.failure = fk
            break
    else:
        if diag.startswith("program "):
            v.failure = FailureKind.PROGRAM_EXIT
    if diag.startswith("program ") or v.failure is FailureKind.UNRESOLVED_PROGRAM:
        v.program = run.get("program")
        v.exit_status = run.get("exit_status")
        v.signal = run.get("signal")
        v.timed_out = bool(run.get("timed_out"))
        v.output = run.get("output_excerpt") or ""
    v.notice_detail = diag
    return v


async def announce_final(pub: Publisher, job: Job, snap: RecipientSnapshot) -> int:
    """Publish (again) the events of a recorded final outcome; returns how many.

    The ids are those of the original events (same job, attempt and kind), so an event
    that had gone out before is dropped by the notifier's ``seen_events``.
    """
    if snap.state not in FINAL_STATES:
        return 0
    pairs = events_for(job, rederive(snap), snap.attempts)
    for key, event in pairs:
        await pub.event(key, event)
    return len(pairs)

