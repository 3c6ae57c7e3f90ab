"""RFC 3464 delivery status notifications and postmaster notices, rendered from events.

Pure rendering: no network, no database, no clock unless ``now`` is omitted. The
consumer decides *whether* to notify (:func:`should_send_dsn` states the RFC 3461
rules) and sends what this module renders.

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
  :data:`MAX_RETURNED_HEADER_BYTES`), the body up to ``max_returned_body_bytes``,
  cut at a line boundary, and the text part says when it was cut.

The message is built as text with explicit folding (so golden files are stable
across Python versions) and parsed back into an :class:`email.message.EmailMessage`;
:func:`to_bytes` serialises it with CRLF line ends for SMTP.
"""

from __future__ import annotations

import email.utils
import hashlib
import quopri
import re
import signal as signal_module
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy as email_policy
from email.generator import BytesGenerator
from email.message import EmailMessage
from email.parser import BytesParser
from io import BytesIO
from typing import Final

from shared.schemas import Event, EventRecipient, validate_address
from shared.status import SYSEXITS, NoticeReason, describe_class, describe_status

POLICY: Final = email_policy.SMTP.clone(refold_source="none")
MAX_RETURNED_HEADER_BYTES: Final = 256 * 1024
MAX_LINE: Final = 998
FOLD_WIDTH: Final = 78
DSN_OUTPUT_LINES: Final = 10
DSN_OUTPUT_LINE_CHARS: Final = 200
DIAGNOSTIC_MAX_CHARS: Final = 900

SUBJECTS: Final[dict[str, str]] = {
    "bounce": "Undelivered Mail Returned to Sender",
    "delayed": "Delayed Mail (still being retried)",
    "delivered": "Successful Mail Delivery Report",
}
_HOSTNAME_RE: Final = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_FIELD_RE: Final = re.compile(rb"^[\x21-\x39\x3b-\x7e]+[ \t]*:")
_ORCPT_RE: Final = re.compile(r"^([A-Za-z0-9][A-Za-z0-9-]*);(.*)$")
_XTEXT_HEX_RE: Final = re.compile(r"\+([0-9A-F]{2})")


# --- text hygiene -------------------------------------------------------------------------


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if code < 0x20 or code == 0x7F:
        return f"\\x{code:02x}"
    return ch


def one_line(text: str | None, *, ascii_only: bool = True) -> str:
    """Flatten free text to one printable line: CR/LF/TAB → space, controls escaped.

    With ``ascii_only`` (headers, delivery-status fields) non-ASCII is backslash-escaped
    too, since those fields are US-ASCII by definition (RFC 3464 §2.1.2).
    """
    if not text:
        return ""
    text = re.sub(r"[\r\n\t\v\f]+", " ", text)
    text = "".join(_escape_char(ch) for ch in text)
    if ascii_only:
        text = text.encode("ascii", "backslashreplace").decode("ascii")
    return re.sub(r" {2,}", " ", text).strip()


def _text_lines(text: str, *, max_lines: int | None, max_chars: int) -> list[str]:
    """Printable lines of program output for a text part (Unicode kept, controls escaped)."""
    lines: list[str] = []
    for raw in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        line = "".join(_escape_char(ch) for ch in raw.replace("\t", "    ")).rstrip()
        if len(line) > max_chars:
            line = line[:max_chars] + " [...]"
        lines.append(line)
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    if max_lines is not None and len(lines) > max_lines:
        extra = len(lines) - max_lines
        lines = lines[:max_lines] + [f"[... {extra} more line(s) not shown]"]
    return lines


def fold(name: str, value: str, *, width: int = FOLD_WIDTH) -> str:
    """``Name: value`` folded at spaces into lines of at most ``width`` where possible.

    ``value`` must already be one printable line (see :func:`one_line`). Words longer
    than a line are split so no line exceeds the RFC 5322 limit of 998 octets.
    """
    words: list[str] = []
    for word in value.split(" "):
        while len(word) > 900:
            words.append(word[:900])
            word = word[900:]
        if word:
            words.append(word)
    lines: list[str] = []
    current = f"{name}:"
    for word in words:
        if len(current) + 1 + len(word) > width and current.strip() != f"{name}:":
            lines.append(current)
            current = " " + word
        else:
            current += " " + word
    lines.append(current)
    return "\n".join(lines)


