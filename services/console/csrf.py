"""CSRF: every POST to the console carries a form field ``csrf`` that only a page of
the console could have put there.

What it trusts: the secret inside a cookie that ``session.py`` opened (the session
cookie, or for the sign-in form the pre-session cookie), which only this console can seal.
The form value is ``HMAC(secret, "mailexec-console-form")``: a page of another site can
make the browser send the cookies (SameSite=Strict stops most of that already) but can't
read a console page to learn the value. It defends against
- a forged POST without the field or with a wrong one: 403 before any route runs
  (tests/console/test_session.py::test_post_without_or_with_wrong_csrf_is_refused;
  the comparison tests/unit/console/test_csrf.py);
- login CSRF (signing a victim in as the attacker): the sign-in POST needs the
  pre-session cookie's value too (tests/console/test_session.py::test_sign_in_needs_csrf);
- a token of one session used with another's cookie: the secret is per session
  (tests/unit/console/test_csrf.py::test_value_of_one_secret_fails_another).
Applied centrally (``csrf_guard``, an app-wide dependency: every route of every router
gets it), so pages only put ``{{ csrf_input() }}`` in their forms.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from fastapi import Request

from services.console.errors import CsrfRejected, NotSignedIn
from services.console.session import PRESESSION_COOKIE, SESSION_COOKIE, Boxes

FIELD = "csrf"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SIGNIN_PATH = "/signin"


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def form_value(secret: str) -> str:
    """The value forms of a session (or of the sign-in form) carry."""
    digest = hmac.new(secret.encode(), b"mailexec-console-form", hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def matches(secret: str | None, submitted: object) -> bool:
    if not secret or not isinstance(submitted, str) or not submitted:
        return False
    return hmac.compare_digest(form_value(secret).encode(), submitted.encode())


def secret_for(request: Request, boxes: Boxes) -> str | None:
    """The CSRF secret this request's form must match; None when it has none."""
    if request.url.path == SIGNIN_PATH:
        presession = boxes.presession.open(request.cookies.get(PRESESSION_COOKIE))
        value = presession.get("c") if presession else None
        return value if isinstance(value, str) else None
    session = boxes.open_session(request.cookies.get(SESSION_COOKIE))
    if session is None:
        raise NotSignedIn()
    return session.csrf_secret


async def csrf_guard(request: Request) -> None:
    """App-wide dependency: a POST (PUT, PATCH, DELETE) whose form lacks the right value
    is refused with the 403 page; one without a session cookie goes to sign-in."""
    if request.method not in UNSAFE_METHODS:
        return
    secret = secret_for(request, request.app.state.boxes)
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        raise CsrfRejected()
    form = await request.form()
    if not matches(secret, form.get(FIELD)):
        raise CsrfRejected()
