"""RFC 3464 delivery status notifications, rendered from events.

Pure rendering: no network, no database, no clock unless ``now`` is omitted. The
consumer decides *whether* to notify (:func:`shared.notify.should_send_dsn` states the RFC 3461
rules) and stores what :func:`render_dsn_bytes` renders. Postmaster notices are
rendered by :mod:`services.notifier.notice_render`, with the same helpers
(:mod:`services.notifier.mime`) and this module's per-recipient wording.

What it guarantees:
- Every header and every ``message/delivery-status`` field is 7-bit printable ASCII,
  folded below 78 columns where white space allows, and never contains CR or LF from
  event data: diagnostics, program names, ENVIDs and program output are flattened and
  control characters escaped (``\\x1b``) before they are written. Envelope addresses
  are already validated by :mod:`shared.schemas`. The one exception: the ``To:`` of a
  DSN to an SMTPUTF8 (UTF-8) sender is UTF-8, as sending to it needs SMTPUTF8 anyway;
  such recipients appear as RFC 6533 ``utf-8;`` addresses in the report.
- The DSN is otherwise 7-bit, so any relay accepts it without 8BITMIME. A returned
  original that is not (8-bit data, NUL, bare CR, lines over 998 octets, no header
  section) is replaced by ``text/rfc822-headers`` with the headers that could be
  found, made printable; the text part says so.
- Returned content is capped: the header section always (up to
  :data:`services.notifier.mime.MAX_RETURNED_HEADER_BYTES`), the body up to
  ``max_returned_body_bytes``, cut at a line boundary, and the text part says when it
  was cut.

The golden files in ``tests/notifier/golden`` (Postfix's ``src/bounce/*.ref``) are the
oracle of the exact bytes.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Final

from services.notifier.mime import (
    Part,
    Returned,
    assemble_bytes,
    check_host,
    fold,
    format_date,
    one_line,
    returned_content,
    returned_parts,
    signal_name,
    text_lines,
    text_part,
    top_headers,
    wrap,
)
from shared.schemas import Event, EventRecipient, validate_address
from shared.status import SYSEXITS, describe_class, describe_status

DSN_OUTPUT_LINES: Final = 10
DSN_OUTPUT_LINE_CHARS: Final = 200
DIAGNOSTIC_MAX_CHARS: Final = 900

SUBJECTS: Final[dict[str, str]] = {
    "bounce": "Undelivered Mail Returned to Sender",
    "delayed": "Delayed Mail (still being retried)",
    "delivered": "Successful Mail Delivery Report",
}
_ORCPT_RE: Final = re.compile(r"^([A-Za-z0-9][A-Za-z0-9-]*);(.*)$")
_XTEXT_HEX_RE: Final = re.compile(r"\+([0-9A-F]{2})")


# --- address fields -------------------------------------------------------------------------


def xtext(value: str) -> str:
    """RFC 3461 xtext: printable ASCII except ``+``/``=`` as is, everything else ``+XX``."""
    out = []
    for byte in value.encode("utf-8"):
        if 0x21 <= byte <= 0x7E and byte not in (0x2B, 0x3D):
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)


def recipient_field(address: str) -> str:
    """``rfc822; addr``, or for an SMTPUTF8 address RFC 6533's ``utf-8; `` + addr-xtext."""
    if address.isascii():
        return f"rfc822; {address}"
    out = []
    for ch in address:
        code = ord(ch)
        if 0x21 <= code <= 0x7E and ch not in "+=\\":
            out.append(ch)
        else:
            out.append(f"\\x{{{code:X}}}")
    return "utf-8; " + "".join(out)


def _envid_field(envid: str) -> str:
    """ENVID as given when it is plain printable ASCII, else xtext-encoded (never CR/LF)."""
    if re.fullmatch(r"[\x21-\x7e]+", envid):
        return envid
    return xtext(envid)


def _orcpt_field(orcpt: str) -> str:
    """``rfc822;bob@x`` (xtext, as SMTP ORCPT carries it) or a bare address → field value."""
    match = _ORCPT_RE.match(orcpt.strip())
    if match:
        addr_type = match.group(1)
        address = _XTEXT_HEX_RE.sub(lambda m: chr(int(m.group(1), 16)), match.group(2))
    else:
        addr_type, address = "rfc822", orcpt
    return f"{one_line(addr_type)}; {one_line(address)}"


# --- per-recipient wording ----------------------------------------------------------------


def _program_ran(rcpt: EventRecipient) -> bool:
    return rcpt.timed_out or rcpt.signal is not None or rcpt.exit_status is not None


def program_label(rcpt: EventRecipient) -> str:
    return one_line(rcpt.program) or "(unnamed)"


def _scrubbed_diagnostic(rcpt: EventRecipient, *, include_output: bool, ascii_only: bool) -> str:
    """The event's diagnostic as one line, cut before the first output line if hidden."""
    text = one_line(rcpt.diagnostic, ascii_only=ascii_only)
    if not include_output:
        for raw in rcpt.output_excerpt.splitlines():
            line = one_line(raw, ascii_only=ascii_only)
            cut = text.find(line) if line else -1
            if cut >= 0:
                text = text[:cut].rstrip(" :;/-")
                break
    return text