def xtext(value: str) -> str:
    """RFC 3461 xtext: printable ASCII except ``+``/``=`` as is, everything else ``+XX``."""
    out = []
    for byte in value.encode("utf-8"):
        if 0x21 <= byte <= 0x7E and byte not in (0x2B, 0x3D):
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)


def _recipient_field(address: str) -> str:
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


def _date(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return email.utils.format_datetime(value)


def _subject_text(text: str) -> str:
    """A subject fragment that no mail reader will decode as an RFC 2047 encoded-word."""
    return one_line(text).replace("=?", "= ?")


def _check_host(reporting_mta: str) -> str:
    if not _HOSTNAME_RE.match(reporting_mta):
        raise ValueError(f"reporting_mta is not a host name: {reporting_mta!r}")
    return reporting_mta


def _signal_name(number: int) -> str:
    try:
        return signal_module.Signals(number).name
    except ValueError:
        return f"signal {number}"


# --- the original message -----------------------------------------------------------------


@dataclass
class _Original:
    """The original split the lenient way: physical header lines, body lines, problems."""

    header_lines: list[bytes]
    body_lines: list[bytes]
    problems: list[str] = field(default_factory=list)


def _split_original(raw: bytes) -> _Original:
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    problems: list[str] = []
    index = 1 if lines and lines[0].startswith(b"From ") else 0  # mbox separator
    header: list[bytes] = []
    while index < len(lines):
        line = lines[index]
        if line == b"":
            index += 1
            break
        if _FIELD_RE.match(line) or (header and line[:1] in (b" ", b"\t")):
            header.append(line)
            index += 1
            continue
        problems.append("it has no empty line after its headers" if header else "it has no headers")
        break
    if not lines:
        problems.append("it is empty")
    body = lines[index:]
    everything = b"\n".join(lines)
    if b"\0" in everything:
        problems.append("it contains NUL characters")
    if not everything.isascii():
        problems.append("it contains 8-bit characters")
    if b"\r" in everything:
        problems.append("it contains bare carriage returns")
    if any(len(line) > MAX_LINE for line in lines):
        problems.append(f"it has lines longer than {MAX_LINE} characters")
    return _Original(header, body, problems)


def _printable_header_lines(lines: Sequence[bytes]) -> tuple[list[str], bool]:
    """Header lines made 7-bit printable, capped at whole fields; (lines, was_cut)."""
    out: list[str] = []
    total = 0
    for line in lines:
        text = "".join(
            ch if (0x20 <= ord(ch) < 0x7F or ch == "\t") else "?"
            for ch in line.decode("latin-1")
        )[:MAX_LINE]
        starts_field = not text[:1].isspace()
        if starts_field and total + len(text) + 2 > MAX_RETURNED_HEADER_BYTES:
            return out, True
        out.append(text)
        total += len(text) + 2
    return out, False


@dataclass
class _Returned:
    """What goes into the third part and what the text part says about it."""

    content_type: str
    description: str
    body: str
    note: str
    attach: bool = True


def _returned_content(
    original: bytes | None, *, full: bool, max_body: int, what: str = "message"
) -> _Returned | None:
    if original is None:
        return None
    parsed = _split_original(original)
    headers, headers_cut = _printable_header_lines(parsed.header_lines)
    cut_note = " Some of its header lines were left out because there were too many." if (
        headers_cut
    ) else ""
    if full and not parsed.problems and not headers_cut:
        kept: list[str] = []
        size = 0
        truncated = False
        for line in parsed.body_lines:
            if size + len(line) + 2 > max_body:
                truncated = True
                break
            kept.append(line.decode("ascii"))
            size += len(line) + 2
        body = "\n".join([*headers, "", *kept])
        if truncated:
            note = (
                f"The original {what} is attached below; its body was cut to the first "
                f"{size} bytes."
            )
        else:
            note = f"The original {what} is attached below."
        return _Returned("message/rfc822", f"Original {what}", body, note)
    if full and parsed.problems:
        reason = "; ".join(parsed.problems)
        if headers:
            note = (
                f"Only the headers of the original {what} are attached below, because "
                f"{reason}."
            )
        else:
            note = f"The original {what} could not be attached, because {reason}."
    elif headers:
        note = f"The headers of the original {what} are attached below."
    else:
        note = f"The original {what} has no header section that could be attached."
    return _Returned(
        "text/rfc822-headers",
        f"Headers of the original {what}",
        "\n".join(headers),
        note + cut_note,
        attach=bool(headers),
    )


# --- MIME assembly ------------------------------------------------------------------------


@dataclass
class _Part:
    headers: list[str]
    body: str
    exact: bool = False  # body ends with exactly the one line end the delimiter takes


def _text_part(text: str, description: str) -> _Part:
    """text/plain, 7-bit when it can be, else UTF-8 quoted-printable (never 8-bit)."""
    lines = text.split("\n")
    if text.isascii() and all(len(line) <= MAX_LINE for line in lines):
        return _Part(
            [
                f"Content-Description: {description}",
                "Content-Type: text/plain; charset=us-ascii",
                "Content-Transfer-Encoding: 7bit",
            ],
            text,
        )
    encoded = quopri.encodestring(text.encode("utf-8")).decode("ascii")
    return _Part(
        [
            f"Content-Description: {description}",
            "Content-Type: text/plain; charset=utf-8",
            "Content-Transfer-Encoding: quoted-printable",
        ],
        encoded,
    )


def _choose_boundary(seed: str, host: str, parts: Iterable[_Part]) -> str:
    """A deterministic boundary (stable golden files) that occurs in no part."""
    text = "\n".join(part.body for part in parts)
    digest = hashlib.sha256(seed.encode("utf-8")).hexdigest()
    for attempt in range(100):
        boundary = f"{digest[:16].upper()}.{attempt}/{host}"
        if boundary not in text:
            return boundary
    raise RuntimeError("could not find a MIME boundary")  # pragma: no cover


def _layout(top: list[str], parts: list[_Part], *, content_type: str, boundary: str) -> list[str]:
    """The message as lines (an element may hold folded lines separated by ``\\n``)."""
    out = [
        *top,
        "MIME-Version: 1.0",
        f"Content-Type: {content_type};",
        f' boundary="{boundary}"',
        "Content-Transfer-Encoding: 7bit",
        "",
        "This is a MIME-encapsulated message.",
        "",
    ]
    for part in parts:
        body = part.body[:-1] if part.exact else part.body.rstrip("\n")
        out += [f"--{boundary}", *part.headers, "", body, ""]
    out.append(f"--{boundary}--")
    return out


def _assemble(
    top: list[str], parts: list[_Part], *, content_type: str, seed: str, host: str
) -> EmailMessage:
    boundary = _choose_boundary(seed, host, parts)
    out = _layout(top, parts, content_type=content_type, boundary=boundary)
    # ASCII except for an SMTPUTF8 To: address, which needs an SMTPUTF8 relay anyway.
    raw = ("\r\n".join(out) + "\r\n").encode("utf-8")
    message = BytesParser(policy=POLICY).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


_PLAIN_FIELD: Final = re.compile(r"[!-9;-~]+: [^ \t]")
_CONTAINER_TYPE: Final = re.compile(r"content-type: *(multipart|message)", re.IGNORECASE)


def _regenerated_as_is(source: str) -> str | None:
    """What parsing ``source`` (a returned original, ``\\n`` line ends) and generating it
    again gives, when that is known without doing it: a message that is not a MIME
    container, whose fields are all ``Name: value`` (one space, the way the generator
    writes them back). None otherwise."""
    head, separator, _ = source.partition("\n\n")
    lines = (head if separator else source[:-1]).split("\n")
    if not lines or lines[0][:1] in (" ", "\t"):
        return None
    for line in lines:
        if line[:1] in (" ", "\t"):
            continue
        if not _PLAIN_FIELD.match(line) or _CONTAINER_TYPE.match(line):
            return None
    # a message with no body gets the empty line that ends its header section
    return source if separator else source + "\n"


def _assemble_bytes(
    top: list[str], parts: list[_Part], *, content_type: str, seed: str, host: str
) -> bytes:
    """``to_bytes(_assemble(...))``, without parsing the whole text back and generating it.

    The generator writes everything this module produces unchanged (headers as written,
    ``refold_source="none"``; bodies with CRLF line ends) except a returned
    ``message/rfc822``, which it regenerates from its parse. So only that part goes
    through the parser and generator, on its own, and the rest is joined with CRLF.
    Text with a CR of its own takes the slow path, which gives the same bytes by
    definition. ``tests/notifier/test_dsn_bytes.py`` holds the two paths equal.
    """
    boundary = _choose_boundary(seed, host, parts)
    canonical: list[_Part] = []
    for part in parts:
        if "Content-Type: message/rfc822" in part.headers:
            source = part.body.rstrip("\n") + "\n"
            body = _regenerated_as_is(source)
            if body is None:
                body = _regenerated_in_place(part.headers, source, content_type, boundary)
            if body is None or "\r" in part.body:
                return to_bytes(_assemble(top, parts, content_type=content_type, seed=seed, host=host))
            canonical.append(_Part(part.headers, body, exact=True))
        else:
            canonical.append(part)
    text = "\n".join(_layout(top, canonical, content_type=content_type, boundary=boundary)) + "\n"
    if "\r" in text:
        return to_bytes(_assemble(top, parts, content_type=content_type, seed=seed, host=host))
    return text.replace("\n", "\r\n").encode("utf-8", "surrogateescape")


def _regenerated_in_place(
    headers: list[str], source: str, content_type: str, boundary: str
) -> str | None:
    """What the generator writes for a returned ``message/rfc822`` part's content, from
    a multipart holding only that part: it is parsed in the same surroundings as in the
    whole DSN (the same boundary, the closing delimiter after it), which is what decides
    where a malformed original ends, without parsing the DSN's other parts."""
    part_head = f"--{boundary}\n" + "\n".join(headers) + "\n\n"
    tail = f"\n--{boundary}--\n"
    wrapper = f'Content-Type: {content_type};\n boundary="{boundary}"\n\n{part_head}{source}{tail}'
    raw = wrapper.replace("\n", "\r\n").encode("utf-8")
    parsed = BytesParser(policy=POLICY).parsebytes(raw)
    if any(p.defects for p in parsed.walk()):
        return None  # a malformed original: only the whole-message generator says what it writes
    flat = to_bytes(parsed).decode("utf-8", "surrogateescape")
    if "\n" in flat.replace("\r\n", ""):
        return None
    flat = flat.replace("\r\n", "\n")
    start = flat.find(part_head)
    if start < 0 or not flat.endswith(tail):
        return None
    body = flat[start + len(part_head) : -len(tail)]
    return body if body.endswith("\n") else None


def _top_headers(
    *,
    host: str,
    to: str,
    subject: str,
    now: datetime | None,
    message_id: str | None,
    auto_submitted: str,
) -> list[str]:
    when = now or datetime.now(UTC)
    if message_id is None:
        message_id = email.utils.make_msgid(domain=host)
    message_id = one_line(message_id).replace(" ", "")
    if not message_id.startswith("<"):
        message_id = f"<{message_id}>"
    return [
        f"From: Mail Delivery System <MAILER-DAEMON@{host}>",
        f"To: {to}",
        fold("Subject", subject),
        f"Date: {_date(when)}",
        f"Message-ID: {message_id}",
        f"Auto-Submitted: {auto_submitted}",
    ]


def to_bytes(message: EmailMessage, *, linesep: str = "\r\n") -> bytes:
    """The message as octets for SMTP (CRLF) or for files (``linesep="\\n"``)."""
    buffer = BytesIO()
    BytesGenerator(buffer, policy=POLICY.clone(linesep=linesep)).flatten(message)
    return buffer.getvalue()


# --- per-recipient wording ----------------------------------------------------------------


def _program_ran(rcpt: EventRecipient) -> bool:
    return rcpt.timed_out or rcpt.signal is not None or rcpt.exit_status is not None


def _program_label(rcpt: EventRecipient) -> str:
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
    prog = _program_label(rcpt)
    if rcpt.action == "delivered":
        return f'delivered to the program "{prog}"' if rcpt.program else "delivered"
    if rcpt.timed_out:
        return f'the program "{prog}" did not finish within its time limit and was stopped'
    if rcpt.signal is not None:
        return f'the program "{prog}" was killed by signal {rcpt.signal} ' + (
            f"({_signal_name(rcpt.signal)})"
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
        for line in _text_lines(rcpt.output_excerpt, max_lines=None, max_chars=300)
        if line.strip()
    ]
    if rcpt.action == "delivered":
        text = one_line(rcpt.diagnostic) or (
            f"delivered to program {_program_label(rcpt)}" if rcpt.program else "delivered"
        )
    elif _program_ran(rcpt):
        prog = _program_label(rcpt)
        if rcpt.timed_out:
            text = f"program {prog} timed out"
        elif rcpt.signal is not None:
            text = f"program {prog} killed by signal {rcpt.signal} ({_signal_name(rcpt.signal)})"
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


def should_send_dsn(event: Event) -> bool:
    """RFC 3461/SPEC §4: never to ``<>``, never for NOTIFY=NEVER, else per NOTIFY keyword."""
    wanted = {"bounce": "FAILURE", "delayed": "DELAY", "delivered": "SUCCESS"}.get(event.kind)
    notify = event.envelope.notify
    return bool(wanted) and event.envelope.sender != "" and "NEVER" not in notify and (
        wanted in notify
    )


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


def _wrap(text: str, width: int = 72, indent: str = "") -> list[str]:
    lines: list[str] = []
    current = ""
    for word in text.split():
        if current and len(indent) + len(current) + 1 + len(word) > width:
            lines.append(indent + current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    if current:
        lines.append(indent + current)
    return lines


def _human_text(
    event: Event, returned: _Returned | None, *, host: str, include_output: bool
) -> str:
    count = len(event.recipients)
    whom = "recipient" if count == 1 else f"{count} recipients"
    lines = [f"This is the mail delivery system at {host}.", ""]
    lines += _wrap(_INTROS[event.kind].format(whom=whom))
    lines.append("")
    advice: list[str] = []
    for rcpt in event.recipients:
        lines.append(f"<{rcpt.address}>")
        if rcpt.orcpt:
            lines.append(f"    Originally addressed as: {_orcpt_field(rcpt.orcpt).split('; ', 1)[-1]}")
        lines += _wrap(
            "What happened: " + describe_result(rcpt, include_output=include_output) + ".",
            indent="    ",
            width=76,
        )
        lines.append(
            f"    Status: {rcpt.status} ({describe_class(rcpt.status)}: "
            f"{describe_status(rcpt.status)})"
        )
        if rcpt.action == "delayed" and rcpt.will_retry_until is not None:
            lines.append(f"    Retried until: {_date(rcpt.will_retry_until)}")
        if include_output and rcpt.action != "delivered":
            output = _text_lines(
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
        wrapped = _wrap(tip, indent="      " if len(advice) > 1 else "    ", width=76)
        if len(advice) > 1:
            wrapped[0] = "    - " + wrapped[0].lstrip()
        lines += wrapped
    lines.append("")
    if returned is not None:
        lines += _wrap(returned.note)
    else:
        lines += _wrap("The original message is no longer available and is not attached.")
    return "\n".join(lines) + "\n"


def _delivery_status(event: Event, *, host: str, include_output: bool) -> str:
    envelope = event.envelope
    block = []  # field order of RFC 3464 §2.2: extension fields last
    if envelope.envid:
        block.append(fold("Original-Envelope-Id", _envid_field(envelope.envid)))
    block += [
        f"Reporting-MTA: dns; {host}",
        f"Arrival-Date: {_date(envelope.arrival_date)}",
        f"X-Mailexec-Message-ID: {event.message_id}",
    ]
    blocks = ["\n".join(block)]
    for rcpt in event.recipients:
        fields = []
        if rcpt.orcpt:
            fields.append(fold("Original-Recipient", _orcpt_field(rcpt.orcpt)))
        fields += [
            fold("Final-Recipient", _recipient_field(rcpt.address)),
            f"Action: {rcpt.action}",
            f"Status: {rcpt.status}",
            fold(
                "Diagnostic-Code",
                "X-mailexec; " + diagnostic_text(rcpt, include_output=include_output),
            ),
            f"Last-Attempt-Date: {_date(rcpt.last_attempt)}",
        ]
        if rcpt.action == "delayed" and rcpt.will_retry_until is not None:
            fields.append(f"Will-Retry-Until: {_date(rcpt.will_retry_until)}")
        blocks.append("\n".join(fields))
    return "\n\n".join(blocks)


def _returned_parts(returned: _Returned | None) -> list[_Part]:
    """The part carrying the original message or its headers, when there is one."""
    if returned is None or not returned.attach:
        return []
    return [
        _Part(
            [f"Content-Description: {returned.description}", f"Content-Type: {returned.content_type}"],
            returned.body,
        )
    ]


@dataclass
class _Layout:
    top: list[str]
    parts: list[_Part]
    content_type: str
    seed: str
    host: str


def _dsn_layout(
    event: Event,
    original: bytes | None,
    *,
    reporting_mta: str,
    max_returned_body_bytes: int,
    include_output: bool,
    now: datetime | None,
    message_id: str | None,
) -> _Layout:
    if event.kind not in SUBJECTS:
        raise ValueError(f"no DSN for {event.kind} events")
    sender = event.envelope.sender
    if sender == "":
        raise ValueError("no DSN to the null reverse-path")
    host = _check_host(reporting_mta)
    ret = event.envelope.ret
    full = ret == "FULL" or (ret is None and event.kind == "bounce")
    returned = _returned_content(original, full=full, max_body=max_returned_body_bytes)
    parts = [
        _text_part(
            _human_text(event, returned, host=host, include_output=include_output), "Notification"
        ),
        _Part(
            ["Content-Description: Delivery report", "Content-Type: message/delivery-status"],
            _delivery_status(event, host=host, include_output=include_output),
        ),
    ]
    parts.extend(_returned_parts(returned))
    top = _top_headers(
        host=host,
        to=validate_address(sender),
        subject=SUBJECTS[event.kind],
        now=now,
        message_id=message_id,
        auto_submitted="auto-replied",
    )
    return _Layout(
        top,
        parts,
        content_type="multipart/report; report-type=delivery-status",
        seed=f"{event.event_id}|{message_id}",
        host=host,
    )


def render_dsn(
    event: Event,
    original: bytes | None,
    *,
    reporting_mta: str,
    max_returned_body_bytes: int,
    include_output: bool,
    now: datetime | None = None,
    message_id: str | None = None,
) -> EmailMessage:
    """One RFC 3464 DSN for a ``bounce``, ``delayed`` or ``delivered`` event.

    All recipients of the event share one DSN, one per-recipient block each. RET=FULL
    returns the original (body capped), RET=HDRS its headers; without RET a bounce
    returns the original and delay/success reports only the headers (Postfix does the
    same). Raises ``ValueError`` for admin notices and a null sender: those never get
    a DSN (check :func:`should_send_dsn` first).
    """
    layout = _dsn_layout(
        event,
        original,
        reporting_mta=reporting_mta,
        max_returned_body_bytes=max_returned_body_bytes,
        include_output=include_output,
        now=now,
        message_id=message_id,
    )
    return _assemble(
        layout.top, layout.parts, content_type=layout.content_type, seed=layout.seed, host=layout.host
    )


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
    """``to_bytes(render_dsn(...))`` at a fraction of the cost: what the consumer stores.

    The same bytes, built without parsing the DSN back into an ``EmailMessage`` and
    generating it again (that round trip was most of the cost of a DSN).
    """
    layout = _dsn_layout(
        event,
        original,
        reporting_mta=reporting_mta,
        max_returned_body_bytes=max_returned_body_bytes,
        include_output=include_output,
        now=now,
        message_id=message_id,
    )
    return _assemble_bytes(
        layout.top, layout.parts, content_type=layout.content_type, seed=layout.seed, host=layout.host
    )


# --- postmaster notices -------------------------------------------------------------------

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
    prog = _program_label(rcpt)
    if rcpt.timed_out:
        return f"{prog} timed out"
    if rcpt.signal is not None:
        return f"{prog} killed by {_signal_name(rcpt.signal)}"
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
        return f"mailexec: program delivery failed for {who} ({_subject_text(_run_summary(first))})"
    if reason is NoticeReason.UNRESOLVED_PROGRAM and first is not None and first.program:
        prog = _subject_text(first.program)
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
    lines = _wrap(text, width=62) or [""]
    head = f"{label + ':':<14}{lines[0]}"
    return [head, *(" " * 14 + line for line in lines[1:])]


def _notice_text(event: Event, host: str, returned: _Returned | None) -> str:
    notice = event.notice
    assert notice is not None
    envelope = event.envelope
    lines = [f"This is the mailexec notifier at {host}.", ""]
    lines += _wrap("What happened: " + _NOTICE_WHAT[notice.reason])
    lines += [
        "",
        f"Reason:       {notice.reason.value}",
        f"Message id:   {event.message_id or 'unknown'}",
        f"Sender:       <{envelope.sender}>",
        f"Received:     {_date(envelope.arrival_date)}",
        f"Reported:     {_date(event.occurred_at)}",
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
        output = _text_lines(rcpt.output_excerpt, max_lines=None, max_chars=MAX_LINE - 20)
        if output:
            lines.append("Output (as captured):")
            lines += [f"    | {line}".rstrip() for line in output]
        else:
            lines.append("Output:       (none)")
    lines += ["", "What to do:"]
    lines += _wrap(_NOTICE_TODO[notice.reason], indent="    ", width=76)
    if returned is not None:
        lines += ["", *_wrap(returned.note)]
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
    host = _check_host(reporting_mta)
    returned = _returned_content(original_headers, full=False, max_body=0)
    parts = [_text_part(_notice_text(event, host, returned), "Postmaster notice")]
    parts.extend(_returned_parts(returned))
    top = _top_headers(
        host=host,
        to=validate_address(postmaster),
        subject=_notice_subject(event, event.notice.reason),
        now=now,
        message_id=message_id,
        auto_submitted="auto-generated",
    )
    top.append(f"X-Mailexec-Notice: {event.notice.reason.value}")
    return _assemble(
        top, parts, content_type="multipart/mixed", seed=f"{event.event_id}|{message_id}", host=host
    )


def render_undeliverable_dsn_notice(
    dsn: bytes | EmailMessage,
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
    host = _check_host(reporting_mta)
    raw = to_bytes(dsn) if isinstance(dsn, EmailMessage) else dsn
    parsed = BytesParser(policy=POLICY).parsebytes(raw, headersonly=True)
    recipient = one_line(str(parsed.get("To", ""))) or "(unknown)"
    subject = one_line(str(parsed.get("Subject", ""))) or "(no subject)"
    returned = _returned_content(
        raw, full=True, max_body=max_returned_body_bytes, what="notification"
    )
    lines = [f"This is the mailexec notifier at {host}.", ""]
    lines += _wrap(
        f"A delivery status notification for {recipient} could not be delivered: the mail "
        "relay refused it permanently. It will not be retried, and no further "
        "notification is sent about it (that could loop)."
    )
    lines += ["", f"Notification subject: {subject}"]
    lines += _wrap("Relay answer: " + one_line(smtp_error), width=76)
    lines += ["", "What to do:"]
    lines += _wrap(
        "Check the relay's answer. A sender address that does not accept mail is common "
        "and needs no action; a relay that refuses all notifications needs its "
        "configuration fixed (MAILEXEC_SMTP_URL).",
        indent="    ",
        width=76,
    )
    if returned is not None:
        lines += ["", *_wrap(returned.note)]
    parts = [_text_part("\n".join(lines) + "\n", "Postmaster notice")]
    parts.extend(_returned_parts(returned))
    top = _top_headers(
        host=host,
        to=validate_address(postmaster),
        subject=f"mailexec: undeliverable delivery status notification to {_subject_text(recipient)}",
        now=now,
        message_id=message_id,
        auto_submitted="auto-generated",
    )
    top.append("X-Mailexec-Notice: undeliverable_dsn")
    seed = hashlib.sha256(raw).hexdigest()
    return _assemble(top, parts, content_type="multipart/mixed", seed=seed, host=host)
