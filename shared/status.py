"""Outcomes, failure kinds and the one table that maps them to RFC 3463 status codes.

Why one table: the executor decides what happened, the notifier explains it, and the
status code a sender's bounce processor sees must not depend on which of them wrote
the code path. Every member of :class:`Outcome` and :class:`FailureKind` has exactly
one row in :data:`STATUS_TABLE` (a test enforces it), like Postfix's
``src/global/sys_exits.c`` is the one place that maps sendmail exit codes.

Program exit codes follow ``sys_exits.c`` exactly (:data:`SYSEXITS`), including its
soft errors (EX_OSERR 71 and EX_TEMPFAIL 75 → ``4.3.0``); the codes, names and texts
themselves are :mod:`shared.sysexits`, the one table every process uses. Whether an exit defers or
bounces is the executor's setting ``tempfail_exit_codes``; :func:`failure_status`
applies it and forces the status class to match the outcome, as Postfix's pipe(8)
does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from shared import sysexits as sx

STATUS_RE: Final = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
_OUTPUT_STATUS_RE: Final = re.compile(rb"^([45])\.(\d{1,3})\.(\d{1,3})(?=[ \t\r\n]|$)")


class Outcome(StrEnum):
    """Final (or current) state of one recipient's delivery job."""

    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCED = "bounced"
    CORRUPT = "corrupt"  # the job body could not be parsed; nobody can be told but the admin


class FailureKind(StrEnum):
    """Why a delivery did not succeed (closed set; extend the table when adding one)."""

    UNKNOWN_ACCOUNT = "unknown_account"
    NOT_CONFIGURED = "not_configured"
    DISABLED = "disabled"
    SUSPENDED_EXPIRED = "suspended_expired"
    BAD_SHELL = "bad_shell"
    ROOT_WITHOUT_SAFE_USER = "root_without_safe_user"
    UNRESOLVED_PROGRAM = "unresolved_program"
    PROGRAM_EXIT = "program_exit"
    PROGRAM_SIGNAL = "program_signal"
    PROGRAM_TIMEOUT = "program_timeout"
    PROGRAM_OUTPUT = "program_output"
    MAIL_LOOP = "mail_loop"
    TEMPFAIL = "tempfail"
    POISON = "poison"


class NoticeReason(StrEnum):
    """Why the postmaster gets an admin notice (``Event.notice.reason``)."""

    PROGRAM_FAILED = "program_failed"
    DISABLED = "disabled"
    UNRESOLVED_PROGRAM = "unresolved_program"
    BAD_SHELL = "bad_shell"
    ROOT_WITHOUT_SAFE_USER = "root_without_safe_user"
    POISON = "poison"
    CORRUPT = "corrupt"


@dataclass(frozen=True, slots=True)
class StatusEntry:
    """One row of the table: the DSN status, the resulting outcome, the admin notice."""

    status: str
    outcome: Outcome
    notice: NoticeReason | None
    summary: str


_O = Outcome
_K = FailureKind
_N = NoticeReason

STATUS_TABLE: Final[dict[Outcome | FailureKind, StatusEntry]] = {
    _O.DELIVERED: StatusEntry("2.0.0", _O.DELIVERED, None, "delivered to all programs"),
    _O.DEFERRED: StatusEntry("4.0.0", _O.DEFERRED, None, "delivery deferred, will retry"),
    _O.BOUNCED: StatusEntry("5.0.0", _O.BOUNCED, None, "delivery failed permanently"),
    _O.CORRUPT: StatusEntry("5.3.0", _O.CORRUPT, _N.CORRUPT, "delivery job could not be parsed"),
    _K.UNKNOWN_ACCOUNT: StatusEntry("5.1.1", _O.BOUNCED, None, "no such account"),
    _K.NOT_CONFIGURED: StatusEntry(
        "5.3.0", _O.BOUNCED, None, "program delivery not configured for this account"
    ),
    _K.DISABLED: StatusEntry("5.3.0", _O.BOUNCED, _N.DISABLED, "program delivery is disabled"),
    # Postfix bounces expired mail with 4.4.7 and Action: failed; SPEC §3.2 does the same.
    _K.SUSPENDED_EXPIRED: StatusEntry(
        "4.4.7", _O.BOUNCED, None, "held while program delivery was suspended; queue lifetime expired"
    ),
    # sendmail refuses program mail for users without a valid shell with 5.7.1.
    _K.BAD_SHELL: StatusEntry(
        "5.7.1", _O.BOUNCED, _N.BAD_SHELL, "account owner's login shell is not a valid shell"
    ),
    _K.ROOT_WITHOUT_SAFE_USER: StatusEntry(
        "5.3.5", _O.BOUNCED, _N.ROOT_WITHOUT_SAFE_USER, "root-owned account and no safe user set"
    ),
    _K.UNRESOLVED_PROGRAM: StatusEntry(
        "5.3.0", _O.BOUNCED, _N.UNRESOLVED_PROGRAM, "program could not be resolved"
    ),
    _K.PROGRAM_EXIT: StatusEntry("5.3.0", _O.BOUNCED, _N.PROGRAM_FAILED, "program exited non-zero"),
    _K.PROGRAM_SIGNAL: StatusEntry(
        "5.3.0", _O.BOUNCED, _N.PROGRAM_FAILED, "program killed by a signal"
    ),
    _K.PROGRAM_TIMEOUT: StatusEntry(
        "5.3.0", _O.BOUNCED, _N.PROGRAM_FAILED, "program exceeded its time limit"
    ),
    _K.PROGRAM_OUTPUT: StatusEntry(
        "5.3.0", _O.BOUNCED, _N.PROGRAM_FAILED, "program wrote to stdout or stderr"
    ),
    _K.MAIL_LOOP: StatusEntry("5.4.6", _O.BOUNCED, None, "mail loop (Delivered-To seen)"),
    _K.TEMPFAIL: StatusEntry("4.3.0", _O.DEFERRED, None, "temporary failure, will retry"),
    _K.POISON: StatusEntry(
        "5.3.0", _O.BOUNCED, _N.POISON, "delivery job failed repeatedly (poison job)"
    ),
}


