"""Job and event bodies: round trip through orjson, refuse anything malformed."""

from __future__ import annotations

import base64
import copy
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from shared.schemas import Event, Job

JOB: dict[str, Any] = {
    "v": 1,
    "job_id": "6f1c2a8e-0000-4000-8000-000000000001",
    "message_id": "6f1c2a8e-0000-4000-8000-000000000002",
    "recipient": "user@example.org",
    "orcpt": None,
    "attempt": 0,
    "next_program": 0,
    "sender": "alice@example.net",
    "envid": None,
    "ret": None,
    "notify": ["FAILURE", "DELAY"],
    "arrival": "2026-11-25T20:00:00+00:00",
    "size": 5,
    "body_b64": base64.b64encode(b"hello").decode(),
}

EVENT: dict[str, Any] = {
    "v": 1,
    "kind": "bounce",
    "event_id": "6f1c2a8e-0000-4000-8000-000000000003",
    "message_id": "6f1c2a8e-0000-4000-8000-000000000002",
    "occurred_at": "2026-11-25T20:00:05+00:00",
    "envelope": {
        "sender": "alice@example.net",
        "envid": None,
        "ret": "FULL",
        "notify": ["FAILURE", "DELAY"],
        "arrival_date": "2026-11-25T20:00:00+00:00",
    },
    "recipients": [
        {
            "address": "bob@example.org",
            "orcpt": None,
            "action": "failed",
            "status": "5.3.0",
            "diagnostic": "program mymail exited with status 1: oops\r\nBcc: x@y",
            "last_attempt": "2026-11-25T20:00:04+00:00",
            "will_retry_until": None,
            "program": "mymail",
            "exit_status": 1,
            "signal": None,
            "timed_out": False,
            "output_excerpt": "oops\r\nBcc: x@y\n",
        }
    ],
    "notice": None,
}


def _with(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(base)
    node: Any = data
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[keys[-1]] = value
    return data


def test_job_round_trip_and_inline_body() -> None:
    job = Job.from_json(orjson.dumps(JOB))
    assert job.body() == b"hello"
    assert Job.from_json(job.to_json()) == job
    big = Job.model_validate(_with(JOB, "body_b64", None))
    assert "body_b64" not in orjson.loads(big.to_json())  # absent, not null
    assert big.body() is None


def test_event_round_trip_keeps_free_text() -> None:
    event = Event.from_json(orjson.dumps(EVENT))
    assert Event.from_json(event.to_json()) == event
    assert "\r\n" in event.recipients[0].diagnostic
    assert orjson.loads(event.to_json()).keys() == EVENT.keys()


def test_null_sender_and_naive_dates() -> None:
    data = _with(EVENT, "envelope.sender", "")
    data = _with(data, "occurred_at", "2026-11-25T20:00:05")
    event = Event.model_validate(data)
    assert event.envelope.sender == ""
    assert event.occurred_at.tzinfo is not None


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("recipients.0.address", "bob@example.org\r\nBcc: evil@example.com"),
        ("recipients.0.address", "bob@example.org\n"),
        ("recipients.0.address", "bob\0@example.org"),
        ("recipients.0.address", "bob"),
        ("recipients.0.address", "<bob@example.org>"),
        ("recipients.0.address", "bob smith@example.org"),
        ("recipients.0.address", ""),
        ("recipients.0.orcpt", "rfc822;bob@example.org\r\nX: y"),
        ("envelope.sender", "alice@example.net\r\nBcc: x@y"),
        ("envelope.sender", "<>"),
        ("envelope.envid", "id\r\nBcc: x@y"),
        ("envelope.envid", "x" * 101),
        ("envelope.ret", "BODY"),
        ("envelope.notify", ["NEVER", "FAILURE"]),
        ("envelope.notify", []),
        ("envelope.notify", ["FAILURE", "FAILURE"]),
        ("envelope.notify", ["SOMETIMES"]),
        ("kind", "exploded"),
        ("v", 2),
        ("event_id", "not-a-uuid"),
        ("message_id", None),
        ("recipients", []),
        ("recipients.0.action", "relayed"),
        ("recipients.0.action", "delayed"),  # a bounce carries only failed recipients
        ("recipients.0.status", "5.3"),
        ("recipients.0.status", "6.0.0"),
        ("recipients.0.status", "2.0.0"),  # success status on a failed recipient
        ("recipients.0.status", "5.3.0\r\nX: y"),
        ("recipients.0.exit_status", "1"),
        ("recipients.0.exit_status", 256),
        ("recipients.0.timed_out", "no"),
        ("notice", {"reason": "disabled", "account": None, "detail": ""}),
        ("surprise", 1),
    ],
)
def test_event_rejects(path: str, value: Any) -> None:
    with pytest.raises(ValidationError):
        Event.model_validate(_with(EVENT, path, value))


def test_admin_notice_needs_a_notice_and_may_lack_message_id() -> None:
    data = _with(EVENT, "kind", "admin_notice")
    with pytest.raises(ValidationError):
        Event.model_validate(data)
    data = _with(data, "notice", {"reason": "corrupt", "account": None, "detail": "bad json"})
    data = _with(data, "message_id", None)
    data = _with(data, "recipients", [])
    event = Event.model_validate(data)
    assert event.notice is not None and event.notice.reason == "corrupt"
    with pytest.raises(ValidationError):
        Event.model_validate(_with(data, "notice.reason", "bored"))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("recipient", "user@example.org\r\n"),
        ("sender", "x"),
        ("attempt", -1),
        ("size", "5"),
        ("body_b64", "***"),
        ("ret", "full"),
        ("v", 0),
    ],
)
def test_job_rejects(path: str, value: Any) -> None:
    with pytest.raises(ValidationError):
        Job.model_validate(_with(JOB, path, value))


def test_from_json_rejects_non_json() -> None:
    with pytest.raises(ValueError):
        Event.from_json(b"{nope")
