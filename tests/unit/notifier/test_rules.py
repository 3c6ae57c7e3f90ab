"""Which events become a DSN (RFC 3461 §4.1, SPEC §4), and how a window's events merge."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.notifier import rules
from tests.unit.notifier.builders import event, recipient


@pytest.mark.parametrize(("kind", "sender", "notify", "reason"), [
    ("bounce", "alice@example.net", ["FAILURE"], None),
    ("bounce", "alice@example.net", ["FAILURE", "DELAY"], None),
    ("delayed", "alice@example.net", ["DELAY"], None),
    ("delivered", "alice@example.net", ["SUCCESS"], None),
    ("bounce", "", ["FAILURE"], "null_sender"),              # never bounce a bounce
    ("delayed", "", ["DELAY"], "null_sender"),
    ("bounce", "alice@example.net", ["NEVER"], "notify_never"),
    ("bounce", "alice@example.net", ["DELAY"], "notify_without_failure"),
    ("delayed", "alice@example.net", ["FAILURE"], "notify_without_delay"),
    ("delivered", "alice@example.net", ["FAILURE", "DELAY"], "notify_without_success"),
])
def test_a_dsn_only_when_notify_asks_and_never_to_the_null_sender(
    kind: str, sender: str, notify: list[str], reason: str | None
) -> None:
    assert rules.skip_reason(event(kind, sender=sender, notify=notify)) == reason


def test_one_dsn_lists_every_recipient_of_the_window_latest_report_winning() -> None:
    t0 = datetime.now(UTC)
    a_old = recipient("a@example.org", status="5.3.0", at=t0)
    a_new = recipient("A@example.org", status="5.1.1", at=t0 + timedelta(seconds=1))
    b = recipient("b@example.org")
    e1 = event(recipients=[a_old], at=t0)
    e2 = event(message_id=e1.message_id, recipients=[b], at=t0 + timedelta(seconds=2))
    e3 = event(message_id=e1.message_id, recipients=[a_new], at=t0 + timedelta(seconds=1))
    merged = rules.merge([e2, e1, e3])
    assert [(r.address, r.status) for r in merged.recipients] == [
        ("A@example.org", "5.1.1"), ("b@example.org", "5.3.0")]
    assert merged.occurred_at == t0 + timedelta(seconds=2)
    assert merged.envelope == e1.envelope and merged.message_id == e1.message_id


def test_recipients_already_warned_are_left_out() -> None:
    ev = event("delayed", recipients=[recipient("a@example.org", "delayed"),
                                      recipient("B@example.org", "delayed")])
    rest = rules.without_recipients(ev, {"b@example.org"})
    assert [r.address for r in rest.recipients] == ["a@example.org"]


def test_the_recipients_a_stored_dsn_reported() -> None:
    dsn = (b"Content-Type: multipart/report; report-type=delivery-status; boundary=XX\r\n\r\n"
           b"--XX\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
           b"--XX\r\nContent-Type: message/delivery-status\r\n\r\n"
           b"Reporting-MTA: dns; mx.test.example\r\n\r\n"
           b"Final-Recipient: rfc822; A@Example.org\r\nAction: delayed\r\nStatus: 4.3.0\r\n\r\n"
           b"Final-Recipient: rfc822; b@example.org\r\nAction: delayed\r\nStatus: 4.3.0\r\n\r\n"
           b"--XX--\r\n")
    assert rules.reported_recipients(dsn) == {"a@example.org", "b@example.org"}
    assert rules.reported_recipients(b"Subject: plain\r\n\r\nno report\r\n") == set()
