"""Rules for names, addresses, paths and cursors; every refusal says what to fix."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

import orjson

from services.policy.errors import InvalidAddress, InvalidCursor, InvalidName, InvalidProgramEntry
from shared.programs import FLAG_NAMES, PROGRAM_NAME_RE, PROGRAM_NAME_RULE, entry_basename

# RFC 5322 atext without "/" (it would make the address a URL path segment) for the
# local part; LDH labels or an address literal for the domain.
_LOCAL_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+=?^_`{|}~-]+)*$")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*\.?$|^\[[A-Za-z0-9.:]+\]$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_program_name(name: str) -> str:
    if _CONTROL.search(name):
        raise InvalidName("program name contains a control character (NUL, CR, LF ...); remove it")
    if "/" in name or name in (".", ".."):
        raise InvalidName(
            f"program name {name!r} looks like a path; give the bare name (e.g. 'mymail'), "
            "letters, digits and . _ + -"
        )
    if len(name) > 64:
        raise InvalidName(f"program name is {len(name)} characters long; at most 64 are allowed")
    if name in FLAG_NAMES:
        raise InvalidName(
            f"{name} is a flag-file name of the classic trusted directory, not a program; "
            "use PATCH /v1/settings (mode / suspended) instead"
        )
    if not PROGRAM_NAME_RE.match(name):
        raise InvalidName(
            f"invalid program name {name!r}: it must match {PROGRAM_NAME_RULE} "
            "(start with a letter or digit; then letters, digits, '.', '_', '+', '-')"
        )
    return name


def check_program_entries(entries: list[str]) -> None:
    """400 for an account's program entry whose basename could never name a program.

    Secure mode runs the registered program named by an entry's basename; insecure mode
    runs the absolute path given (SPEC §2). Either way a basename outside the program
    name rule (``check_program_name``) can never be delivered to, so it is refused when
    written rather than failing every delivery later. Any path before it is kept.
    """
    for entry in entries:
        base = entry_basename(entry)
        try:
            check_program_name(base)
        except InvalidName as exc:
            raise InvalidProgramEntry(
                f"program entry {entry!r} can never be delivered to: its name {base!r} is "
                f"not a program name ({exc.message})",
                entry=entry,
            ) from None


def address_problem(address: str) -> str | None:
    """Why ``address`` is not a usable local@domain address, or None."""
    if _CONTROL.search(address):
        return "it contains a control character (NUL, CR, LF ...)"
    if len(address) > 254:
        return f"it is {len(address)} characters long; at most 254 are allowed"
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return "it must have the form local@domain"
    if len(local) > 64:
        return "the local part is longer than 64 characters"
    if not _LOCAL_RE.match(local):
        return (
            f"the local part {local!r} has characters outside letters, digits and "
            "!#$%&'*+=?^_`{|}~.- (no spaces, quotes, '/' or leading/trailing/double dots)"
        )
    if not _DOMAIN_RE.match(domain):
        return f"the domain {domain!r} is not a valid host name"
    return None


def normalize_address(address: str) -> str:
    """The account key: the address, validated and lower-cased."""
    problem = address_problem(address)
    if problem:
        raise InvalidAddress(f"invalid address {address!r}: {problem}")
    return address.lower()


def path_problem(path: str) -> str | None:
    if not path.startswith("/"):
        return "must be an absolute path (starting with '/')"
    if _CONTROL.search(path):
        return "must not contain control characters (NUL, CR, LF ...)"
    if len(path) > 4096:
        return "is longer than 4096 characters"
    return None


def encode_cursor(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(data)).decode().rstrip("=")


def decode_cursor(cursor: str, key: str, kind: type) -> Any:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = orjson.loads(raw)
        value = data[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise TypeError(key)
        return value
    except (binascii.Error, ValueError, TypeError, KeyError, orjson.JSONDecodeError):
        raise InvalidCursor(
            "invalid cursor: pass the next_cursor value of a previous page unchanged"
        ) from None
