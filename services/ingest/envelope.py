"""The SMTP envelope of a submission: query parameters of ``POST /v1/messages``, or the
``MAIL``/``RCPT`` commands of an LMTP transaction (``lmtp.py``); one set of rules for both.

Validated before a single body byte is read, so a bad envelope costs nothing. Every
problem is a :class:`shared.errors.BadRequest` naming the parameter and what to fix.
RFC 3461 rules: ``NOTIFY`` is ``NEVER`` alone or a set of ``SUCCESS``, ``FAILURE``,
``DELAY`` (default ``FAILURE,DELAY``); ``RET`` is ``FULL`` or ``HDRS``; ``ENVID`` is
xtext of at most 100 characters and ``ORCPT`` is ``addr-type;xtext`` (both kept encoded,
as they travel in DSNs). NOTIFY and ORCPT belong to a recipient (LMTP gives them per
``RCPT``); HTTP's ``notify=`` applies to every recipient of the POST.

Recipients: valid in SMTP (:func:`shared.addresses.parse_recipient`) and, to be
delivered, an account key (:func:`shared.addresses.normalize_account`, the grammar policy
applies to account addresses). A recipient no account can ever have (UTF-8, a local part
that needs quotes, a ``/``) is refused at once: 400 ``bad_recipient`` over HTTP, ``550
5.1.1`` at LMTP's RCPT (``recipients.AccountCheck`` answers it without asking policy).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from shared.addresses import (
    AddressError,
    account_problem,
    normalize_account,
    parse_mailbox,
    parse_recipient,
)
from shared.errors import BadRequest

# Who may submit an envelope: the HTTP route, its fast path and LMTP's AUTH all check this.
SUBMIT_ROLES = ("mta", "admin")
MAX_RECIPIENTS = 1000
MAX_ENVID_CHARS = 100
MAX_ORCPT_CHARS = 500
DEFAULT_NOTIFY = ("FAILURE", "DELAY")
NOTIFY_ORDER = ("SUCCESS", "FAILURE", "DELAY")
# xtext: printable US-ASCII except "+" and "=", or "+" followed by two upper-case hex digits.
_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*")
_ORCPT = re.compile(r"([A-Za-z0-9][A-Za-z0-9-]*);(.+)")


@dataclass(frozen=True, slots=True)
class Recipient:
    address: str  # canonical form, as the MTA spelled the local part
    account: str  # the policy.accounts key (normalize_account); "" if no account can have it
    notify: tuple[str, ...] | None = None  # RFC 3461 NOTIFY of this recipient; None: the message's
    orcpt: str | None = None  # RFC 3461 ORCPT as given (addr-type;xtext)


@dataclass(frozen=True, slots=True)
class Envelope:
    sender: str  # "" is the null reverse-path
    recipients: tuple[Recipient, ...]
    envid: str | None
    ret: str | None
    notify: tuple[str, ...]


def parse_notify(raw: str | None) -> tuple[str, ...]:
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


def parse_ret(raw: str | None) -> str | None:
    if raw is None:
        return None
    value = raw.strip().upper()
    if value not in ("FULL", "HDRS"):
        raise BadRequest(f"ret: {raw!r} is not FULL or HDRS", code="bad_ret")
    return value


def parse_envid(raw: str | None) -> str | None:
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


def parse_orcpt(raw: str | None) -> str | None:
    """RFC 3461 ORCPT ``addr-type;xtext`` (e.g. ``rfc822;bob@example.org``), kept encoded."""
    if raw is None:
        return None
    match = _ORCPT.fullmatch(raw)
    if len(raw) > MAX_ORCPT_CHARS or match is None or not _XTEXT.fullmatch(match.group(2)):
        raise BadRequest(
            "orcpt: not addr-type;xtext (e.g. rfc822;bob@example.org, '+' and '=' as +2B and "
            f"+3D), at most {MAX_ORCPT_CHARS} characters (RFC 3461)",
            code="bad_orcpt",
        )
    return raw


def parse_sender(sender: str) -> str:
    try:
        return parse_mailbox(sender)
    except AddressError as exc:
        raise BadRequest(f"from: {exc}", code="bad_sender") from None


def make_recipient(raw: str, *, notify: tuple[str, ...] | None = None,
                   orcpt: str | None = None) -> Recipient:
    try:
        address = parse_recipient(raw)
    except AddressError as exc:
        raise BadRequest(f"to: {exc}", code="bad_recipient") from None
    try:
        account = normalize_account(address)
    except AddressError:
        account = ""  # valid in SMTP; HTTP refuses it below, LMTP with 550 5.1.1
    return Recipient(address=address, account=account, notify=notify, orcpt=orcpt)


def account_filter(raw: str | None) -> str | None:
    """A ``recipient=`` filter of the message listings as the account key it names (any
    spelling of the address), None when absent; 400 if no account can have it."""
    if not raw:
        return None
    try:
        return normalize_account(raw)
    except AddressError as exc:
        raise BadRequest(f"recipient: {exc}", code="bad_recipient") from None


def parse_envelope(
    sender: str | None,
    to: list[str],
    envid: str | None = None,
    ret: str | None = None,
    notify: str | None = None,
) -> Envelope:
    """Validate the query parameters; duplicate recipients (same account) collapse, and
    a recipient no account can have is refused."""
    if sender is None:
        raise BadRequest(
            "from: missing; pass from= (empty) for the null reverse-path <>", code="bad_sender"
        )
    canonical_sender = parse_sender(sender)
    if not to:
        raise BadRequest("to: at least one recipient is required", code="no_recipients")
    if len(to) > MAX_RECIPIENTS:
        raise BadRequest(
            f"to: {len(to)} recipients; at most {MAX_RECIPIENTS} per message (split it)",
            code="too_many_recipients",
        )
    seen: dict[str, Recipient] = {}
    for raw in to:
        rcpt = make_recipient(raw)
        if not rcpt.account:
            raise BadRequest(f"to: {account_problem(rcpt.address)}", code="bad_recipient")
        seen.setdefault(rcpt.account, rcpt)
    return Envelope(
        sender=canonical_sender,
        recipients=tuple(seen.values()),
        envid=parse_envid(envid),
        ret=parse_ret(ret),
        notify=parse_notify(notify),
    )


def content_hash(envelope: Envelope, body: Sequence[bytes]) -> str:
    """SHA-256 (hex) of everything a submission asks for: the key an Idempotency-Key is bound to.

    Covers the sender, every recipient with its NOTIFY and ORCPT, RET, ENVID, the
    message's NOTIFY and the body; recipients in address order (the same set given in
    another order is the same message). The envelope part is length-prefixed JSON, so
    no two different submissions encode alike. ``body``: its pieces, as they arrived (the
    same bytes in other pieces hash alike).
    """
    recipients = sorted(
        ([r.address, list(r.notify) if r.notify is not None else None, r.orcpt]
         for r in envelope.recipients),
        key=lambda r: str(r[0]),
    )
    head = orjson.dumps([envelope.sender, recipients, envelope.ret, envelope.envid,
                         list(envelope.notify)])
    digest = hashlib.sha256(len(head).to_bytes(8, "big"))
    digest.update(head)
    for piece in body:
        digest.update(piece)
    return digest.hexdigest()
