"""The DSN hand-over rule (shared/notify.py): which announced events keep a message's
body until the notifier has handled them — the same rule the notifier sends DSNs by."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from services.executor import chain, worker
from services.executor.events import events_for
from services.executor.verdict import Verdict
from services.notifier.consumer import pending_handled
from shared.notify import pending_kinds, reads_original, should_send_dsn
from shared.schemas import Event, EventEnvelope, EventRecipient, Notice
from shared.status import NoticeReason
from tests.unit.executor.builders import account, job, run_row

NOW = datetime(2026, 12, 6, 5, 0, tzinfo=UTC)
ACTIONS = {"bounce": "failed", "delayed": "delayed", "delivered": "delivered",
           "admin_notice": "failed"}


def event(kind: str, *, sender: str = "alice@example.net", notify: list[str] | None = None,
          message_id: uuid.UUID | None = None, recipients: int = 1) -> Event:
    status = {"bounce": "5.3.0", "delayed": "4.3.0", "delivered": "2.0.0",
              "admin_notice": "5.3.0"}[kind]
    return Event(
        kind=kind, event_id=uuid.uuid4(),  # type: ignore[arg-type]
        message_id=message_id if message_id is not None or kind == "admin_notice"
        else uuid.uuid4(),
        occurred_at=NOW,
        envelope=EventEnvelope(sender=sender, notify=notify or ["FAILURE", "DELAY"],  # type: ignore[arg-type]
                               arrival_date=NOW),
        recipients=[EventRecipient(address=f"r{i}@example.org", action=ACTIONS[kind],  # type: ignore[arg-type]
                                   status=status, last_attempt=NOW) for i in range(recipients)],
        notice=Notice(reason=NoticeReason.PROGRAM_FAILED, account="r0@example.org")
        if kind == "admin_notice" else None,
    )


@pytest.mark.parametrize(("kind", "sender", "notify", "reads"), [
    ("bounce", "alice@example.net", ["FAILURE", "DELAY"], True),       # the DSN returns it
    ("bounce", "", ["FAILURE", "DELAY"], False),                       # never a DSN to <>
    ("bounce", "alice@example.net", ["NEVER"], False),
    ("bounce", "alice@example.net", ["DELAY"], False),                 # no FAILURE asked for
    ("delayed", "alice@example.net", ["FAILURE", "DELAY"], True),      # headers at least
    ("delayed", "alice@example.net", ["FAILURE"], False),
    ("delivered", "alice@example.net", ["FAILURE", "DELAY"], False),   # no SUCCESS: no DSN
    ("delivered", "alice@example.net", ["SUCCESS"], True),
])
def test_a_body_waits_exactly_for_the_dsns_the_notifier_will_send(
        kind: str, sender: str, notify: list[str], reads: bool) -> None:
    e = event(kind, sender=sender, notify=notify)
    assert reads_original(e) is reads
    assert reads_original(e) is should_send_dsn(e)  # one rule, not two that could drift
    assert pending_kinds([e]) == ([kind] if reads else [])


def test_a_postmaster_notice_quotes_the_headers_unless_it_names_no_message() -> None:
    assert reads_original(event("admin_notice", message_id=uuid.uuid4()))
    assert reads_original(event("admin_notice", message_id=uuid.uuid4(), sender=""))
    assert not reads_original(event("admin_notice"))  # a corrupt job of no known message
    assert not reads_original(event("admin_notice", message_id=uuid.uuid4(), recipients=0))


def test_pending_kinds_are_each_named_once_in_order() -> None:
    mid = uuid.uuid4()
    events = [event("bounce"), event("admin_notice", message_id=mid), event("bounce"),
              event("delivered")]
    assert pending_kinds(events) == ["admin_notice", "bounce"]


def test_the_executor_records_what_it_announces_in_the_same_update() -> None:
    """worker._conclude: the events are built first, and the row update that makes the
    recipient final carries the kinds of those that will read the body."""
    j = job()
    failed = Verdict(kind="bounced", status="5.3.0", diagnostic="program x exited with status 1",
                     failure=None)
    events = [e for _, e in events_for(j, failed, 1)]
    assert worker.recipient_update(j, failed, events).notifier_pending == ["bounce"]
    delivered = chain.delivered(account(["a"]), ["a"], [run_row("a")])
    events = [e for _, e in events_for(j, delivered, 1)]
    assert events == []  # NOTIFY without SUCCESS: nothing announced, nothing held
    assert worker.recipient_update(j, delivered, events).notifier_pending == []
    never = job(notify=["NEVER"])
    events = [e for _, e in events_for(never, failed, 1)]
    assert [e.kind for e in events] == ["bounce"]  # announced: the notifier decides ...
    assert worker.recipient_update(never, failed, events).notifier_pending == []  # ... no DSN


def test_the_notifier_takes_off_only_what_the_executor_put_on() -> None:
    mid = uuid.uuid4()
    held = event("bounce", message_id=mid, recipients=2)
    not_held = event("bounce", message_id=mid, sender="")
    assert pending_handled([held, not_held]) == [
        (mid, "r0@example.org", "bounce"), (mid, "r1@example.org", "bounce")]
    assert pending_handled([event("admin_notice")]) == []
