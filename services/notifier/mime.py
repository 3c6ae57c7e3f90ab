"""Text hygiene and MIME assembly shared by the DSNs (:mod:`services.notifier.dsn`) and
the postmaster notices (:mod:`services.notifier.notice_render`).

Pure: no network, no database, no clock unless ``now`` is omitted.

What it guarantees:
- :func:`one_line` and :func:`fold` give 7-bit printable header text, folded below 78
  columns where white space allows, that never contains CR or LF from event data
  (control characters are escaped as ``\\x1b``).
- A returned original that is not 7-bit clean (8-bit data, NUL, bare CR, lines over
  998 octets, no header section) is replaced by ``text/rfc822-headers`` with the
  headers that could be found, made printable, and the note says so
  (:func:`returned_content`). The header section is capped at
  :data:`MAX_RETURNED_HEADER_BYTES`, the body at the caller's limit, cut at a line
  boundary.
- Messages are built as text with explicit folding, so the golden files
  (``tests/notifier/golden``) are stable across Python versions. :func:`assemble_bytes`
  gives the SMTP octets (CRLF) directly; :func:`assemble` parses the text back into an
  :class:`email.message.EmailMessage`, and :func:`to_bytes` serialises one.
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

POLICY: Final = email_policy.SMTP.clone(refold_source="none")
MAX_RETURNED_HEADER_BYTES: Final = 256 * 1024
MAX_LINE: Final = 998
FOLD_WIDTH: Final = 78

_HOSTNAME_RE: Final = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_FIELD_RE: Final = re.compile(rb"^[\x21-\x39\x3b-\x7e]+[ \t]*:")


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


def text_lines(text: str, *, max_lines: int | None, max_chars: int) -> list[str]:
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


def format_date(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return email.utils.format_datetime(value)


def subject_text(text: str) -> str:
    """A subject fragment that no mail reader will decode as an RFC 2047 encoded-word."""
    return one_line(text).replace("=?", "= ?")


def check_host(reporting_mta: str) -> str:
    if not _HOSTNAME_RE.match(reporting_mta):
        raise ValueError(f"reporting_mta is not a host name: {reporting_mta!r}")
    return reporting_mta


def signal_name(number: int) -> str:
    try:
        return signal_module.Signals(number).name
    except ValueError:
        return f"signal {number}"


def wrap(text: str, width: int = 72, indent: str = "") -> list[str]:
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
class Returned:
    """What goes into the third part and what the text part says about it."""

    content_type: str
    description: str
    body: str
    note: str
    attach: bool = True


def returned_content(
    original: bytes | None, *, full: bool, max_body: int, what: str = "message"
) -> Returned | None:
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
        return Returned("message/rfc822", f"Original {what}", body, note)
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
    return Returned(
        "text/rfc822-headers",
        f"Headers of the original {what}",
        "\n".join(headers),
        note + cut_note,
        attach=bool(headers),
    )


# --- MIME assembly ------------------------------------------------------------------------


@dataclass
class Part:
    headers: list[str]
    body: str
    exact: bool = False  # body ends with exactly the one line end the delimiter takes


def text_part(text: str, description: str) -> Part:
    """text/plain, 7-bit when it can be, else UTF-8 quoted-printable (never 8-bit)."""
    lines = text.split("\n")
    if text.isascii() and all(len(line) <= MAX_LINE for line in lines):
        return Part(
            [
                f"Content-Description: {description}",
                "Content-Type: text/plain; charset=us-ascii",
                "Content-Transfer-Encoding: 7bit",
            ],
            text,
        )
    encoded = quopri.encodestring(text.encode("utf-8")).decode("ascii")
    return Part(
        [
            f"Content-Description: {description}",
            "Content-Type: text/plain; charset=utf-8",
            "Content-Transfer-Encoding: quoted-printable",
        ],
        encoded,
    )


def _choose_boundary(seed: str, host: str, parts: Iterable[Part]) -> str:
    """A deterministic boundary (stable golden files) that occurs in no part."""
    text = "\n".join(part.body for part in parts)
    digest = hashlib.sha256(seed.encode("utf-8")).hexdigest()
    for attempt in range(100):
        boundary = f"{digest[:16].upper()}.{attempt}/{host}"
        if boundary not in text:
            return boundary
    raise RuntimeError("could not find a MIME boundary")  # pragma: no cover


def _layout(top: list[str], parts: list[Part], *, content_type: str, boundary: str) -> list[str]:
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


def assemble(
    top: list[str], parts: list[Part], *, content_type: str, seed: str, host: str
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


def assemble_bytes(
    top: list[str], parts: list[Part], *, content_type: str, seed: str, host: str
) -> bytes:
    """``to_bytes(assemble(...))``, without parsing the whole text back and generating it.

    The generator writes everything this module produces unchanged (headers as written,
    ``refold_source="none"``; bodies with CRLF line ends) except a returned
    ``message/rfc822``, which it regenerates from its parse. So only that part goes
    through the parser and generator, on its own, and the rest is joined with CRLF.
    Text with a CR of its own, or a returned original the parser finds defects in, goes
    through :func:`assemble` and :func:`to_bytes` whole: they define the bytes. The
    golden files (``tests/notifier/golden``) have a case for each of the three ways.
    """
    boundary = _choose_boundary(seed, host, parts)
    canonical: list[Part] = []
    for part in parts:
        if "Content-Type: message/rfc822" in part.headers:
            source = part.body.rstrip("\n") + "\n"
            body = _regenerated_as_is(source)
            if body is None:
                body = _regenerated_in_place(part.headers, source, content_type, boundary)
            if body is None or "\r" in part.body:
                return to_bytes(assemble(top, parts, content_type=content_type, seed=seed, host=host))
            canonical.append(Part(part.headers, body, exact=True))
        else:
            canonical.append(part)
    text = "\n".join(_layout(top, canonical, content_type=content_type, boundary=boundary)) + "\n"
    if "\r" in text:
        return to_bytes(assemble(top, parts, content_type=content_type, seed=seed, host=host))
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


def top_headers(
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
        f"Date: {format_date(when)}",
        f"Message-ID: {message_id}",
        f"Auto-Submitted: {auto_submitted}",
    ]


def to_bytes(message: EmailMessage, *, linesep: str = "\r\n") -> bytes:
    """The message as octets for SMTP (CRLF) or for files (``linesep="\\n"``)."""
    buffer = BytesIO()
    BytesGenerator(buffer, policy=POLICY.clone(linesep=linesep)).flatten(message)
    return buffer.getvalue()


def returned_parts(returned: Returned | None) -> list[Part]:
    """The part carrying the original message or its headers, when there is one."""
    if returned is None or not returned.attach:
        return []
    return [
        Part(
            [f"Content-Description: {returned.description}", f"Content-Type: {returned.content_type}"],
            returned.body,
        )
    ]
