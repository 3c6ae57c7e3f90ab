"""DSN and postmaster-notice rendering: golden files, field-by-field parse-back, flufl.bounce.

Golden files (tests/notifier/golden/*.ref, like Postfix's src/bounce/*.ref) are the
oracle of the exact bytes, with a fixed clock and message id, and have one case for each
way a returned original is written (as is, regenerated, or through the whole-message
generator). After an intended change, rewrite them with
``MAILEXEC_UPDATE_GOLDEN=1 pytest tests/notifier/test_dsn.py`` and review the diff.
"""

from __future__ import annotations

import email
import os
import re
import uuid
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from flufl.bounce import scan_message

from services.notifier.dsn import render_dsn_bytes
from services.notifier.mime import to_bytes
from services.notifier.notice_render import render_admin_notice, render_undeliverable_dsn_notice
from shared.notify import should_send_dsn
from shared.schemas import Event, EventEnvelope

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("MAILEXEC_UPDATE_GOLDEN") == "1"
HOST = "mx.example.org"
NOW = datetime(2026, 11, 25, 20, 0, 6, tzinfo=UTC)
MSGID = "<dsn-0001@mx.example.org>"
OUTPUT = "cannot open /var/spool/bob: Permission denied\nSECRET-OUTPUT-LINE\n"

ORIGINAL = (
    b"Return-Path: <alice@example.net>\r\n"
    b"Received: from client.example.net by mx.example.org; Wed, 25 Nov 2026 20:00:00 +0000\r\n"
    b"From: Alice <alice@example.net>\r\n"
    b"To: Bob <bob@example.org>, carol@example.org\r\n"
    b"Subject: quarterly numbers\r\n"
    b"Date: Wed, 25 Nov 2026 19:59:58 +0000\r\n"
    b"Message-ID: <orig-1@example.net>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=us-ascii\r\n"
    b"\r\n"
    b"Hello Bob,\r\n"
    b"\r\n"
    b"here are the numbers.\r\n"
)


def _rcpt(address: str, **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "address": address,
        "orcpt": None,
        "action": "failed",
        "status": "5.3.0",
        "diagnostic": f"program mymail exited with status 1: {OUTPUT}",
        "last_attempt": "2026-11-25T20:00:04+00:00",
        "will_retry_until": None,
        "program": "mymail",
        "exit_status": 1,
        "signal": None,
        "timed_out": False,
        "output_excerpt": OUTPUT,
    }
    base.update(over)
    return base


def make_event(kind: str = "bounce", recipients: list[dict[str, Any]] | None = None,
               notice: dict[str, Any] | None = None, **envelope: Any) -> Event:
    env: dict[str, Any] = {
        "sender": "alice@example.net",
        "envid": None,
        "ret": None,
        "notify": ["FAILURE", "DELAY"],
        "arrival_date": "2026-11-25T20:00:00+00:00",
    }
    env.update(envelope)
    return Event.model_validate(
        {
            "v": 1,
            "kind": kind,
            "event_id": "00000000-0000-4000-8000-00000000e001",
            "message_id": "00000000-0000-4000-8000-00000000a001",
            "occurred_at": "2026-11-25T20:00:05+00:00",
            "envelope": env,
            "recipients": recipients if recipients is not None else [_rcpt("bob@example.org")],
            "notice": notice,
        }
    )


def render(event: Event, original: bytes | None = ORIGINAL, **kw: Any) -> bytes:
    kw.setdefault("reporting_mta", HOST)
    kw.setdefault("max_returned_body_bytes", 65536)
    kw.setdefault("include_output", True)
    return render_dsn_bytes(event, original, now=NOW, message_id=MSGID, **kw)


def wire(message: bytes | EmailMessage) -> bytes:
    """The octets sent: a DSN is rendered as bytes, a notice as a message to serialise."""
    return message if isinstance(message, bytes) else to_bytes(message)


