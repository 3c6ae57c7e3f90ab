"""RFC 5321 envelope addresses (``MAIL FROM`` / ``RCPT TO``): parse, validate, normalise.

What it guarantees: a string returned by :func:`parse_mailbox` is a single mailbox
``local@domain`` (or ``""``, the null reverse-path) that is safe to put in a header line,
a log line, a database row or a program's stdin: no CR, LF, NUL or other control
character, no unquoted space, at most 64 octets of local part and 254 octets in all
(RFC 5321 §4.5.3.1, as tightened by RFC 3696 errata), a syntactically valid domain or
address literal.

What it does not do: resolve the domain, check that the mailbox exists, or accept the
full RFC 5322 header syntax (display names, comments, groups, obsolete routes) — those
never appear in an SMTP envelope. SMTPUTF8 (RFC 6531) addresses with UTF-8 in the local
part or domain are accepted; limits are counted in UTF-8 octets.

Canonical form: surrounding ``<...>`` removed, the domain lower-cased, a quoted local part
unquoted when it does not need the quotes (``"bob"@x`` → ``bob@x``), otherwise kept
quoted with only ``"`` and ``\\`` escaped. The local part keeps its case (RFC 5321 says
it may be significant).

Account keys (the one grammar of ``policy.accounts.address``; docs/internals.md, "Account
lookup"): :func:`normalize_account` is the only way an address becomes an account key —
ingest (recipients), policy (every ``{address}`` in a URL, ``postmaster``), the executor
and the notifier call it. A key is the canonical form lower-cased entirely and must be
plain ASCII ``local@domain``: a dot-atom local part of RFC 5322 atext without ``/`` (the
key is a URL path segment of the policy API), an LDH host name or an address literal.
SMTPUTF8 addresses, quoted local parts that need their quotes, and ``/`` are valid in an
envelope but can never be an account: :func:`normalize_account` refuses them with an
:class:`AddressError` saying so, and ingest refuses such recipients at once (HTTP 400,
LMTP ``550 5.1.1``) instead of queueing mail nobody can receive.
"""

from __future__ import annotations

import ipaddress
import re

MAX_LOCAL_OCTETS = 64
MAX_ADDRESS_OCTETS = 254
MAX_LABEL_OCTETS = 63

# RFC 5322 atext plus RFC 6531 UTF8-non-ascii (any code point >= U+0080 that is not a control).
_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u00a0-\U0010ffff"
_DOT_ATOM = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*")
_LABEL = re.compile(r"(?:[A-Za-z0-9\u00a0-\U0010ffff](?:[A-Za-z0-9\-\u00a0-\U0010ffff]*"
                    r"[A-Za-z0-9\u00a0-\U0010ffff])?)")
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f\x80-\x9f]")


class AddressError(ValueError):
    """An envelope address that cannot be used; the message says what is wrong with it."""


def _fail(original: str, why: str) -> AddressError:
    shown = original if len(original) <= 80 else original[:77] + "..."
    return AddressError(f"invalid address {shown!r}: {why}")


def _split(addr: str, original: str) -> tuple[str, str]:
    """Split at the '@' that ends the local part (a quoted local part may contain '@')."""
    if addr.startswith('"'):
        i, n = 1, len(addr)
        while i < n:
            ch = addr[i]
            if ch == "\\":
                i += 2
                continue
            if ch == '"':
                break
            i += 1
        else:
            raise _fail(original, "unterminated quoted local part")
        if i + 1 >= n or addr[i + 1] != "@":
            raise _fail(original, "a quoted local part must be followed by '@domain'")
        return addr[: i + 1], addr[i + 2 :]
    local, sep, domain = addr.rpartition("@")
    if not sep:
        raise _fail(original, "missing '@domain'")
    return local, domain


def _local_part(local: str, original: str) -> str:
    if not local:
        raise _fail(original, "empty local part")
    if not local.startswith('"'):
        if not _DOT_ATOM.fullmatch(local):
            raise _fail(
                original,
                "the local part has a character that needs quoting (space, '@', ',', ';', "
                "'\"', '(' …) or a leading, trailing or doubled dot",
            )
        return local
    # quoted-string: qtextSMTP / quoted-pairSMTP (RFC 5321 §4.1.2); unescape to the content.
    inner, out, i = local[1:-1], [], 0
    while i < len(inner):
        ch = inner[i]
        if ch == "\\":
            if i + 1 >= len(inner):
                raise _fail(original, "dangling backslash in the quoted local part")
            out.append(inner[i + 1])
            i += 2
            continue
        if ch == '"':
            raise _fail(original, "unescaped '\"' inside the quoted local part")
        out.append(ch)
        i += 1
    content = "".join(out)
    if not content:
        raise _fail(original, 'empty quoted local part ("")')
    if _DOT_ATOM.fullmatch(content):
        return content
    return '"' + content.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _domain(domain: str, original: str) -> str:
    if not domain:
        raise _fail(original, "missing domain after '@'")
    if domain.startswith("["):
        if not domain.endswith("]"):
            raise _fail(original, "unterminated address literal")
        literal = domain[1:-1]
        try:
            if literal[:5].lower() == "ipv6:":
                ipaddress.IPv6Address(literal[5:])
                return "[IPv6:" + literal[5:].lower() + "]"
            ipaddress.IPv4Address(literal)
        except ValueError:
            raise _fail(original, "bad address literal (want [1.2.3.4] or [IPv6:...])") from None
        return domain
    labels = domain.split(".")
    for label in labels:
        if not label:
            raise _fail(original, "empty label in the domain (leading, trailing or doubled dot)")
        if len(label.encode()) > MAX_LABEL_OCTETS:
            raise _fail(original, f"a domain label is longer than {MAX_LABEL_OCTETS} octets")
        if not _LABEL.fullmatch(label):
            raise _fail(
                original, "the domain may hold only letters, digits, '-' and dots"
            )
    return domain.lower()


