"""Dead-lettered jobs become bounces and postmaster notices, never silent drops."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import orjson

from services.executor import dead
from services.executor.repo import MessageEnvelope
from shared.status import NoticeReason
from tests.unit.executor.builders import job, snapshot

NOW = datetime.now(UTC)


def test_a_poison_job_bounces_5_3_0_and_tells_the_postmaster() -> None:
    j = job()
    status, diag = dead.poison_outcome("delivery_limit")
    assert status == "5.3.0"
    assert diag == ("delivery job failed repeatedly and was given up: dead-lettered "
                    "(delivery_limit) after repeated delivery failures")
    (k1, bounce), (k2, notice) = dead.poison_events(j, status, diag, NOW)
    assert (k1, k2) == ("bounce", "admin_notice")
    r = bounce.recipients[0]
    assert (r.address, r.action, r.status, r.diagnostic) == (j.recipient, "failed", "5.3.0", diag)
    assert bounce.envelope.sender == j.sender and bounce.message_id == j.message_id
    assert notice.notice is not None
    assert (notice.notice.reason, notice.notice.account) == (NoticeReason.POISON, j.recipient)


def test_a_poison_job_announced_twice_has_the_same_event_ids() -> None:
    j = job()
    status, diag = dead.poison_outcome("delivery_limit")
    first = [e.event_id for _, e in dead.poison_events(j, status, diag, NOW)]
    again = [e.event_id for _, e in dead.poison_events(j, status, diag, datetime.now(UTC))]
    assert first == again


def test_the_death_reason_comes_from_x_death() -> None:
    assert dead._death_reason({"x-death": [{"reason": b"delivery_limit"}]}) == "delivery_limit"
    assert dead._death_reason({"x-death": [{"reason": "rejected"}]}) == "rejected"
    assert dead._death_reason({}) == "unknown"
    assert dead._death_reason({"x-death": "junk"}) == "unknown"


def test_a_corrupt_job_whose_row_is_found_bounces_its_recipient_5_3_0() -> None:
    j = job(notify=["FAILURE"])
    snap = snapshot(j, state="running", status=None, diagnostic=None, attempts=0)
    env = MessageEnvelope(message_id=j.message_id, sender="bob@example.net", envid="ENV1",
                          ret="HDRS", notify=["FAILURE", "DELAY"], size=10, received_at=NOW)
    body = orjson.dumps({"job_id": str(j.job_id), "recipient": 42})
    report = dead.corrupt_report(body, "recipient: not a string", "rejected", snap, env, NOW)
    assert report.status == "5.3.0"
    assert report.diagnostic == "delivery job could not be parsed: recipient: not a string"
    assert report.bounce is not None
    r = report.bounce.recipients[0]
    assert (r.address, r.status, r.action) == (j.recipient, "5.3.0", "failed")
    assert report.bounce.envelope.sender == "bob@example.net"  # read back from the message row
    assert report.bounce.envelope.envid == "ENV1"
    notice = report.notice.notice
    assert notice is not None and notice.reason is NoticeReason.CORRUPT
    assert notice.account == j.recipient
    assert "(dead-letter reason rejected)" in notice.detail and "body starts" in notice.detail
    assert report.notice.message_id == j.message_id


def test_a_corrupt_job_nobody_can_be_found_for_still_tells_the_postmaster() -> None:
    report = dead.corrupt_report(b"\xff not json", "invalid JSON", "rejected", None, None, NOW)
    assert report.bounce is None
    assert report.notice.kind == "admin_notice" and report.notice.recipients == []
    assert report.notice.message_id is None and report.notice.envelope.sender == ""
    assert report.notice.notice is not None and report.notice.notice.account is None


def test_a_corrupt_job_with_a_readable_message_id_names_it() -> None:
    mid = uuid.uuid4()
    body = orjson.dumps({"message_id": str(mid), "job_id": "not-a-uuid"})
    report = dead.corrupt_report(body, "bad", "rejected", None, None, NOW)
    assert report.notice.message_id == mid