def entry_for(key: Outcome | FailureKind) -> StatusEntry:
    """The table row for an outcome or failure kind (KeyError means the table is incomplete)."""
    return STATUS_TABLE[key]


def status_for(key: Outcome | FailureKind) -> str:
    """The RFC 3463 status code for an outcome or failure kind."""
    return STATUS_TABLE[key].status


# --- sendmail exit codes, as Postfix src/global/sys_exits.c maps them ---------------------


@dataclass(frozen=True, slots=True)
class SysExit:
    code: int
    name: str
    status: str
    text: str


# sys_exits.c's DSN column; the names and texts are sysexits.h's (shared.sysexits)
_EXIT_STATUS: Final[dict[int, str]] = {
    sx.EX_USAGE: "5.3.0",
    sx.EX_DATAERR: "5.6.0",
    sx.EX_NOINPUT: "5.3.0",
    sx.EX_NOUSER: "5.1.1",
    sx.EX_NOHOST: "5.1.2",
    sx.EX_UNAVAILABLE: "5.3.0",
    sx.EX_SOFTWARE: "5.3.0",
    sx.EX_OSERR: "4.3.0",
    sx.EX_OSFILE: "5.3.0",
    sx.EX_CANTCREAT: "5.2.0",
    sx.EX_IOERR: "5.3.0",
    sx.EX_TEMPFAIL: "4.3.0",
    sx.EX_PROTOCOL: "5.5.0",
    sx.EX_NOPERM: "5.7.0",
    sx.EX_CONFIG: "5.3.5",
}
SYSEXITS: Final[dict[int, SysExit]] = {
    code: SysExit(code, name, _EXIT_STATUS[code], text)
    for code, (name, text) in sx.EXITS.items()
}
DEFAULT_EXIT_STATUS: Final = "5.3.0"
DEFAULT_TEMPFAIL_EXIT_CODES: Final = (sx.EX_OSERR, sx.EX_TEMPFAIL)


def status_for_exit(code: int) -> str:
    """Postfix ``sys_exits_detail(code)->dsn``: the table value, else ``5.3.0``."""
    entry = SYSEXITS.get(code)
    return entry.status if entry else DEFAULT_EXIT_STATUS


def describe_exit(code: int) -> str:
    """``"EX_DATAERR: data format error"``, or ``"unknown mail system error 3"`` (Postfix)."""
    entry = SYSEXITS.get(code)
    if entry is None:
        return f"unknown mail system error {code}"
    return f"{entry.name}: {entry.text}"


def status_from_output(text: str | bytes | None) -> str | None:
    """The enhanced status code a program's output starts with (``5.7.1 go away``).

    Only ``4.x.x`` and ``5.x.x`` count (a program can't claim success that way), the code
    must open the output and be followed by white space or the end, as Postfix's
    pipe(8) ``dsn_valid()`` check requires.
    """
    if not text:
        return None
    raw = text.encode("utf-8", "replace") if isinstance(text, str) else text
    match = _OUTPUT_STATUS_RE.match(raw)
    if match is None:
        return None
    return b".".join(match.groups()).decode("ascii")


def with_class(status: str, klass: str) -> str:
    """Replace the class digit: ``with_class("4.3.0", "5") == "5.3.0"``."""
    if not STATUS_RE.match(status) or klass not in ("2", "4", "5"):
        raise ValueError(f"bad status {status!r} or class {klass!r}")
    return klass + status[1:]


