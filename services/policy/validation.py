"""Rules for program names and entries, account addresses in URLs (the grammar itself is
shared.addresses.normalize_account) and cursors; every refusal says what to fix."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

import orjson

from services.policy.errors import InvalidAddress, InvalidCursor, InvalidName, InvalidProgramEntry
from shared.addresses import AddressError, normalize_account
from shared.programs import FLAG_NAMES, PROGRAM_NAME_RE, PROGRAM_NAME_RULE, entry_basename

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


def account_key(address: str) -> str:
    """The account key of an ``{address}`` in a URL (the one grammar and normalisation,
    :func:`shared.addresses.normalize_account`), or 400 ``invalid_address`` saying why."""
    try:
        return normalize_account(address)
    except AddressError as exc:
        raise InvalidAddress(str(exc)) from None


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