def parse_mailbox(s: str, *, allow_empty: bool = True) -> str:
    """Validate one envelope address and return its canonical form.

    ``""`` and ``"<>"`` are the null reverse-path and come back as ``""`` unless
    ``allow_empty`` is false (recipients: use :func:`parse_recipient`).
    Raises :class:`AddressError` (a ``ValueError``) saying what is wrong.
    """
    if not isinstance(s, str):
        raise AddressError(f"invalid address {s!r}: not a string")
    original = s
    if _FORBIDDEN.search(s):
        raise _fail(original, "control characters (CR, LF, NUL, …) are not allowed")
    addr = s
    if addr.startswith("<") and addr.endswith(">"):
        addr = addr[1:-1]
    if addr == "":
        if allow_empty:
            return ""
        raise _fail(original, "an empty address is only allowed as the null sender")
    if addr.startswith("@") and ":" in addr:
        raise _fail(original, "source routes (@host:user@domain) are not accepted")
    local, domain = _split(addr, original)
    if not local.startswith('"') and (" " in addr or "\t" in addr):
        raise _fail(original, "spaces are not allowed (quote the local part if it has one)")
    local_out = _local_part(local, original)
    if len(local_out.encode()) > MAX_LOCAL_OCTETS:
        raise _fail(original, f"the local part is longer than {MAX_LOCAL_OCTETS} octets")
    canonical = f"{local_out}@{_domain(domain, original)}"
    if len(canonical.encode()) > MAX_ADDRESS_OCTETS:
        raise _fail(original, f"the address is longer than {MAX_ADDRESS_OCTETS} octets")
    return canonical


def parse_recipient(s: str) -> str:
    """:func:`parse_mailbox` for a forward-path: the empty address is refused."""
    return parse_mailbox(s, allow_empty=False)


# --- account keys ------------------------------------------------------------------------

# RFC 5322 atext without "/" (it would make the key a URL path segment), ASCII only.
_KEY_ATEXT = r"A-Za-z0-9!#$%&'*+=?^_`{|}~\-"
_KEY_LOCAL = re.compile(rf"[{_KEY_ATEXT}]+(?:\.[{_KEY_ATEXT}]+)*")
_KEY_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"
_KEY_HOST = re.compile(rf"{_KEY_LABEL}(?:\.{_KEY_LABEL})*")
# A bare key in any case: the common spelling, recognised without the full parse.
_PLAIN_KEY = re.compile(rf"(?:[{_KEY_ATEXT}]+(?:\.[{_KEY_ATEXT}]+)*)@{_KEY_HOST.pattern}")
ACCOUNT_RULE = (
    "an account address is ASCII local@domain: the local part letters, digits and "
    "!#$%&'*+=?^_`{|}~.- (no '/', no quotes, no leading, trailing or doubled dot), the "
    "domain a host name or an address literal"
)


def _account_problem(canonical: str) -> str | None:
    """What in the canonical address ``canonical`` no account key may have, or None."""
    if not canonical.isascii():
        return "it has UTF-8 (SMTPUTF8)"
    if canonical.startswith('"'):
        return "its local part needs quotes"
    local, _, domain = canonical.rpartition("@")
    if not _KEY_LOCAL.fullmatch(local):
        return "its local part has a '/'"
    if not (domain.startswith("[") or _KEY_HOST.fullmatch(domain)):  # literals: parse_mailbox checked them
        return "its domain is not a host name"
    return None


def normalize_account(address: str) -> str:
    """The account key of ``address``: its canonical form (:func:`parse_recipient`),
    lower-cased entirely; raises :class:`AddressError` when no account can have it.

    Idempotent: a key comes back unchanged. ``<Bob@Example.ORG>`` and ``"bob"@example.org``
    give ``bob@example.org``; ``bö@example.org``, ``"a b"@example.org`` and
    ``a/b@example.org`` are refused.
    """
    if (
        isinstance(address, str)
        and len(address) <= MAX_ADDRESS_OCTETS
        and _PLAIN_KEY.fullmatch(address)
        and address.rfind("@") <= MAX_LOCAL_OCTETS
    ):
        return address.lower()  # what parse_recipient would return, lower-cased
    canonical = parse_recipient(address)
    problem = _account_problem(canonical)
    if problem:
        shown = address if len(address) <= 80 else address[:77] + "..."
        raise AddressError(f"no account can have the address {shown!r}: {problem}; {ACCOUNT_RULE}")
    return canonical.lower()


def account_problem(address: str) -> str | None:
    """Why ``address`` can never be an account (the :class:`AddressError` text), or None."""
    try:
        normalize_account(address)
    except AddressError as exc:
        return str(exc)
    return None