def failure_status(
    kind: FailureKind,
    *,
    exit_status: int | None = None,
    output: str | bytes | None = None,
    tempfail_exit_codes: tuple[int, ...] | list[int] | frozenset[int] = DEFAULT_TEMPFAIL_EXIT_CODES,
) -> tuple[Outcome, str]:
    """Outcome and status code for one failed program run (or other failure kind).

    Program failures: an exit code in ``tempfail_exit_codes`` defers with ``4.3.0``
    (SPEC §3.7). Otherwise the output's leading enhanced status code wins, else the
    sysexits table, and the class is forced to ``5`` so a bounce never carries a
    ``4.x.x`` code by accident (EX_OSERR removed from the tempfail list, say).
    """
    program_kinds = (
        FailureKind.PROGRAM_EXIT,
        FailureKind.PROGRAM_SIGNAL,
        FailureKind.PROGRAM_TIMEOUT,
        FailureKind.PROGRAM_OUTPUT,
    )
    if kind not in program_kinds:
        entry = STATUS_TABLE[kind]
        return entry.outcome, entry.status
    if kind is FailureKind.PROGRAM_EXIT and exit_status in tempfail_exit_codes:
        return Outcome.DEFERRED, status_for(FailureKind.TEMPFAIL)
    status = status_from_output(output)
    if status is None:
        if kind is FailureKind.PROGRAM_EXIT and exit_status is not None:
            status = status_for_exit(exit_status)
        else:
            status = status_for(kind)
    return Outcome.BOUNCED, with_class(status, "5")


# --- RFC 3463 texts ----------------------------------------------------------------------

CLASS_TEXT: Final[dict[str, str]] = {
    "2": "Success",
    "4": "Persistent transient failure",
    "5": "Permanent failure",
}

SUBJECT_TEXT: Final[dict[str, str]] = {
    "0": "Other or undefined status",
    "1": "Addressing status",
    "2": "Mailbox status",
    "3": "Mail system status",
    "4": "Network and routing status",
    "5": "Mail delivery protocol status",
    "6": "Message content or message media status",
    "7": "Security or policy status",
}

DETAIL_TEXT: Final[dict[str, str]] = {
    "0.0": "Other undefined status",
    "1.0": "Other address status",
    "1.1": "Bad destination mailbox address",
    "1.2": "Bad destination system address",
    "1.3": "Bad destination mailbox address syntax",
    "1.4": "Destination mailbox address ambiguous",
    "1.5": "Destination address valid",
    "1.6": "Destination mailbox has moved, no forwarding address",
    "1.7": "Bad sender's mailbox address syntax",
    "1.8": "Bad sender's system address",
    "2.0": "Other or undefined mailbox status",
    "2.1": "Mailbox disabled, not accepting messages",
    "2.2": "Mailbox full",
    "2.3": "Message length exceeds administrative limit",
    "2.4": "Mailing list expansion problem",
    "3.0": "Other or undefined mail system status",
    "3.1": "Mail system full",
    "3.2": "System not accepting network messages",
    "3.3": "System not capable of selected features",
    "3.4": "Message too big for system",
    "3.5": "System incorrectly configured",
    "4.0": "Other or undefined network or routing status",
    "4.1": "No answer from host",
    "4.2": "Bad connection",
    "4.3": "Directory server failure",
    "4.4": "Unable to route",
    "4.5": "Mail system congestion",
    "4.6": "Routing loop detected",
    "4.7": "Delivery time expired",
    "5.0": "Other or undefined protocol status",
    "5.1": "Invalid command",
    "5.2": "Syntax error",
    "5.3": "Too many recipients",
    "5.4": "Invalid command arguments",
    "5.5": "Wrong protocol version",
    "6.0": "Other or undefined media error",
    "6.1": "Media not supported",
    "6.2": "Conversion required and prohibited",
    "6.3": "Conversion required but not supported",
    "6.4": "Conversion with loss performed",
    "6.5": "Conversion failed",
    "7.0": "Other or undefined security status",
    "7.1": "Delivery not authorized, message refused",
    "7.2": "Mailing list expansion prohibited",
    "7.3": "Security conversion required but not possible",
    "7.4": "Security features not supported",
    "7.5": "Cryptographic failure",
    "7.6": "Cryptographic algorithm not supported",
    "7.7": "Message integrity failure",
}


def describe_status(status: str) -> str:
    """RFC 3463's text for a code (``5.1.1`` → "Bad destination mailbox address").

    Unknown details fall back to the subject's text, so any valid code has a description.
    """
    if not STATUS_RE.match(status):
        raise ValueError(f"not an enhanced status code: {status!r}")
    klass, subject, detail = status.split(".")
    text = DETAIL_TEXT.get(f"{int(subject)}.{int(detail)}")
    if text is None:
        text = SUBJECT_TEXT.get(str(int(subject)), "Other or undefined status")
    return text


def describe_class(status: str) -> str:
    """"Permanent failure" / "Persistent transient failure" / "Success"."""
    if not STATUS_RE.match(status):
        raise ValueError(f"not an enhanced status code: {status!r}")
    return CLASS_TEXT[status[0]]
