"""The console's cookies: sealed (encrypted and authenticated) with keys derived from
``MAILEXEC_CONSOLE_SECRET``, and the session document one of them carries.

What it trusts: only ``MAILEXEC_CONSOLE_SECRET``. Every cookie value is bytes from the
browser, i.e. from anyone: it is opened with AES-256-GCM under a key HKDF-derived from the
secret and the cookie's purpose, with the cookie's name as associated data, and any
failure (bad base64, wrong length, failed tag, bad JSON, wrong shape, expired) is the
same ``None``: signed out. It defends against
- reading: the session cookie carries the person's API token; encrypted, its bytes never
  show it (tests/console/test_session.py::test_sign_in_sets_a_sealed_http_only_cookie,
  tests/unit/console/test_cookies.py::test_sealed_value_hides_the_payload);
- tampering and forgery: one flipped bit, a cookie sealed with another secret, or a
  flash/pre-session cookie replayed as the session cookie fails the tag
  (tests/unit/console/test_cookies.py::test_tampered_*, ::test_foreign_secret_*,
  ::test_cookie_of_another_purpose_*; as a process,
  tests/console/test_session.py::test_tampered_cookie_is_signed_out);
- oversized or junk values: longer than ``MAX_COOKIE_CHARS`` is refused before decoding
  (tests/unit/console/test_cookies.py::test_junk_values_open_to_none);
- replay after sign-out: not here: the cookie names a server-side session that policy
  deletes on sign-out and checks on every page (web.py ``current_person``;
  tests/console/test_session.py::test_cookie_replayed_after_sign_out_is_refused).
What it does not do: expire sessions (policy's sliding idle expiry does, and Max-Age tells
the browser), or hide the fact that a cookie exists.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SESSION_COOKIE = "mailexec_session"
PRESESSION_COOKIE = "mailexec_presession"  # the sign-in form's CSRF secret
FLASH_COOKIE = "mailexec_flash"  # one-shot notices across a POST/redirect/GET

MAX_COOKIE_CHARS = 3800  # browsers keep ~4096 bytes per cookie
NONCE_BYTES = 12
VERSION = 1


def derive_key(secret: str, purpose: str) -> bytes:
    """A 256-bit key for one cookie purpose; a new secret gives new keys for all."""
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=b"mailexec-console-cookies",
        info=f"mailexec console {purpose} v{VERSION}".encode(),
    ).derive(secret.encode())


class CookieBox:
    """Seal and open the values of one cookie (``name``)."""

    def __init__(self, secret: str, name: str) -> None:
        if not secret:
            raise ValueError("the console secret is empty")
        self.name = name
        self._aead = AESGCM(derive_key(secret, name))

    def seal(self, data: dict[str, Any], *, ttl_s: float | None = None) -> str:
        body = dict(data)
        if ttl_s is not None:
            body["exp"] = int(time.time() + ttl_s)
        plain = json.dumps(body, separators=(",", ":")).encode()
        nonce = os.urandom(NONCE_BYTES)
        sealed = nonce + self._aead.encrypt(nonce, plain, self.name.encode())
        return base64.urlsafe_b64encode(sealed).decode().rstrip("=")

    def open(self, value: str | None) -> dict[str, Any] | None:
        """The sealed document, or None for anything this box did not seal (or expired)."""
        if not value or len(value) > MAX_COOKIE_CHARS:
            return None
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        except (binascii.Error, ValueError):
            return None
        if len(raw) < NONCE_BYTES + 16:
            return None
        try:
            plain = self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], self.name.encode())
            data = json.loads(plain)
        except (InvalidTag, ValueError):
            return None
        if not isinstance(data, dict):
            return None
        exp = data.get("exp")
        if exp is not None and (not isinstance(exp, int) or exp < time.time()):
            return None
        return data


@dataclass(frozen=True)
class SessionCookie:
    """What the session cookie carries. ``token`` is the person's API token: it leaves
    this process only in the Authorization header of calls to the other services."""

    token: str
    session: str
    csrf_secret: str
    role: str
    name: str
    account: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"t": self.token, "s": self.session, "c": self.csrf_secret, "r": self.role,
                "n": self.name, "a": self.account}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> SessionCookie | None:
        if data is None:
            return None
        fields = (data.get("t"), data.get("s"), data.get("c"), data.get("r"), data.get("n"))
        account = data.get("a")
        if not all(isinstance(f, str) and f for f in fields):
            return None
        if account is not None and not isinstance(account, str):
            return None
        token, session, csrf_secret, role, name = (str(f) for f in fields)
        return cls(token=token, session=session, csrf_secret=csrf_secret, role=role,
                   name=name, account=account)

    def __repr__(self) -> str:  # never the token, not even in a traceback's repr
        return f"SessionCookie(session={self.session!r}, role={self.role!r}, name={self.name!r})"


class Boxes:
    """The three cookie boxes of one console (one secret)."""

    def __init__(self, secret: str) -> None:
        self.session = CookieBox(secret, SESSION_COOKIE)
        self.presession = CookieBox(secret, PRESESSION_COOKIE)
        self.flash = CookieBox(secret, FLASH_COOKIE)

    def open_session(self, value: str | None) -> SessionCookie | None:
        return SessionCookie.from_dict(self.session.open(value))
