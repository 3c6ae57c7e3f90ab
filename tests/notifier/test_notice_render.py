"""Postmaster notices (services/notifier/notice_render.py): what the postmaster reads,
parsed back. Their exact bytes are pinned by the golden files (tests/notifier/test_dsn.py).
"""

from __future__ import annotations

import copy
from email.message import EmailMessage

import pytest

from services.notifier.notice_render import render_admin_notice
from shared.schemas import Event
from tests.notifier.test_dsn import (
    HOST,
    NOTICE,
    NOW,
    ORIGINAL,
    _rcpt,
    _undeliverable,
    assert_wire_safe,
    flat,
    make_event,
    parse,
    parts,
)


def _notice(event: Event, headers: bytes | None = ORIGINAL) -> EmailMessage:
    return parse(
        render_admin_notice(
            event, headers, postmaster="postmaster@example.org", reporting_mta=HOST, now=NOW
        )
    )


def test_admin_notice_program_failed() -> None:
    long_output = "".join(f"line {i}\n" for i in range(200)) + "SECRET-OUTPUT-LINE\n"
    event = copy.deepcopy(NOTICE)
    event = event.model_copy(
        update={"recipients": [event.recipients[0].model_copy(update={"output_excerpt": long_output})]}
    )
    notice = _notice(event)
    assert str(notice["Subject"]) == (
        "mailexec: program delivery failed for bob@example.org (mymail exit 1)"
    )
    assert notice["To"].addresses[0].addr_spec == "postmaster@example.org"
    assert notice["Auto-Submitted"] == "auto-generated"
    assert notice["X-Mailexec-Notice"] == "program_failed"
    body, headers = parts(notice)
    text = body.get_content()
    for needle in (
        "bob@example.org",
        "Program:      mymail",
        "exited with status 1",
        "00000000-0000-4000-8000-00000000a001",
        "| line 0",
        "| line 199",
        "| SECRET-OUTPUT-LINE",  # full output, whatever dsn_include_output says
        "program_failed",
    ):
        assert needle in text, needle
    assert headers.get_content_type() == "text/rfc822-headers"
    assert "Message-ID: <orig-1@example.net>" in headers.get_payload()


@pytest.mark.parametrize(
    ("reason", "subject_part", "advice"),
    [
        ("disabled", "program delivery disabled", "PUT /v1/programs/NAME or mailexec programs add"),
        ("unresolved_program", "program mymail could not be resolved", "absolute path"),
        ("bad_shell", "invalid login shell", "valid_shells"),
        ("root_without_safe_user", "no safe user", "safe_user"),
        ("poison", "failed repeatedly", "executor logs"),
        ("corrupt", "corrupt delivery job", "resubmitted"),
    ],
)
def test_admin_notice_reasons(reason: str, subject_part: str, advice: str) -> None:
    rcpt = _rcpt("bob@example.org", exit_status=None, output_excerpt="", diagnostic=reason)
    event = make_event("admin_notice", [rcpt], notice={"reason": reason, "detail": "d"})
    notice = _notice(event, None)
    assert subject_part in str(notice["Subject"])
    assert advice in flat(parts(notice)[0].get_content())
    assert len(parts(notice)) == 1  # no headers given, none attached


def test_corrupt_notice_without_message_or_recipients() -> None:
    event = Event.model_validate(
        {
            **make_event().model_dump(mode="json"),
            "kind": "admin_notice",
            "message_id": None,
            "recipients": [],
            "notice": {"reason": "corrupt", "account": None, "detail": "job body: b'{garbage'"},
        }
    )
    notice = _notice(event, b"\x00\xff")
    assert str(notice["Subject"]) == "mailexec: corrupt delivery job discarded"
    assert "Message id:   unknown" in parts(notice)[0].get_content()


def test_undeliverable_dsn_notice() -> None:
    notice = parse(_undeliverable())
    assert str(notice["Subject"]) == (
        "mailexec: undeliverable delivery status notification to alice@example.net"
    )
    assert notice["To"].addresses[0].addr_spec == "postmaster@example.org"
    text, attached = parts(notice)
    assert "550 5.1.1 <alice@example.net>: Recipient address rejected" in text.get_content()
    assert "will not be retried" in flat(text.get_content())
    assert attached.get_content_type() == "message/rfc822"
    inner = attached.get_payload()[0]
    assert str(inner["Subject"]) == "Undelivered Mail Returned to Sender"


def test_admin_notice_subject_cannot_be_injected() -> None:
    event = make_event(
        "admin_notice",
        [_rcpt("bob@example.org", program="x\r\nBcc: evil@example.com")],
        notice={"reason": "program_failed", "account": "bob\r\nBcc: e@x", "detail": "\r\nBcc: e"},
    )
    notice = render_admin_notice(
        event, ORIGINAL, postmaster="postmaster@example.org", reporting_mta=HOST, now=NOW
    )
    assert_wire_safe(notice)
    assert "Bcc" not in parse(notice)
