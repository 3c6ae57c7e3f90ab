"""Consuming ``notifier.events``: validate, decide, render, write to the outbox, then ack.

- A body that isn't a valid :class:`shared.schemas.Event` (bad JSON, missing fields,
  bad addresses, CR/LF in an address) is rejected without requeue, so the broker
  dead-letters it to ``notifier.dead``; one warning line says why. Nothing in an event
  can crash the consumer.
- ``bounce``/``delayed``/``delivered`` events that want no DSN (null sender, NOTIFY
  rules) are acked at once; the others are aggregated per (message, kind) and become
  one DSN. ``admin_notice`` events become rate-limited postmaster notices.
- An event is acked only after the transaction that records it in
  ``notifier.seen_events`` and stores the notification covering it has committed; a
  redelivered event finds itself in ``seen_events`` and produces nothing again. The
  windows that close together (:mod:`services.notifier.aggregate`) share that
  transaction: one multi-row insert into each table, one DSN rendered per window.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

import orjson
from aio_pika.abc import AbstractIncomingMessage
from pydantic import ValidationError

from services.notifier import metrics, repo, rules
from services.notifier.aggregate import Aggregator, Buffered, Key, store_with_retry
from services.notifier.dsn import render_dsn_bytes
from services.notifier.mime import MAX_RETURNED_HEADER_BYTES, to_bytes
from services.notifier.notice_limits import (
    Decision,
    NoticeKey,
    NoticeLimiter,
    annotate_suppressed,
    notice_key,
)
from services.notifier.notice_render import render_admin_notice
from shared.db import session_scope
from shared.errors import Unavailable
from shared.notify import reads_original
from shared.policy_client import NoticeSettingsReader
from shared.schemas import Event, EventRef
from shared.settings import Settings

log = logging.getLogger("mailexec.notifier.consumer")

# Buffered events are unacked for the aggregation window: at a bounce storm's rate
# (600/s) and the default 2 s window, the buffer needs ~1200 of them before windows have
# to close early. The rest of the prefetch covers events being stored.
PREFETCH = 2000
BUFFER_MAX = PREFETCH * 3 // 4
RENDER_SLICE = 16  # DSNs rendered between two looks at the event loop
NOTICE_BATCH = 256  # postmaster notices stored per transaction at most
_HEAD_SLACK = 4096


def _describe_invalid(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors()[:5]:
            loc = ".".join(str(p) for p in err.get("loc", ()))
            parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
        return "; ".join(parts)
    return str(exc)[:500]


def pending_handled(events: Iterable[Event]) -> list[tuple[uuid.UUID, str, str]]:
    """(message, recipient, kind) of the events whose finalisation left the message's
    body held for them (:func:`shared.notify.reads_original`, the executor's rule): what
    storing them takes off ``mail.recipients.notifier_pending``. Only events seen for
    the first time: a duplicate must not release a body a newer event still needs."""
    return [(e.message_id, r.address, e.kind) for e in events
            if e.message_id is not None and reads_original(e) for r in e.recipients]


async def clear_pending_later(done: list[tuple[uuid.UUID, str, str]]) -> None:
    """:func:`repo.handled` in transactions of its own, after the notifications were
    stored without it (their rows were busy). A few tries; then the flags stay and the
    bodies with them until ingest purges the messages' records."""
    for attempt in range(1, 4):
        try:
            async with session_scope() as session:
                if await repo.handled(session, done):
                    return
        except Unavailable:
            pass
        await asyncio.sleep(0.2 * attempt)
    log.warning("notifications stored, but their messages' bodies stay marked as needed "
                "until the records' retention", extra={"recipients": len(done)})


def _event_ref(body: bytes) -> EventRef:
    try:
        obj = orjson.loads(body)
        return EventRef.model_validate(obj) if isinstance(obj, dict) else EventRef()
    except (orjson.JSONDecodeError, ValidationError):
        return EventRef()


async def settle(message: AbstractIncomingMessage, *, ack: bool) -> None:
    """Ack, or reject to the dead-letter queue. A channel that died meanwhile is not an
    error: the broker redelivers, and ``seen_events`` turns the redelivery into a no-op."""
    try:
        if ack:
            await message.ack()
        else:
            await message.reject(requeue=False)
    except Exception as exc:
        log.warning(
            "could not settle an event with the broker; it will be redelivered",
            extra={"error": f"{type(exc).__name__}: {exc}"[:300], "ack": ack},
        )


class EventConsumer:
    def __init__(self, settings: Settings, policy: NoticeSettingsReader,
                 on_stored: Callable[[], None]) -> None:
        self._settings = settings
        self._policy = policy
        self._on_stored = on_stored
        self.aggregator = Aggregator(
            settings.dsn_aggregate_window_s,
            self._store_dsn,
            self._dead_letter,
            max_items=BUFFER_MAX,
        )
        self._limiter = NoticeLimiter(settings.postmaster_notice_interval_s)
        self._notice_lock = asyncio.Lock()
        # Notices are stored in batches: one transaction per notice, serialised, managed
        # ~20/s here (a commit waits for its WAL flush) — a busy account with a broken
        # program filled the queue with them.
        self._notices: list[Buffered] = []
        self._notice_task: asyncio.Task[None] | None = None

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            event = Event.from_json(message.body)
        except (ValidationError, ValueError) as exc:
            ref = _event_ref(message.body)
            log.warning(
                "malformed event dead-lettered",
                extra={
                    "event_id": ref.event_id,
                    "kind": ref.kind or message.routing_key,
                    "message_id": ref.message_id,
                    "error": _describe_invalid(exc),
                },
            )
            metrics.EVENTS.labels(kind="invalid", result="dead_lettered").inc()
            await settle(message, ack=False)
            return
        item = Buffered(event, message)
        if event.kind == "admin_notice":
            self._notices.append(item)
            if self._notice_task is None or self._notice_task.done():
                self._notice_task = asyncio.create_task(self._drain_notices())
            return
        reason = rules.skip_reason(event)
        if reason is not None:
            log.info(
                "no DSN wanted",
                extra={"event_id": str(event.event_id), "message_id": str(event.message_id),
                       "kind": event.kind, "reason": reason},
            )
            metrics.EVENTS.labels(kind=event.kind, result=reason).inc()
            await settle(message, ack=True)
            return
        self.aggregator.add(item)

    async def _dead_letter(self, item: Buffered, exc: Exception) -> None:
        log.error(
            "event could not be turned into a notification; dead-lettered",
            exc_info=exc,
            extra={"event_id": str(item.event.event_id), "message_id": str(item.event.message_id),
                   "kind": item.event.kind},
        )
        metrics.EVENTS.labels(kind=item.event.kind, result="dead_lettered").inc()
        await settle(item.message, ack=False)

    def _original_limit(self) -> int:
        return self._settings.dsn_max_returned_body_bytes + MAX_RETURNED_HEADER_BYTES + _HEAD_SLACK

    async def _store_dsn(self, items: list[Buffered]) -> None:
        """One DSN per (message, kind) among ``items`` (closed windows, possibly many
        messages), all stored in one transaction with the events marked seen; acked after
        the commit. Windows of the same key that closed one after the other are merged."""
        policy = await self._policy.get()
        now = datetime.now(UTC)
        unique = list({i.event.event_id: i.event for i in items}.values())
        stored: list[tuple[repo.NewNotification, Event]] = []
        stored_events: set[uuid.UUID] = set()
        async with session_scope() as session:
            fresh = await repo.mark_seen(session, [e.event_id for e in unique])
            groups: dict[Key, list[Event]] = {}
            for e in unique:
                if e.event_id in fresh:
                    groups.setdefault((e.message_id, e.kind), []).append(e)
            merged = [(rules.merge(events), events) for events in groups.values()]
            delayed = [e.message_id for e, _ in merged if e.kind == "delayed" and e.message_id]
            if delayed:
                since = now - timedelta(seconds=policy.delay_warning_after_s)
                reports = await repo.delayed_reports_since_many(session, delayed, since)
                merged = [
                    (self._drop_warned(event, reports.get(event.message_id, set())), events)
                    if event.kind == "delayed" and event.message_id else (event, events)
                    for event, events in merged
                ]
            merged = [(event, events) for event, events in merged if event.recipients]
            originals = await repo.load_originals(
                session, [e.message_id for e, _ in merged if e.message_id is not None], self._original_limit()
            )
            for n, (event, events) in enumerate(merged, 1):
                assert event.message_id is not None
                if n % RENDER_SLICE == 0:
                    await asyncio.sleep(0)  # let the sender's replies in between DSNs
                content = render_dsn_bytes(
                    event,
                    originals.get(event.message_id),
                    reporting_mta=self._settings.reporting_mta,
                    max_returned_body_bytes=self._settings.dsn_max_returned_body_bytes,
                    include_output=policy.include_output,
                    now=now,
                )
                row = repo.NewNotification(
                    kind=event.kind,
                    rcpt=event.envelope.sender,
                    content=content,
                    message_id=event.message_id,
                    event_ids=[e.event_id for e in events],
                    reported=[rules.reported_field(r.address) for r in event.recipients],
                )
                stored.append((row, event))
                stored_events.update(e.event_id for e in events)
            await repo.insert_notifications(session, [row for row, _ in stored])
            # rendered (or found not to be wanted after all): these no longer hold the
            # message's body — last, so the recipients' rows are locked only for the commit
            released = pending_handled(e for e in unique if e.event_id in fresh)
            cleared = await repo.handled(session, released)
        for row, event in stored:
            metrics.DSNS.labels(kind=event.kind, state="pending").inc()
            log.info(
                "DSN queued",
                extra={"notification_id": str(row.id), "message_id": str(event.message_id),
                       "kind": event.kind, "recipients": [r.address for r in event.recipients],
                       "events": len(row.event_ids)},
            )
        if stored:
            self._on_stored()
        if not cleared:
            await clear_pending_later(released)
        for item in items:
            result = "stored" if item.event.event_id in stored_events else "duplicate_or_covered"
            metrics.EVENTS.labels(kind=item.event.kind, result=result).inc()
            await settle(item.message, ack=True)

    @staticmethod
    def _drop_warned(event: Event, warned: set[str]) -> Event:
        """Delay warnings: once per recipient per ``delay_warning_after_s`` (``warned``:
        the recipients of that message's delay warnings written within that time)."""
        return rules.without_recipients(event, warned) if warned else event

    async def _drain_notices(self) -> None:
        """Store queued notices, as many per transaction as arrived meanwhile."""
        while self._notices:
            await asyncio.sleep(0)  # notices delivered together join one batch
            batch, self._notices = self._notices[:NOTICE_BATCH], self._notices[NOTICE_BATCH:]
            await store_with_retry(batch, self._store_notice, self._dead_letter)

    async def flush_notices(self) -> None:
        """Wait until the queued notices are stored (graceful shutdown)."""
        if self._notice_task is not None:
            await self._notice_task

    def cancel_notices(self) -> None:
        """Drop unstored notices (the broker redelivers the unacked messages)."""
        if self._notice_task is not None:
            self._notice_task.cancel()
        self._notices = []

    async def _store_notice(self, items: list[Buffered]) -> None:
        """Postmaster notices of ``items`` in one transaction: every event recorded as
        seen, the rate limit decided in order (on a copy of the limiter, adopted only once
        the transaction committed), a notice stored for each one the limit lets through."""
        policy = await self._policy.get()
        now = datetime.now(UTC)
        outcomes: list[tuple[Buffered, NoticeKey, Decision | None, uuid.UUID | None]] = []
        async with self._notice_lock:
            trial = self._limiter.copy()
            async with session_scope() as session:
                fresh = await repo.mark_seen(session, [i.event.event_id for i in items])
                heads: dict[uuid.UUID, bytes | None] = {}
                done: set[uuid.UUID] = set()
                for item in items:
                    event = item.event
                    key = notice_key(event)
                    if event.event_id not in fresh or event.event_id in done:
                        outcomes.append((item, key, None, None))
                        continue
                    done.add(event.event_id)
                    decision = trial.decide(key, now)
                    trial.record(key, decision, now)
                    nid = None
                    if decision.send:
                        head = None
                        if event.message_id is not None:
                            if event.message_id not in heads:
                                heads[event.message_id] = await repo.load_original(
                                    session, event.message_id,
                                    MAX_RETURNED_HEADER_BYTES + _HEAD_SLACK)
                            head = heads[event.message_id]
                        notice = render_admin_notice(
                            event,
                            head,
                            postmaster=policy.postmaster,
                            reporting_mta=self._settings.reporting_mta,
                            now=now,
                        )
                        if decision.suppressed and decision.since is not None:
                            annotate_suppressed(notice, decision.suppressed, decision.since)
                        nid = await repo.insert_notification(
                            session,
                            kind="admin_notice",
                            rcpt=policy.postmaster,
                            content=to_bytes(notice),
                            message_id=event.message_id,
                            event_ids=[event.event_id],
                        )
                    outcomes.append((item, key, decision, nid))
                # stored or rate-limited: these notices no longer hold the message's body
                released = pending_handled(i.event for i in items if i.event.event_id in fresh)
                cleared = await repo.handled(session, released)
            self._limiter = trial  # committed: the decisions stand
        stored = False
        for item, key, outcome, nid in outcomes:
            event = item.event
            extra = {"event_id": str(event.event_id), "message_id": str(event.message_id),
                     "reason": key[1], "account": key[0], "program": key[2]}
            if nid is not None:
                stored = True
                metrics.DSNS.labels(kind="admin_notice", state="pending").inc()
                metrics.EVENTS.labels(kind="admin_notice", result="stored").inc()
                log.info("postmaster notice queued", extra={**extra, "notification_id": str(nid)})
            elif outcome is not None:
                metrics.EVENTS.labels(kind="admin_notice", result="rate_limited").inc()
                log.info("postmaster notice rate-limited",
                         extra={**extra, "suppressed": outcome.suppressed})
            else:
                metrics.EVENTS.labels(kind="admin_notice", result="duplicate").inc()
        if stored:
            self._on_stored()
        if not cleared:
            await clear_pending_later(released)
        for item, *_ in outcomes:
            await settle(item.message, ack=True)
