"""Events as the notifier receives them from the executor (shared.schemas)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from shared.schemas import Event, EventEnvelope, EventRecipient, Notice
from shared.status import NoticeReason

ACTION = {"bounce": "failed", "delayed": "delayed", "delivered": "delivered", "admin_notice": "failed"}
STATUS = {"failed": "5.3.0", "delayed": "4.3.0", "delivered": "2.0.0"}
ARRIVAL = datetime(2026, 12, 5, 11, 0, tzinfo=UTC)  # one message's: the same in all its events


def recipient(address: str = "robin@example.org", kind: str = "bounce", *, program: str | None = None,
              status: str | None = None, at: datetime | None = None) -> EventRecipient:
    action = ACTION[kind]
    until = datetime.now(UTC) + timedelta(days=5) if kind == "delayed" else None
    return EventRecipient(address=address, action=action, status=status or STATUS[action],  # type: ignore[arg-type]
                          diagnostic=f"{action} for {address}", last_attempt=at or datetime.now(UTC),
                          program=program, will_retry_until=until)


def event(kind: str = "bounce", *, message_id: uuid.UUID | None = None, sender: str = "alice@example.net",
          notify: list[str] | None = None, recipients: list[EventRecipient] | None = None,
          at: datetime | None = None, reason: NoticeReason | None = None,
          account: str | None = None) -> Event:
    notice = Notice(reason=reason or NoticeReason.PROGRAM_FAILED, account=account) \
        if kind == "admin_notice" else None
    return Event(kind=kind, event_id=uuid.uuid4(), message_id=message_id or uuid.uuid4(),  # type: ignore[arg-type]
                 occurred_at=at or datetime.now(UTC),
                 envelope=EventEnvelope(sender=sender, notify=notify or ["FAILURE", "DELAY"],  # type: ignore[arg-type]
                                        arrival_date=ARRIVAL),
                 recipients=recipients if recipients is not None else [recipient(kind=kind)],
                 notice=notice)