def describe_result(rcpt: EventRecipient, *, include_output: bool = True) -> str:
    """One plain-English sentence: what happened to this recipient's delivery."""
    prog = program_label(rcpt)
    if rcpt.action == "delivered":
        return f'delivered to the program "{prog}"' if rcpt.program else "delivered"
    if rcpt.timed_out:
        return f'the program "{prog}" did not finish within its time limit and was stopped'
    if rcpt.signal is not None:
        return f'the program "{prog}" was killed by signal {rcpt.signal} ' + (
            f"({signal_name(rcpt.signal)})"
        )
    if rcpt.exit_status is not None and rcpt.exit_status != 0:
        sysexit = SYSEXITS.get(rcpt.exit_status)
        detail = f" ({sysexit.name}: {sysexit.text})" if sysexit else ""
        return f'the program "{prog}" exited with status {rcpt.exit_status}{detail}'
    if rcpt.exit_status == 0:
        return f'the program "{prog}" wrote output, which counts as a failed delivery'
    text = _scrubbed_diagnostic(rcpt, include_output=include_output, ascii_only=False)
    return text or describe_status(rcpt.status)


def diagnostic_text(rcpt: EventRecipient, *, include_output: bool) -> str:
    """The ``Diagnostic-Code`` text: built from the run's facts, output only if allowed.

    The event's own ``diagnostic`` is used when no program ran (unknown account,
    disabled ...); when output must be hidden, anything from the output is cut off it.
    """
    output = [
        one_line(line)
        for line in text_lines(rcpt.output_excerpt, max_lines=None, max_chars=300)
        if line.strip()
    ]
    if rcpt.action == "delivered":
        text = one_line(rcpt.diagnostic) or (
            f"delivered to program {program_label(rcpt)}" if rcpt.program else "delivered"
        )
    elif _program_ran(rcpt):
        prog = program_label(rcpt)
        if rcpt.timed_out:
            text = f"program {prog} timed out"
        elif rcpt.signal is not None:
            text = f"program {prog} killed by signal {rcpt.signal} ({signal_name(rcpt.signal)})"
        elif rcpt.exit_status:
            text = f"program {prog} exited with status {rcpt.exit_status}"
        else:
            text = f"program {prog} exited with status 0 but wrote output"
        if include_output and output:
            text += ": " + " / ".join(output[:5])
    else:
        text = _scrubbed_diagnostic(rcpt, include_output=include_output, ascii_only=True)
        text = text or describe_status(rcpt.status)
    if len(text) > DIAGNOSTIC_MAX_CHARS:
        text = text[:DIAGNOSTIC_MAX_CHARS] + " [...]"
    return text


def _advice(status: str, action: str, postmaster_host: str) -> str:
    """What the *sender* can do about a status, in plain words."""
    if action == "delivered":
        return "No action is needed."
    if action == "delayed":
        return (
            "You do not need to do anything or send the message again: delivery is "
            "retried automatically. If it still fails when the retry period ends, you "
            "will get another notice and the message will be returned."
        )
    detail = status[2:]
    if detail == "1.1":
        return (
            "Check the recipient's address for typing errors: there is no such recipient "
            "here. If the address is right, contact the recipient by other means."
        )
    if detail == "4.7":
        return (
            "The recipient's mail delivery was on hold for too long. Try again later, or "
            "contact the recipient by other means."
        )
    if detail == "4.6":
        return (
            "The message arrived here twice for the same recipient (a forwarding loop). "
            "Ask the recipient to check their forwarding settings."
        )
    if detail.startswith("6."):
        return (
            "The recipient's delivery program could not process the format of your "
            "message. Try sending it as plain text, or contact the recipient by other means."
        )
    if detail.startswith("7."):
        return (
            "The recipient's system refused the message for security or policy reasons. "
            "Contact the recipient by other means."
        )
    return (
        "The problem is on the receiving side (the recipient's delivery program or this "
        "mail system's configuration), not in your message, so sending it again will not "
        "help until it is fixed. Contact the recipient by other means, or the "
        f"postmaster at {postmaster_host}, and quote the Status line above."
    )


# --- DSN ----------------------------------------------------------------------------------


_INTROS: Final[dict[str, str]] = {
    "bounce": (
        "Your message could not be delivered to the {whom} listed below, and no "
        "further attempts will be made. The reason is given for each recipient."
    ),
    "delayed": (
        "Your message has not yet been delivered to the {whom} listed below. It is still "
        "queued here and delivery will be retried; this is only a warning."
    ),
    "delivered": (
        "Your message was delivered successfully to the {whom} listed below. You asked "
        "for this report when you sent the message (NOTIFY=SUCCESS)."
    ),
}


