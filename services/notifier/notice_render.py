"""Postmaster notices: the ``admin_notice`` of an event (a program failed, delivery is
disabled, a job was poison ...) and the notice that a DSN was refused for good.

Pure rendering, like :mod:`services.notifier.dsn`, with the same guarantees (7-bit,
folded, no CR/LF from event data in a header); each notice is a ``multipart/mixed``
with the text and, when there is one, the original's headers or the refused DSN.
Whether a notice is sent at all is :mod:`services.notifier.notice_limits`' decision.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Final

from services.notifier.dsn import describe_result, diagnostic_text, program_label
from services.notifier.mime import (
    MAX_LINE,
    POLICY,
    Returned,
    assemble,
    check_host,
    format_date,
    one_line,
    returned_content,
    returned_parts,
    signal_name,
    subject_text,
    text_lines,
    text_part,
    top_headers,
    wrap,
)
from shared.schemas import Event, EventRecipient, validate_address
from shared.status import NoticeReason, describe_status

_NOTICE_WHAT: Final[dict[NoticeReason, str]] = {
    NoticeReason.PROGRAM_FAILED: "A delivery program failed; the message was bounced.",
    NoticeReason.DISABLED: (
        "Program delivery is disabled (no trusted program is registered and the mode is "
        "secure); the message was bounced."
    ),
    NoticeReason.UNRESOLVED_PROGRAM: (
        "A program in the account's program list could not be resolved to a trusted "
        "program; the message was bounced."
    ),
    NoticeReason.BAD_SHELL: (
        "The account owner's login shell is not in valid_shells, so no program was run; "
        "the message was bounced."
    ),
    NoticeReason.ROOT_WITHOUT_SAFE_USER: (
        "The account is owned by uid 0 and no safe_user is configured; programs never run "
        "as root, so the message was bounced."
    ),
    NoticeReason.POISON: (
        "A delivery job failed repeatedly (worker crash or hang) and was given up as a "
        "poison job; the message was bounced."
    ),
    NoticeReason.CORRUPT: "A delivery job could not be parsed and was discarded.",
}

_NOTICE_TODO: Final[dict[NoticeReason, str]] = {
    NoticeReason.PROGRAM_FAILED: (
        "Read the program's output above. Fix the program (re-register it: PUT "
        "/v1/programs/NAME or mailexec programs add), or change the account's program "
        "list: PUT /v1/accounts/ADDRESS/programs."
    ),
    NoticeReason.DISABLED: (
        "Register a trusted program: PUT /v1/programs/NAME or mailexec programs add. "
        "Or turn program delivery off for the account (PUT /v1/accounts/ADDRESS/programs "
        'with "enabled": false) if it should get mailbox delivery only.'
    ),
    NoticeReason.UNRESOLVED_PROGRAM: (
        "Register the program as trusted (PUT /v1/programs/NAME or mailexec programs add) "
        "or correct the account's program list (PUT /v1/accounts/ADDRESS/programs). In "
        "insecure mode the entry must be an absolute path to an executable file."
    ),
    NoticeReason.BAD_SHELL: (
        "Give the account owner a valid login shell (PUT /v1/accounts/ADDRESS) or add "
        "the shell to valid_shells (PATCH /v1/settings)."
    ),
    NoticeReason.ROOT_WITHOUT_SAFE_USER: (
        'Set a safe user: PATCH /v1/settings {"safe_user": {"uid": N, "gid": N}}, or '
        "give the account a non-root owner (PUT /v1/accounts/ADDRESS)."
    ),
    NoticeReason.POISON: (
        "Look up this message id in the executor logs to find why the job kept failing "
        "(crash, out of memory, timeout of the worker itself)."
    ),
    NoticeReason.CORRUPT: (
        "Check the detail below and the component that published the job; the message "
        "may have to be resubmitted by the sending MTA."
    ),
}


def _run_summary(rcpt: EventRecipient) -> str:
    prog = program_label(rcpt)
    if rcpt.timed_out:
        return f"{prog} timed out"
    if rcpt.signal is not None:
        return f"{prog} killed by {signal_name(rcpt.signal)}"
    if rcpt.exit_status:
        return f"{prog} exit {rcpt.exit_status}"
    if rcpt.exit_status == 0:
        return f"{prog} wrote output"
    return prog


def _notice_subject(event: Event, reason: NoticeReason) -> str:
    rcpts = event.recipients
    who = rcpts[0].address if rcpts else (event.notice.account if event.notice else None)
    who = one_line(who) or "unknown recipient"
    if len(rcpts) > 1:
        who += f" and {len(rcpts) - 1} more"
    first = rcpts[0] if rcpts else None
    if reason is NoticeReason.PROGRAM_FAILED and first is not None:
        return f"mailexec: program delivery failed for {who} ({subject_text(_run_summary(first))})"
    if reason is NoticeReason.UNRESOLVED_PROGRAM and first is not None and first.program:
        prog = subject_text(first.program)
        return f"mailexec: program {prog} could not be resolved for {who}"
    return {
        NoticeReason.PROGRAM_FAILED: f"mailexec: program delivery failed for {who}",
        NoticeReason.DISABLED: f"mailexec: program delivery disabled, mail for {who} bounced",
        NoticeReason.UNRESOLVED_PROGRAM: f"mailexec: unresolved program for {who}",
        NoticeReason.BAD_SHELL: f"mailexec: invalid login shell for {who}",
        NoticeReason.ROOT_WITHOUT_SAFE_USER: f"mailexec: no safe user for root-owned {who}",
        NoticeReason.POISON: f"mailexec: delivery job for {who} failed repeatedly",
        NoticeReason.CORRUPT: "mailexec: corrupt delivery job discarded",
    }[reason]


def _labelled(label: str, text: str) -> list[str]:
    """``Label:        text`` wrapped with continuation lines under the text column."""
    lines = wrap(text, width=62) or [""]
    head = f"{label + ':':<14}{lines[0]}"
    return [head, *(" " * 14 + line for line in lines[1:])]


def _notice_text(event: Event, host: str, returned: Returned | None) -> str:
    notice = event.notice
    assert notice is not None
    envelope = event.envelope
    lines = [f"This is the mailexec notifier at {host}.", ""]
    lines += wrap("What happened: " + _NOTICE_WHAT[notice.reason])
    lines += [
        "",
        f"Reason:       {notice.reason.value}",
        f"Message id:   {event.message_id or 'unknown'}",
        f"Sender:       <{envelope.sender}>",
        f"Received:     {format_date(envelope.arrival_date)}",
        f"Reported:     {format_date(event.occurred_at)}",
    ]
    if notice.account:
        lines.append(f"Account:      {one_line(notice.account)}")
    if notice.detail:
        lines += _labelled("Detail", one_line(notice.detail, ascii_only=False))
    for rcpt in event.recipients:
        lines += ["", f"Recipient:    {rcpt.address}"]
        if rcpt.program is not None:
            lines.append(f"Program:      {one_line(rcpt.program, ascii_only=False)}")
        lines += _labelled("Result", describe_result(rcpt))
        lines.append(f"Status:       {rcpt.status} ({describe_status(rcpt.status)})")
        lines += _labelled("Diagnostic", diagnostic_text(rcpt, include_output=False))
        output = text_lines(rcpt.output_excerpt, max_lines=None, max_chars=MAX_LINE - 20)
        if output:
            lines.append("Output (as captured):")
            lines += [f"    | {line}".rstrip() for line in output]
        else:
            lines.append("Output:       (none)")
    lines += ["", "What to do:"]
    lines += wrap(_NOTICE_TODO[notice.reason], indent="    ", width=76)
    if returned is not None:
        lines += ["", *wrap(returned.note)]
    return "\n".join(lines) + "\n"


def render_admin_notice(
    event: Event,
    original_headers: bytes | None,
    *,
    postmaster: str,
    reporting_mta: str,
    now: datetime | None = None,
    message_id: str | None = None,
) -> EmailMessage:
    """The postmaster's notice for an ``admin_notice`` event: enough to act without logs.

    It always shows the program's full captured output (``dsn_include_output`` only
    governs what the *sender* sees) and attaches the original headers.
    """
    if event.kind != "admin_notice" or event.notice is None:
        raise ValueError("render_admin_notice needs an admin_notice event")
    host = check_host(reporting_mta)
    returned = returned_content(original_headers, full=False, max_body=0)
    parts = [text_part(_notice_text(event, host, returned), "Postmaster notice")]
    parts.extend(returned_parts(returned))
    top = top_headers(
        host=host,
        to=validate_address(postmaster),
        subject=_notice_subject(event, event.notice.reason),
        now=now,
        message_id=message_id,
        auto_submitted="auto-generated",
    )
    top.append(f"X-Mailexec-Notice: {event.notice.reason.value}")
    return assemble(
        top, parts, content_type="multipart/mixed", seed=f"{event.event_id}|{message_id}", host=host
    )


def render_undeliverable_dsn_notice(
    dsn: bytes,
    *,
    smtp_error: str,
    postmaster: str,
    reporting_mta: str,
    max_returned_body_bytes: int = 262144,
    now: datetime | None = None,
    message_id: str | None = None,
) -> EmailMessage:
    """Tell the postmaster that a DSN was refused for good (5xx) instead of retrying it.

    The notice goes to the postmaster with a null envelope sender like every DSN; if it
    is refused too, the caller records the failure and stops: never a DSN about a DSN.
    """
    host = check_host(reporting_mta)
    parsed = BytesParser(policy=POLICY).parsebytes(dsn, headersonly=True)
    recipient = one_line(str(parsed.get("To", ""))) or "(unknown)"
    subject = one_line(str(parsed.get("Subject", ""))) or "(no subject)"
    returned = returned_content(
        dsn, full=True, max_body=max_returned_body_bytes, what="notification"
    )
    lines = [f"This is the mailexec notifier at {host}.", ""]
    lines += wrap(
        f"A delivery status notification for {recipient} could not be delivered: the mail "
        "relay refused it permanently. It will not be retried, and no further "
        "notification is sent about it (that could loop)."
    )
    lines += ["", f"Notification subject: {subject}"]
    lines += wrap("Relay answer: " + one_line(smtp_error), width=76)
    lines += ["", "What to do:"]
    lines += wrap(
        "Check the relay's answer. A sender address that does not accept mail is common "
        "and needs no action; a relay that refuses all notifications needs its "
        "configuration fixed (MAILEXEC_SMTP_URL).",
        indent="    ",
        width=76,
    )
    if returned is not None:
        lines += ["", *wrap(returned.note)]
    parts = [text_part("\n".join(lines) + "\n", "Postmaster notice")]
    parts.extend(returned_parts(returned))
    top = top_headers(
        host=host,
        to=validate_address(postmaster),
        subject=f"mailexec: undeliverable delivery status notification to {subject_text(recipient)}",
        now=now,
        message_id=message_id,
        auto_submitted="auto-generated",
    )
    top.append("X-Mailexec-Notice: undeliverable_dsn")
    seed = hashlib.sha256(dsn).hexdigest()
    return assemble(top, parts, content_type="multipart/mixed", seed=seed, host=host)
