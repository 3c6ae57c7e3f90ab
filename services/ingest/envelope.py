"""The SMTP envelope of a submission (query parameters of ``POST /v1/messages``).

Validated before a single body byte is read, so a bad envelope costs nothing. Every
problem is a :class:`shared.errors.BadRequest` naming the parameter and what to fix.
RFC 3461 rules: ``NOTIFY`` is ``NEVER`` alone or a set of ``SUCCESS``, ``FAILURE``,
``DELAY`` (default ``FAILURE,DELAY``); ``RET`` is ``FULL`` or ``HDRS``; ``ENVID`` is
xtext of at most 100 characters (kept encoded, as it travels in DSNs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shared.addresses import AddressError, parse_mailbox, parse_recipient
from shared.errors import BadRequest

MAX_RECIPIENTS = 1000
MAX_ENVID_CHARS = 100
DEFAULT_NOTIFY = ("FAILURE", "DELAY")
NOTIFY_ORDER = ("SUCCESS", "FAILURE", "DELAY")
# xtext: printable US-ASCII except "+" and "=", or "+" followed by two upper-case hex digits.
_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*")


@dataclass(frozen=True, slots=True)
class Recipient:
    address: str  # canonical form, as the MTA spelled the local part
    account: str  # lower-cased: the policy.accounts key


@dataclass(frozen=True, slots=True)
class Envelope:
    sender: str  # "" is the null reverse-path
    recipients: tuple[Recipient, ...]
    envid: str | None
    ret: str | None
    notify: tuple[str, ...]


def _notify(raw: str | None) -> tuple[str, ...]:
    if raw is None:
        return DEFAULT_NOTIFY
    words = {w.strip().upper() for w in raw.split(",")}
    if not raw.strip() or "" in words:
        raise BadRequest(
            "notify: empty keyword; use NEVER or a comma list of SUCCESS, FAILURE, DELAY",
            code="bad_notify",
        )
    unknown = words - {"NEVER", *NOTIFY_ORDER}
    if unknown:
        raise BadRequest(
            f"notify: unknown keyword {', '.join(sorted(unknown))}; use NEVER or a comma "
            "list of SUCCESS, FAILURE, DELAY (RFC 3461)",
            code="bad_notify",
        )
    if "NEVER" in words:
        if len(words) > 1:
            raise BadRequest(
                "notify: NEVER cannot be combined with SUCCESS, FAILURE or DELAY (RFC 3461)",
                code="bad_notify",
            )
        return ("NEVER",)
    return tuple(w for w in NOTIFY_ORDER if w in words)


def _ret(raw: str | None) -> str | None:
    if raw is None:
        return None
    value = raw.strip().upper()
    if value not in ("FULL", "HDRS"):
        raise BadRequest(f"ret: {raw!r} is not FULL or HDRS", code="bad_ret")
    return value


def _envid(raw: str | None) -> str | None:
    if raw is None or raw == "":
        return None
    if len(raw) > MAX_ENVID_CHARS:
        raise BadRequest(
            f"envid: longer than {MAX_ENVID_CHARS} characters (RFC 3461)", code="bad_envid"
        )
    if not _XTEXT.fullmatch(raw):
        raise BadRequest(
            "envid: not xtext (printable ASCII without spaces and '='; '+' only as +XX hex, "
            "sent percent-encoded as %2B in the query string)",
            code="bad_envid",
        )
    return raw


def parse_envelope(
    sender: str | None,
    to: list[str],
    envid: str | None = None,
    ret: str | None = None,
    notify: str | None = None,
) -> Envelope:
    """Validate the query parameters; duplicate recipients (same account) collapse."""
    if sender is None:
        raise BadRequest(
            "from: missing; pass from= (empty) for the null reverse-path <>", code="bad_sender"
        )
    try:
        canonical_sender = parse_mailbox(sender)
    except AddressError as exc:
        raise BadRequest(f"from: {exc}", code="bad_sender") from None
    if not to:
        raise BadRequest("to: at least one recipient is required", code="no_recipients")
    if len(to) > MAX_RECIPIENTS:
        raise BadRequest(
            f"to: {len(to)} recipients; at most {MAX_RECIPIENTS} per message (split it)",
            code="too_many_recipients",
        )
    seen: dict[str, Recipient] = {}
    for raw in to:
        try:
            address = parse_recipient(raw)
        except AddressError as exc:
            raise BadRequest(f"to: {exc}", code="bad_recipient") from None
        account = address.lower()
        if account not in seen:
            seen[account] = Recipient(address=address, account=account)
    return Envelope(
        sender=canonical_sender,
        recipients=tuple(seen.values()),
        envid=_envid(envid),
        ret=_ret(ret),
        notify=_notify(notify),
    )
