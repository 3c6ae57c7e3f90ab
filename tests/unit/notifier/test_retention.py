"""What the notifier's retention keeps without the content: how long, and the recipients a
DSN reported (read back exactly as they were from the content)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from services.notifier.dsn import render_dsn_bytes
from services.notifier.retention import windows
from services.notifier.rules import reported_field, reported_recipients
from shared.schemas import Event, EventEnvelope, EventRecipient

NOW = datetime(2026, 12, 6, 5, 0, tzinfo=UTC)


def test_records_are_kept_the_retention_and_delay_warnings_their_window() -> None:
    keep = windows(30, 14400)
    assert keep.notifications_s == keep.seen_events_s == 30 * 86400
    # a delay warning's record must outlive delay_warning_after_s, or it repeats
    longer = windows(1, 3 * 86400)
    assert (longer.notifications_s, longer.seen_events_s) == (3 * 86400, 86400)


def test_a_test_install_may_keep_records_seconds_instead_of_days(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MAILEXEC_RECORD_RETENTION_S (make soak) replaces record_retention_days, for both
    purgers (shared.retention_metrics.record_keep_s); unset, the days count."""
    from shared.retention_metrics import record_keep_s
    from shared.settings import get_settings

    monkeypatch.setenv("MAILEXEC_RECORD_RETENTION_S", "120")
    get_settings.cache_clear()
    try:
        assert record_keep_s(30) == 120.0
        assert windows(30, 60).seen_events_s == 120.0
        assert windows(30, 14400).notifications_s == 14400  # still outlives the warning
    finally:
        monkeypatch.delenv("MAILEXEC_RECORD_RETENTION_S")
        get_settings.cache_clear()
    assert record_keep_s(30) == 30 * 86400


@pytest.mark.parametrize("addresses", [
    ["bob@example.org"],
    ["Bob.Smith@Example.ORG", "carol@example.org"],
    ["jörg@bücher.example", '"a,b"@example.org'],  # SMTPUTF8; a comma in a quoted local part
])
def test_the_reported_column_is_what_the_content_says(addresses: list[str]) -> None:
    event = Event(
        kind="bounce", event_id=uuid.uuid4(), message_id=uuid.uuid4(), occurred_at=NOW,
        envelope=EventEnvelope(sender="alice@example.net", arrival_date=NOW),
        recipients=[EventRecipient(address=a, action="failed", status="5.3.0", last_attempt=NOW)
                    for a in addresses])
    content = render_dsn_bytes(event, None, reporting_mta="mx.example.org",
                               max_returned_body_bytes=1000, include_output=True, now=NOW)
    assert reported_recipients(content) == {reported_field(a) for a in addresses}
