"""Sign-in and sign-out.

Form handling of untrusted bytes: the sign-in form's ``token`` (anything a visitor types),
``next`` (a path to return to) and ``csrf``. What it trusts: policy's answer about the
token (``POST /v1/sessions``) and the pre-session cookie's CSRF secret (csrf.py checks it
before this module runs). It defends against
- a token leaking: the token goes only into the Authorization header of the call to
  policy and into the sealed session cookie; the form is a password field, POSTed (never
  in a URL), and re-rendered empty after a failure; no log line names it
  (tests/console/test_session.py::test_token_never_in_a_page_or_the_log);
- an open redirect through ``next``: only a local path is followed (web.safe_next;
  tests/unit/console/test_web.py::test_safe_next_*);
- huge or junk input: a token longer than ``MAX_TOKEN_CHARS`` or with control characters
  is refused without asking policy (tests/unit/console/test_web.py::test_token_problem);
- roles that must not sign in (mta, service): policy answers 403, the form says so
  (tests/console/test_session.py::test_wrong_and_mta_tokens_are_refused).
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from services.console import csrf as csrf_mod
from services.console.api import call, seg
from services.console.errors import ApiError
from services.console.session import PRESESSION_COOKIE, SESSION_COOKIE, SessionCookie
from services.console.web import (
    PersonDep,
    flash,
    redirect,
    render,
    safe_next,
)

log = logging.getLogger("mailexec.console.signin")

router = APIRouter()

MAX_TOKEN_CHARS = 512
PRESESSION_TTL_S = 12 * 3600
NOT_ACCEPTED = "That token was not accepted"
WRONG_ROLE = "This token cannot sign in to the console"


def token_problem(token: str) -> str | None:
    if not token:
        return "Enter your token"
    if len(token) > MAX_TOKEN_CHARS or any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in token):
        return NOT_ACCEPTED
    return None


def cookie_secure(request: Request) -> bool:
    mode = request.app.state.settings.console_cookie_secure
    if mode == "always":
        return True
    if mode == "never":
        return False
    return request.url.scheme == "https"  # uvicorn's proxy headers decide what scheme is


def set_cookie(request: Request, response: Response, name: str, value: str,
               max_age: int | None) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=True,
                        samesite="strict", secure=cookie_secure(request))


def clear_cookie(request: Request, response: Response, name: str) -> None:
    response.delete_cookie(name, path="/", httponly=True, samesite="strict",
                           secure=cookie_secure(request))


def _signin_page(request: Request, *, next_path: str, error: str | None = None,
                 status_code: int = 200) -> HTMLResponse:
    boxes = request.app.state.boxes
    presession = boxes.presession.open(request.cookies.get(PRESESSION_COOKIE))
    secret = presession.get("c") if presession else None
    fresh = not isinstance(secret, str)
    if not isinstance(secret, str):
        secret = csrf_mod.new_secret()
    request.state.presession_csrf = csrf_mod.form_value(secret)
    response = render(request, None, "signin.html",
                      {"title": "Sign in", "next": next_path, "error": error},
                      status_code=status_code)
    if fresh:
        set_cookie(request, response, PRESESSION_COOKIE,
                   boxes.presession.seal({"c": secret}, ttl_s=PRESESSION_TTL_S),
                   PRESESSION_TTL_S)
    return response


@router.get("/signin", response_class=HTMLResponse)
async def signin_form(request: Request, next: str | None = None) -> Response:
    return _signin_page(request, next_path=safe_next(next))


@router.post("/signin", response_class=HTMLResponse)
async def signin(
    request: Request,
    token: Annotated[str, Form(max_length=4096)] = "",
    next: Annotated[str, Form(max_length=2048)] = "/",
) -> Response:
    next_path = safe_next(next)
    token = token.strip()
    problem = token_problem(token)
    if problem:
        return _signin_page(request, next_path=next_path, error=problem, status_code=400)
    settings = request.app.state.settings
    try:
        created = await call(request, token, "POST", "policy", "/v1/sessions",
                             json={"idle_timeout_s": settings.console_session_idle_s})
    except ApiError as exc:
        if exc.status == 401:
            return _signin_page(request, next_path=next_path, error=NOT_ACCEPTED,
                                status_code=401)
        if exc.status == 403:
            return _signin_page(request, next_path=next_path, error=WRONG_ROLE,
                                status_code=403)
        if exc.status == 429:
            return _signin_page(request, next_path=next_path, status_code=429,
                                error="Too many sign-in attempts; wait a minute and try again")
        if exc.status >= 500:
            return _signin_page(request, next_path=next_path, status_code=503,
                                error=f"{exc.service} is not answering; try again in a moment")
        return _signin_page(request, next_path=next_path, error=NOT_ACCEPTED, status_code=400)
    cookie = SessionCookie(token=token, session=str(created["session"]),
                           csrf_secret=csrf_mod.new_secret(), role=str(created["role"]),
                           name=str(created.get("name") or ""), account=created.get("account"))
    if not cookie.name:
        cookie = SessionCookie(token=cookie.token, session=cookie.session,
                               csrf_secret=cookie.csrf_secret, role=cookie.role,
                               name=cookie.account or cookie.role, account=cookie.account)
    log.info("signed in", extra={"role": cookie.role, "account": cookie.account})
    response = RedirectResponse(next_path, status_code=303)
    set_cookie(request, response, SESSION_COOKIE,
               request.app.state.boxes.session.seal(cookie.to_dict()),
               settings.console_session_idle_s)
    clear_cookie(request, response, PRESESSION_COOKIE)
    return response


@router.post("/signout")
async def signout(request: Request, person: PersonDep) -> Response:
    response = redirect("/signin")
    try:
        await call(request, person._token, "DELETE", "policy",
                   f"/v1/sessions/{seg(person.session)}")
        flash(response, "You are signed out.")
    except ApiError as exc:
        if exc.status in (401, 404):
            flash(response, "You are signed out.")
        else:
            flash(response, "Signed out in this browser, but policy could not be told: the "
                  "session ends by itself after its idle time.", "error")
    clear_cookie(request, response, SESSION_COOKIE)
    log.info("signed out", extra={"role": person.role, "account": person.account})
    return response