def _human_text(
    event: Event, returned: Returned | None, *, host: str, include_output: bool
) -> str:
    count = len(event.recipients)
    whom = "recipient" if count == 1 else f"{count} recipients"
    lines = [f"This is the mail delivery system at {host}.", ""]
    lines += wrap(_INTROS[event.kind].format(whom=whom))
    lines.append("")
    advice: list[str] = []
    for rcpt in event.recipients:
        lines.append(f"<{rcpt.address}>")
        if rcpt.orcpt:
            lines.append(f"    Originally addressed as: {_orcpt_field(rcpt.orcpt).split('; ', 1)[-1]}")
        lines += wrap(
            "What happened: " + describe_result(rcpt, include_output=include_output) + ".",
            indent="    ",
            width=76,
        )
        lines.append(
            f"    Status: {rcpt.status} ({describe_class(rcpt.status)}: "
            f"{describe_status(rcpt.status)})"
        )
        if rcpt.action == "delayed" and rcpt.will_retry_until is not None:
            lines.append(f"    Retried until: {format_date(rcpt.will_retry_until)}")
        if include_output and rcpt.action != "delivered":
            output = text_lines(
                rcpt.output_excerpt, max_lines=DSN_OUTPUT_LINES, max_chars=DSN_OUTPUT_LINE_CHARS
            )
            if output:
                lines.append("    The program's output (first lines):")
                lines += [f"        | {line}".rstrip() for line in output]
        lines.append("")
        tip = _advice(rcpt.status, rcpt.action, host)
        if tip not in advice:
            advice.append(tip)
    lines.append("What you can do:")
    for tip in advice:
        wrapped = wrap(tip, indent="      " if len(advice) > 1 else "    ", width=76)
        if len(advice) > 1:
            wrapped[0] = "    - " + wrapped[0].lstrip()
        lines += wrapped
    lines.append("")
    if returned is not None:
        lines += wrap(returned.note)
    else:
        lines += wrap("The original message is no longer available and is not attached.")
    return "\n".join(lines) + "\n"


def _delivery_status(event: Event, *, host: str, include_output: bool) -> str:
    envelope = event.envelope
    block = []  # field order of RFC 3464 §2.2: extension fields last
    if envelope.envid:
        block.append(fold("Original-Envelope-Id", _envid_field(envelope.envid)))
    block += [
        f"Reporting-MTA: dns; {host}",
        f"Arrival-Date: {format_date(envelope.arrival_date)}",
        f"X-Mailexec-Message-ID: {event.message_id}",
    ]
    blocks = ["\n".join(block)]
    for rcpt in event.recipients:
        fields = []
        if rcpt.orcpt:
            fields.append(fold("Original-Recipient", _orcpt_field(rcpt.orcpt)))
        fields += [
            fold("Final-Recipient", recipient_field(rcpt.address)),
            f"Action: {rcpt.action}",
            f"Status: {rcpt.status}",
            fold(
                "Diagnostic-Code",
                "X-mailexec; " + diagnostic_text(rcpt, include_output=include_output),
            ),
            f"Last-Attempt-Date: {format_date(rcpt.last_attempt)}",
        ]
        if rcpt.action == "delayed" and rcpt.will_retry_until is not None:
            fields.append(f"Will-Retry-Until: {format_date(rcpt.will_retry_until)}")
        blocks.append("\n".join(fields))
    return "\n\n".join(blocks)


def render_dsn_bytes(
    event: Event,
    original: bytes | None,
    *,
    reporting_mta: str,
    max_returned_body_bytes: int,
    include_output: bool,
    now: datetime | None = None,
    message_id: str | None = None,
) -> bytes:
    """One RFC 3464 DSN for a ``bounce``, ``delayed`` or ``delivered`` event, as the
    octets to send (CRLF line ends): what the consumer stores.

    All recipients of the event share one DSN, one per-recipient block each. RET=FULL
    returns the original (body capped), RET=HDRS its headers; without RET a bounce
    returns the original and delay/success reports only the headers (Postfix does the
    same). Raises ``ValueError`` for admin notices and a null sender: those never get
    a DSN (check :func:`shared.notify.should_send_dsn` first).
    """
    if event.kind not in SUBJECTS:
        raise ValueError(f"no DSN for {event.kind} events")
    sender = event.envelope.sender
    if sender == "":
        raise ValueError("no DSN to the null reverse-path")
    host = check_host(reporting_mta)
    ret = event.envelope.ret
    full = ret == "FULL" or (ret is None and event.kind == "bounce")
    returned = returned_content(original, full=full, max_body=max_returned_body_bytes)
    parts = [
        text_part(
            _human_text(event, returned, host=host, include_output=include_output), "Notification"
        ),
        Part(
            ["Content-Description: Delivery report", "Content-Type: message/delivery-status"],
            _delivery_status(event, host=host, include_output=include_output),
        ),
    ]
    parts.extend(returned_parts(returned))
    top = top_headers(
        host=host,
        to=validate_address(sender),
        subject=SUBJECTS[event.kind],
        now=now,
        message_id=message_id,
        auto_submitted="auto-replied",
    )
    return assemble_bytes(
        top,
        parts,
        content_type="multipart/report; report-type=delivery-status",
        seed=f"{event.event_id}|{message_id}",
        host=host,
    )
