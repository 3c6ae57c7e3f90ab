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
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import orjson
from aio_pika.abc import AbstractIncomingMessage
from pydantic import ValidationError

from services.notifier import metrics, repo, rules
from services.notifier.aggregate import Aggregator, Buffered, Key, store_with_retry
from services.notifier.dsn import (
    MAX_RETURNED_HEADER_BYTES,
    render_admin_notice,
    render_dsn_bytes,
    to_bytes,
)
from services.notifier.notices import NoticeLimiter, annotate_suppressed, notice_key
from services.notifier.policy_client import PolicyClient
from shared.db import session_scope
from shared.schemas import Event, EventRef
from shared.settings import Settings

log = logging.getLogger("mailexec.notifier.consumer")

# Buffered events are unacked for the aggregation window: at a bounce storm's rate
# (600/s) and the default 2 s window, the buffer needs ~1200 of them before windows have
# to close early. The rest of the prefetch covers events being stored.
PREFETCH = 2000
BUFFER_MAX = PREFETCH * 3 // 4
RENDER_SLICE = 16  # DSNs rendered between two looks at the event loop
_HEAD_SLACK = 4096


def _describe_invalid(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors()[:5]:
            loc = ".".join(str(p) for p in err.get("loc", ()))
            parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
        return "; ".join(parts)
    return str(exc)[:500]


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
    def __init__(self, settings: Settings, policy: PolicyClient, on_stored: Callable[[], None]) -> None:
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
            await store_with_retry([item], self._store_notice, self._dead_letter)
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
                    (self._drop_warned(event, reports.get(event.message_id, [])), events)
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
                )
                stored.append((row, event))
                stored_events.update(e.event_id for e in events)
            await repo.insert_notifications(session, [row for row, _ in stored])
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
        for item in items:
            result = "stored" if item.event.event_id in stored_events else "duplicate_or_covered"
            metrics.EVENTS.labels(kind=item.event.kind, result=result).inc()
            await settle(item.message, ack=True)

    @staticmethod
    def _drop_warned(event: Event, earlier_reports: list[bytes]) -> Event:
        """Delay warnings: once per recipient per ``delay_warning_after_s`` (the reports
        passed are that message's delay warnings written within that time)."""
        warned: set[str] = set()
        for content in earlier_reports:
            warned |= rules.reported_recipients(content)
        return rules.without_recipients(event, warned) if warned else event

    async def _store_notice(self, items: list[Buffered]) -> None:
        (item,) = items
        event = item.event
        policy = await self._policy.get()
        now = datetime.now(UTC)
        key = notice_key(event)
        async with self._notice_lock:
            decision = None
            nid = None
            async with session_scope() as session:
                if await repo.mark_seen(session, [event.event_id]):
                    decision = self._limiter.decide(key, now)
                    if decision.send:
                        head = None
                        if event.message_id is not None:
                            head = await repo.load_original(
                                session, event.message_id, MAX_RETURNED_HEADER_BYTES + _HEAD_SLACK
                            )
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
            if decision is not None:
                self._limiter.record(key, decision, now)
        extra = {"event_id": str(event.event_id), "message_id": str(event.message_id),
                 "reason": key[1], "account": key[0], "program": key[2]}
        if nid is not None:
            metrics.DSNS.labels(kind="admin_notice", state="pending").inc()
            metrics.EVENTS.labels(kind="admin_notice", result="stored").inc()
            log.info("postmaster notice queued", extra={**extra, "notification_id": str(nid)})
            self._on_stored()
        elif decision is not None:
            metrics.EVENTS.labels(kind="admin_notice", result="rate_limited").inc()
            log.info("postmaster notice rate-limited", extra={**extra, "suppressed": decision.suppressed})
        else:
            metrics.EVENTS.labels(kind="admin_notice", result="duplicate").inc()
        await settle(item.message, ack=True)