def parse(message: bytes | EmailMessage) -> EmailMessage:
    """Parse the serialised bytes back, as a receiving mail client would."""
    parsed = email.message_from_bytes(wire(message), policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def parts(message: EmailMessage) -> list[Any]:
    """The top-level MIME parts (``Any``: typeshed types payloads as plain ``Message``)."""
    payload = message.get_payload()
    assert isinstance(payload, list)
    return payload


def status_blocks(message: EmailMessage) -> list[Any]:
    report = parts(message)[1]
    assert report.get_content_type() == "message/delivery-status"
    blocks = report.get_payload()
    assert isinstance(blocks, list)
    return blocks


def flat(text: str) -> str:
    """Text with its line wrapping undone, for phrase checks."""
    return " ".join(text.split())


def check_golden(name: str, message: bytes | EmailMessage) -> None:
    path = GOLDEN / f"{name}.ref"
    got = wire(message).replace(b"\r\n", b"\n")  # CRLF only (assert_wire_safe): no ambiguity
    if UPDATE:
        path.write_bytes(got)
    assert path.exists(), f"{path} missing: run with MAILEXEC_UPDATE_GOLDEN=1"
    assert got == path.read_bytes(), f"{name} differs from {path}"


def assert_wire_safe(message: bytes | EmailMessage) -> None:
    raw = wire(message)
    assert raw.isascii(), "DSN must be 7-bit"
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    # serialising the parsed message again changes nothing
    again = email.message_from_bytes(raw, policy=policy.SMTP)
    assert isinstance(again, EmailMessage)
    assert to_bytes(again) == raw


# --- golden files -------------------------------------------------------------------------

BOUNCE_TWO = make_event(
    recipients=[
        _rcpt("bob@example.org", orcpt="rfc822;Bob@Example.ORG"),
        _rcpt(
            "carol@example.org",
            status="5.1.1",
            diagnostic="no such account",
            program=None,
            exit_status=None,
            output_excerpt="",
        ),
    ],
    envid="QQ314159",
)
DELAYED = make_event(
    "delayed",
    [
        _rcpt(
            "bob@example.org",
            action="delayed",
            status="4.3.0",
            diagnostic="program delivery is suspended by the administrator",
            program=None,
            exit_status=None,
            output_excerpt="",
            will_retry_until="2026-11-30T20:00:00+00:00",
        )
    ],
)
DELIVERED = make_event(
    "delivered",
    [
        _rcpt(
            "bob@example.org",
            action="delivered",
            status="2.0.0",
            diagnostic="",
            exit_status=0,
            output_excerpt="",
        )
    ],
    notify=["SUCCESS"],
)
SIGNALLED = make_event(
    recipients=[
        _rcpt("bob@example.org", exit_status=None, signal=9, diagnostic="killed"),
        _rcpt("dave@example.org", exit_status=None, timed_out=True, output_excerpt=""),
    ],
    ret="HDRS",
)
NOTICE = make_event(
    "admin_notice",
    [_rcpt("bob@example.org")],
    notice={"reason": "program_failed", "account": "bob@example.org", "detail": "chain stopped"},
)
DISABLED = make_event(
    "admin_notice",
    [
        _rcpt(
            "bob@example.org",
            diagnostic="program delivery is disabled",
            program=None,
            exit_status=None,
            output_excerpt="",
        )
    ],
    notice={"reason": "disabled", "account": "bob@example.org", "detail": ""},
)


def _undeliverable() -> EmailMessage:
    return render_undeliverable_dsn_notice(
        render(BOUNCE_TWO),
        smtp_error="550 5.1.1 <alice@example.net>: Recipient address rejected",
        postmaster="postmaster@example.org",
        reporting_mta=HOST,
        now=NOW,
        message_id="<notice-0002@mx.example.org>",
    )


MULTIPART = (
    b"From: Alice <alice@example.net>\r\n"
    b"To: bob@example.org\r\n"
    b"Subject: with attachment\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="XYZ"\r\n'
    b"\r\n"
    b"preamble text\r\n"
    b"--XYZ\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"hello\r\n"
    b"--XYZ\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"AAECAwQFBgcICQ==\r\n"
    b"--XYZ--\r\n"
    b"epilogue\r\n"
)

GOLDEN_CASES: dict[str, Any] = {
    "bounce_two_recipients": lambda: render(BOUNCE_TWO),
    "bounce_no_output": lambda: render(BOUNCE_TWO, include_output=False),
    "bounce_signal_timeout_hdrs": lambda: render(SIGNALLED),
    "bounce_truncated_body": lambda: render(
        make_event(ret="FULL"), ORIGINAL + b"more text\r\n" * 100, max_returned_body_bytes=60
    ),
    "bounce_malformed_original": lambda: render(make_event(), b"no headers at all\n\xff\x00\n"),
    # a MIME original is regenerated the way email's generator writes it ...
    "bounce_multipart_original": lambda: render(make_event(ret="FULL"), MULTIPART),
    "bounce_original_headers_unspaced": lambda: render(
        make_event(ret="FULL"), b"Subject:x\r\nFrom:  a@b.c\r\nX-Empty:\r\n\r\nbody\r\n"
    ),
    # ... and one the parser finds defects in goes through the whole-message generator
    "bounce_unclosed_multipart_original": lambda: render(
        make_event(ret="FULL"), MULTIPART.split(b"--XYZ--")[0]
    ),
    "delayed": lambda: render(DELAYED),
    "delivered": lambda: render(DELIVERED),
    "admin_notice_program_failed": lambda: render_admin_notice(
        NOTICE, ORIGINAL, postmaster="postmaster@example.org", reporting_mta=HOST, now=NOW,
        message_id="<notice-0001@mx.example.org>",
    ),
    "admin_notice_disabled": lambda: render_admin_notice(
        DISABLED, ORIGINAL, postmaster="postmaster@example.org", reporting_mta=HOST, now=NOW,
        message_id="<notice-0003@mx.example.org>",
    ),
    "undeliverable_dsn_notice": _undeliverable,
}


@pytest.mark.parametrize("name", sorted(GOLDEN_CASES))
def test_golden(name: str) -> None:
    message = GOLDEN_CASES[name]()
    assert_wire_safe(message)
    check_golden(name, message)


def test_no_stale_golden_files() -> None:
    assert {p.stem for p in GOLDEN.glob("*.ref")} == set(GOLDEN_CASES)


# --- structure, field by field ------------------------------------------------------------


def test_bounce_headers_and_structure() -> None:
    dsn = parse(render(BOUNCE_TWO))
    assert dsn["From"].addresses[0].addr_spec == f"MAILER-DAEMON@{HOST}"
    assert dsn["From"].addresses[0].display_name == "Mail Delivery System"
    assert dsn["To"].addresses[0].addr_spec == "alice@example.net"
    assert str(dsn["Subject"]) == "Undelivered Mail Returned to Sender"
    assert dsn["Message-ID"] == MSGID
    assert dsn["Auto-Submitted"] == "auto-replied"
    assert dsn["MIME-Version"] == "1.0"
    assert email.utils.parsedate_to_datetime(str(dsn["Date"])) == NOW
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    types = [p.get_content_type() for p in parts(dsn)]
    assert types == ["text/plain", "message/delivery-status", "message/rfc822"]
    assert not dsn.defects


def test_delivery_status_fields() -> None:
    per_message, bob, carol = status_blocks(parse(render(BOUNCE_TWO)))
    assert per_message["Reporting-MTA"] == f"dns; {HOST}"
    assert per_message["Original-Envelope-Id"] == "QQ314159"
    assert per_message["Arrival-Date"] == "Wed, 25 Nov 2026 20:00:00 +0000"
    assert per_message["X-Mailexec-Message-ID"] == "00000000-0000-4000-8000-00000000a001"
    assert bob["Original-Recipient"] == "rfc822; Bob@Example.ORG"
    assert bob["Final-Recipient"] == "rfc822; bob@example.org"
    assert bob["Action"] == "failed"
    assert bob["Status"] == "5.3.0"
    diag = " ".join(str(bob["Diagnostic-Code"]).split())
    assert diag.startswith("X-mailexec; program mymail exited with status 1: cannot open")
    assert "SECRET-OUTPUT-LINE" in diag
    assert bob["Last-Attempt-Date"] == "Wed, 25 Nov 2026 20:00:04 +0000"
    assert "Will-Retry-Until" not in bob
    assert "Remote-MTA" not in bob
    assert "Original-Recipient" not in carol
    assert carol["Status"] == "5.1.1"
    assert carol["Diagnostic-Code"] == "X-mailexec; no such account"


def test_human_text_says_who_why_and_what_to_do() -> None:
    text = parts(parse(render(BOUNCE_TWO)))[0].get_content()
    assert "<bob@example.org>" in text and "<carol@example.org>" in text
    assert 'the program "mymail" exited with status 1' in text
    assert "| cannot open /var/spool/bob: Permission denied" in text
    assert "What you can do:" in text
    assert "typing errors" in text  # advice for 5.1.1
    assert "The original message is attached below." in text


def test_flufl_bounce_finds_exactly_the_failed_recipients() -> None:
    event = make_event(recipients=[_rcpt("bob@example.org"), _rcpt("carol@example.org")])
    assert scan_message(parse(render(event))) == {b"bob@example.org", b"carol@example.org"}


def test_flufl_bounce_prefers_the_original_recipient() -> None:
    assert scan_message(parse(render(BOUNCE_TWO))) == {b"Bob@Example.ORG", b"carol@example.org"}


def test_flufl_bounce_sees_no_permanent_failure_in_delay_or_success() -> None:
    assert scan_message(parse(render(DELAYED))) == frozenset()
    assert scan_message(parse(render(DELIVERED))) == frozenset()


def test_many_recipients_one_dsn() -> None:
    addresses = [f"user{i}@example.org" for i in range(60)]
    event = make_event(recipients=[_rcpt(a) for a in addresses])
    dsn = parse(render(event))
    blocks = status_blocks(dsn)
    assert len(blocks) == 61
    assert [b["Final-Recipient"] for b in blocks[1:]] == [f"rfc822; {a}" for a in addresses]
    assert scan_message(dsn) == {a.encode() for a in addresses}
    assert "the 60 recipients" in parts(dsn)[0].get_content()


def test_ret_full_returns_the_message() -> None:
    dsn = parse(render(make_event(ret="FULL")))
    returned = parts(dsn)[2]
    assert returned.get_content_type() == "message/rfc822"
    inner = returned.get_payload()[0]
    assert inner["Message-ID"] == "<orig-1@example.net>"
    assert "here are the numbers." in inner.get_content()


def test_ret_hdrs_returns_only_headers() -> None:
    dsn = parse(render(make_event(ret="HDRS")))
    returned = parts(dsn)[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    content = returned.get_payload()
    assert "Message-ID: <orig-1@example.net>" in content
    assert "here are the numbers" not in content
    assert "headers of the original message are attached" in parts(dsn)[0].get_content()


@pytest.mark.parametrize(
    ("kind", "ret", "expected"),
    [
        ("bounce", None, "message/rfc822"),
        ("delayed", None, "text/rfc822-headers"),
        ("delivered", None, "text/rfc822-headers"),
        ("delayed", "FULL", "message/rfc822"),
        ("delivered", "FULL", "message/rfc822"),
        ("bounce", "HDRS", "text/rfc822-headers"),
    ],
)
def test_ret_defaults(kind: str, ret: str | None, expected: str) -> None:
    base = {"bounce": BOUNCE_TWO, "delayed": DELAYED, "delivered": DELIVERED}[kind]
    event = base.model_copy(update={"envelope": base.envelope.model_copy(update={"ret": ret})})
    assert parts(parse(render(event)))[2].get_content_type() == expected


def test_no_original_means_two_parts() -> None:
    dsn = parse(render(BOUNCE_TWO, None))
    assert [p.get_content_type() for p in parts(dsn)] == ["text/plain", "message/delivery-status"]
    assert "no longer available" in parts(dsn)[0].get_content()


def test_body_is_capped_and_the_text_says_so() -> None:
    big = ORIGINAL + b"x" * 70 + b"\r\n" + (b"line of text\r\n" * 5000)
    dsn = parse(render(make_event(ret="FULL"), big, max_returned_body_bytes=1000))
    inner = parts(dsn)[2].get_payload()[0]
    assert inner["Subject"] == "quarterly numbers"  # headers always
    body = inner.get_payload()
    assert 0 < len(body.encode()) <= 1000
    assert "its body was cut to the first" in parts(dsn)[0].get_content()
    assert len(to_bytes(dsn)) < 10000


def test_envid_absent_means_no_field() -> None:
    per_message = status_blocks(parse(render(make_event())))[0]
    assert "Original-Envelope-Id" not in per_message


def test_envid_with_unsafe_characters_is_xtext_encoded() -> None:
    event = make_event(envid="a b+c=d")
    assert status_blocks(parse(render(event)))[0]["Original-Envelope-Id"] == "a+20b+2Bc+3Dd"


def test_orcpt_forms() -> None:
    for orcpt, expected in [
        ("rfc822;Bob+2Bx@Example.org", "rfc822; Bob+x@Example.org"),
        ("bob@example.org", "rfc822; bob@example.org"),
    ]:
        event = make_event(recipients=[_rcpt("bob@example.org", orcpt=orcpt)])
        assert status_blocks(parse(render(event)))[1]["Original-Recipient"] == expected


def test_delayed_report() -> None:
    dsn = parse(render(DELAYED))
    assert str(dsn["Subject"]) == "Delayed Mail (still being retried)"
    block = status_blocks(dsn)[1]
    assert block["Action"] == "delayed"
    assert block["Status"] == "4.3.0"
    assert block["Will-Retry-Until"] == "Mon, 30 Nov 2026 20:00:00 +0000"
    text = parts(dsn)[0].get_content()
    assert "not yet been delivered" in text and "do not need to do anything" in text


def test_will_retry_until_only_in_delayed_reports() -> None:
    event = make_event(recipients=[_rcpt("bob@example.org", will_retry_until="2026-12-01T00:00:00Z")])
    assert "Will-Retry-Until" not in status_blocks(parse(render(event)))[1]
    assert b"Will-Retry-Until" not in render(event)


def test_delivered_report() -> None:
    dsn = parse(render(DELIVERED))
    assert str(dsn["Subject"]) == "Successful Mail Delivery Report"
    block = status_blocks(dsn)[1]
    assert (block["Action"], block["Status"]) == ("delivered", "2.0.0")
    assert block["Diagnostic-Code"] == "X-mailexec; delivered to program mymail"


def test_include_output_false_hides_output_everywhere() -> None:
    events = [
        BOUNCE_TWO,
        # no structured run facts: the diagnostic itself carries the output
        make_event(recipients=[_rcpt("bob@example.org", exit_status=None, program="mymail")]),
        make_event(recipients=[_rcpt("bob@example.org", exit_status=0)]),
    ]
    for event in events:
        raw = render(event, include_output=False)
        assert b"SECRET-OUTPUT-LINE" not in raw
        assert b"Permission denied" not in raw
        block = status_blocks(parse(render(event, include_output=False)))[1]
        assert "mymail" in str(block["Diagnostic-Code"])


def test_signal_and_timeout_wording() -> None:
    dsn = parse(render(SIGNALLED))
    text = parts(dsn)[0].get_content()
    assert "killed by signal 9 (SIGKILL)" in text
    assert "did not finish within its time limit" in text
    _, bob, dave = status_blocks(dsn)
    assert "killed by signal 9 (SIGKILL)" in str(bob["Diagnostic-Code"])
    assert str(dave["Diagnostic-Code"]) == "X-mailexec; program mymail timed out"


EXPECTED_TOP = [
    "From", "To", "Subject", "Date", "Message-ID", "Auto-Submitted",
    "MIME-Version", "Content-Type", "Content-Transfer-Encoding",
]
EXPECTED_BLOCK = [
    "Final-Recipient", "Action", "Status", "Diagnostic-Code", "Last-Attempt-Date",
]


@pytest.mark.parametrize(
    "attack",
    [
        "\r\nBcc: evil@example.com",
        "\nBcc: evil@example.com",
        "\rBcc: evil@example.com",
        "\r\n\r\nInjected-Body",
        "=?utf-8?q?=0D=0ABcc:_evil@example.com?=",
        "\x00\x1b\x7f\u2028\u0085Bcc: evil@example.com",
    ],
)
def test_header_injection_never_adds_a_header(attack: str) -> None:
    event = make_event(
        recipients=[
            _rcpt(
                "bob@example.org",
                diagnostic="boom" + attack,
                program="my" + attack,
                output_excerpt="out" + attack,
            ),
            _rcpt(
                "carol@example.org",
                diagnostic="bad" + attack,
                program=None,
                exit_status=None,
                output_excerpt="",
            ),
        ]
    )
    # the schema refuses CR/LF in an envid; the renderer must survive one that slipped by
    envelope = EventEnvelope.model_construct(**{**event.envelope.__dict__, "envid": "id" + attack})
    event = event.model_copy(update={"envelope": envelope})
    for include_output in (True, False):
        message = render(event, include_output=include_output)
        assert_wire_safe(message)
        dsn = parse(message)
        assert list(dsn.keys()) == EXPECTED_TOP
        per_message, bob, carol = status_blocks(dsn)
        assert list(per_message.keys()) == [
            "Original-Envelope-Id", "Reporting-MTA", "Arrival-Date", "X-Mailexec-Message-ID"
        ]
        assert list(bob.keys()) == EXPECTED_BLOCK
        assert list(carol.keys()) == EXPECTED_BLOCK
        assert "Bcc" not in dsn and "Injected-Body" not in dsn
        raw = wire(message)
        assert not re.search(rb"\r\n(Bcc|Injected-Body)", raw)


MALFORMED = {
    "no_headers": b"just a body line\r\nand another\r\n",
    "bare_lf": ORIGINAL.replace(b"\r\n", b"\n"),
    "mixed_eol": ORIGINAL.replace(b"Subject", b"X-A: 1\nSubject"),
    "nul": ORIGINAL + b"bin\x00ary\r\n",
    "eight_bit_body": ORIGINAL + "caf\u00e9\r\n".encode("utf-8"),
    "eight_bit_header": b"Subject: \xe9t\xe9\r\nFrom: a@b.c\r\n\r\nbody\r\n",
    "bare_cr": b"Subject: x\r\n\r\nbody\rmore\r\n",
    "long_line": b"Subject: x\r\n\r\n" + b"y" * 5000 + b"\r\n",
    "no_blank_line": b"Subject: x\r\nthis is not a header\r\n",
    "empty": b"",
    "only_headers": b"Subject: x\r\nFrom: a@b.c\r\n",
    "mbox_from": b"From alice@example.net Wed Nov 25 20:00:00 2026\nSubject: x\n\nbody\n",
    "binary_junk": bytes(range(256)) * 4,
    "continuation_first": b" folded\r\nSubject: x\r\n\r\nbody\r\n",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_originals_never_crash(name: str) -> None:
    original = MALFORMED[name]
    message = render(make_event(ret="FULL"), original)
    assert_wire_safe(message)
    dsn = parse(message)
    note = flat(parts(dsn)[0].get_content())
    if name in ("no_headers", "empty", "binary_junk", "continuation_first"):
        assert len(parts(dsn)) == 2  # nothing that looks like a header: nothing attached
        assert "could not be attached, because it" in note
    elif name in ("bare_lf", "mixed_eol", "only_headers", "mbox_from"):
        assert parts(dsn)[2].get_content_type() == "message/rfc822"
    else:
        assert parts(dsn)[2].get_content_type() == "text/rfc822-headers"
        assert "Only the headers of the original message are attached below, because it" in note
    assert scan_message(dsn) == {b"bob@example.org"}


def test_malformed_header_bytes_are_neutralised() -> None:
    dsn = parse(render(make_event(ret="FULL"), MALFORMED["eight_bit_header"]))
    assert parts(dsn)[2].get_payload().splitlines()[0] == "Subject: ?t?"


def test_huge_header_section_is_capped() -> None:
    original = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"z" * 200) for i in range(3000))
    original += b"Subject: x\r\n\r\nbody\r\n"
    message = render(make_event(ret="FULL"), original)
    dsn = parse(message)
    assert parts(dsn)[2].get_content_type() == "text/rfc822-headers"
    assert len(wire(message)) < 300 * 1024
    assert "header lines were left out" in parts(dsn)[0].get_content()


def test_non_ascii_output_is_quoted_printable() -> None:
    event = make_event(recipients=[_rcpt("bob@example.org", output_excerpt="Gr\u00fc\u00dfe \u2603\n")])
    message = render(event)
    assert_wire_safe(message)
    text_part = parts(parse(message))[0]
    assert text_part["Content-Transfer-Encoding"] == "quoted-printable"
    assert "Gr\u00fc\u00dfe \u2603" in text_part.get_content()
    diag = str(status_blocks(parse(message))[1]["Diagnostic-Code"])
    assert diag.isascii() and "Gr\\xfc\\xdfe" in diag


def test_smtputf8_recipient_uses_utf8_address_type() -> None:
    event = make_event(recipients=[_rcpt("j\u00f6rg@example.org")])
    block = status_blocks(parse(render(event)))[1]
    assert block["Final-Recipient"] == "utf-8; j\\x{F6}rg@example.org"


def test_smtputf8_sender_gets_a_utf8_to_header_and_nothing_else_8bit() -> None:
    message = render(make_event(sender="j\u00f6rg@example.net"))
    raw = wire(message)
    assert "To: j\u00f6rg@example.net\r\n".encode() in raw
    assert raw.replace("j\u00f6rg".encode(), b"jorg").isascii()
    assert scan_message(parse(message)) == {b"bob@example.org"}


def test_long_diagnostic_is_folded_and_capped() -> None:
    event = make_event(
        recipients=[_rcpt("bob@example.org", output_excerpt=("word " * 400 + "\n") * 3)]
    )
    message = render(event)
    raw = wire(message)
    field = re.search(rb"Diagnostic-Code:.*?\r\n(?! )", raw, re.S)
    assert field is not None
    assert all(len(line) <= 78 for line in field.group(0).split(b"\r\n"))
    assert len(field.group(0)) < 1200


@pytest.mark.parametrize(
    ("kind", "sender", "notify", "expected"),
    [
        ("bounce", "alice@example.net", ["FAILURE", "DELAY"], True),
        ("bounce", "", ["FAILURE", "DELAY"], False),
        ("bounce", "alice@example.net", ["NEVER"], False),
        ("bounce", "alice@example.net", ["DELAY"], False),
        ("delayed", "alice@example.net", ["FAILURE", "DELAY"], True),
        ("delayed", "alice@example.net", ["FAILURE"], False),
        ("delivered", "alice@example.net", ["FAILURE", "DELAY"], False),
        ("delivered", "alice@example.net", ["SUCCESS"], True),
        ("admin_notice", "alice@example.net", ["SUCCESS", "FAILURE", "DELAY"], False),
    ],
)
def test_should_send_dsn(kind: str, sender: str, notify: list[str], expected: bool) -> None:
    action = {"bounce": "failed", "delayed": "delayed", "delivered": "delivered"}.get(kind, "failed")
    status = {"failed": "5.3.0", "delayed": "4.3.0", "delivered": "2.0.0"}[action]
    notice = {"reason": "program_failed"} if kind == "admin_notice" else None
    event = make_event(
        kind, [_rcpt("bob@example.org", action=action, status=status)], notice,
        sender=sender, notify=notify,
    )
    assert should_send_dsn(event) is expected


def test_refuses_null_sender_admin_notice_and_bad_host() -> None:
    with pytest.raises(ValueError):
        render(make_event(sender=""))
    with pytest.raises(ValueError):
        render(NOTICE)
    with pytest.raises(ValueError):
        render(BOUNCE_TWO, reporting_mta="mx.example.org\r\nBcc: x")


def test_fresh_message_id_and_date_by_default() -> None:
    one = parse(render_dsn_bytes(BOUNCE_TWO, ORIGINAL, reporting_mta=HOST,
                                 max_returned_body_bytes=100, include_output=True))
    two = parse(render_dsn_bytes(BOUNCE_TWO, ORIGINAL, reporting_mta=HOST,
                                 max_returned_body_bytes=100, include_output=True))
    assert one["Message-ID"] != two["Message-ID"]
    assert str(one["Message-ID"]).endswith(f"@{HOST}>")
    age = datetime.now(UTC) - email.utils.parsedate_to_datetime(str(one["Date"]))
    assert abs(age.total_seconds()) < 60


def test_ids_are_stable_inputs() -> None:
    """The golden files depend on fixed ids; make sure the fixtures really are fixed."""
    assert BOUNCE_TWO.event_id == uuid.UUID("00000000-0000-4000-8000-00000000e001")
