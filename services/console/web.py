"""What every page of the console is built with (users' pages here, admin pages in
pages/admin.py): who is signed in, rendering, notices across redirects, the APIs.

- ``PersonDep`` / ``AdminDep`` / ``UserDep``: the signed-in person, checked with policy on
  every request (``GET /v1/sessions/{id}``, which also slides the idle expiry). Not signed
  in → /signin?next=<path>; a session policy no longer knows → /signin with a notice;
  ``AdminDep`` for a non-admin → the 403 page "Administrators only".
- ``render(request, person, "page.html", {...})``: the page, with ``person`` (name, role,
  account; never the token), ``csrf`` and ``csrf_input()``, ``nav``, ``flashes``, ``title``.
- ``flash(response_or_request, text, kind)`` and ``redirect(url, notice=, error=)``:
  POST/redirect/GET with a one-shot notice (a sealed cookie).
- ``Api(request, person)``: ``await api.get("policy", "/v1/status")`` … raising
  ``ApiError``; app.py turns an uncaught one into the right page (401 → sign-in,
  403/404 → their pages, 5xx/unreachable → 503 naming the service).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import pass_context
from markupsafe import Markup, escape

from services.console import csrf as csrf_mod
from services.console.api import Api, call, seg
from services.console.errors import ApiError, Forbidden, NotSignedIn, SessionEnded
from services.console.session import FLASH_COOKIE, SESSION_COOKIE

__all__ = [
    "AdminDep", "Api", "ApiError", "Person", "PersonDep", "UserDep", "current_person",
    "flash", "redirect", "render", "seg", "templates",
]

log = logging.getLogger("mailexec.console")

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
STATIC_DIR = Path(__file__).resolve().parent / "static"
FLASH_HEADER = "x-mailexec-flash"  # set by flash(response), sealed into a cookie by app.py
FlashKind = Literal["ok", "error"]


@dataclass(frozen=True)
class Person:
    """The signed-in person. ``_token`` is for ``Api`` only: never put it in a template."""

    session: str
    role: str
    name: str
    account: str | None
    csrf: str
    _token: str = field(repr=False, compare=False)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def view(self) -> PersonView:
        return PersonView(role=self.role, name=self.name, account=self.account)


@dataclass(frozen=True)
class PersonView:
    """The person as templates see it."""

    role: str
    name: str
    account: str | None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


async def current_person(request: Request) -> Person:
    cached = getattr(request.state, "person", None)
    if isinstance(cached, Person):
        return cached
    cookie = request.app.state.boxes.open_session(request.cookies.get(SESSION_COOKIE))
    if cookie is None:
        raise NotSignedIn()
    try:
        record = await call(request, cookie.token, "GET", "policy",
                            f"/v1/sessions/{seg(cookie.session)}")
    except ApiError as exc:
        if exc.status in (401, 403, 404):
            raise SessionEnded() from None
        raise
    person = Person(
        session=cookie.session,
        role=str(record.get("role") or cookie.role),
        name=str(record.get("name") or cookie.name),
        account=record.get("account", cookie.account),
        csrf=csrf_mod.form_value(cookie.csrf_secret),
        _token=cookie.token,
    )
    request.state.person = person
    request.state.session_cookie = request.cookies.get(SESSION_COOKIE)  # re-set: Max-Age slides
    return person


PersonDep = Annotated[Person, Depends(current_person)]


async def require_admin(person: PersonDep) -> Person:
    if not person.is_admin:
        raise Forbidden("Administrators only. You are signed in as "
                        f"{person.name}, who may use only their own account's pages.")
    return person


async def require_user(person: PersonDep) -> Person:
    if person.role != "user":
        raise Forbidden("This page is for account users; administrators use the "
                        "account pages under Accounts.")
    return person


AdminDep = Annotated[Person, Depends(require_admin)]
UserDep = Annotated[Person, Depends(require_user)]


# Templates -------------------------------------------------------------------------

templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
templates.env.autoescape = True


@pass_context
def _csrf_input(ctx: Any) -> Markup:
    value = ctx.get("csrf") or ""
    return Markup('<input type="hidden" name="csrf" value="{}">').format(escape(value))


templates.env.globals["csrf_input"] = _csrf_input


@lru_cache(maxsize=1)
def _static_versions() -> dict[str, str]:
    versions = {}
    for path in STATIC_DIR.rglob("*"):
        if path.is_file():
            rel = path.relative_to(STATIC_DIR).as_posix()
            versions[rel] = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return versions


def static_url(name: str) -> str:
    """``/static/<name>?v=<digest>``: served with a year's cache, so a new file gets a new URL."""
    return f"/static/{name}?v={_static_versions().get(name, '0')}"


templates.env.globals["static_url"] = static_url


def when(value: Any) -> str:
    """An ISO time from an API as people read it: ``2026-12-06 02:03:16 UTC``."""
    if not value:
        return "—"
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value)
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC)
    return parsed.strftime("%Y-%m-%d %H:%M:%S") + (" UTC" if parsed.tzinfo else "")


def duration(ms: Any) -> str:
    if not isinstance(ms, int | float):
        return "—"
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.1f} s"


templates.env.filters["when"] = when
templates.env.filters["duration"] = duration


@dataclass(frozen=True)
class NavItem:
    label: str
    href: str
    current: bool


USER_NAV = (("Delivery Options", "/account/{account}"), ("Messages", "/account/{account}/messages"))
ADMIN_NAV = (("Dashboard", "/admin"), ("Settings", "/admin/settings"),
             ("Programs", "/admin/programs"), ("Accounts", "/admin/accounts"),
             ("Messages", "/admin/messages"), ("Audit", "/admin/audit"),
             ("Notifications", "/admin/notifications"))


def nav_for(person: Person | None, path: str) -> list[NavItem]:
    if person is None:
        return []
    items: tuple[tuple[str, str], ...]
    if person.is_admin:
        items = ADMIN_NAV
    elif person.account:
        items = tuple((label, href.format(account=seg(person.account)))
                      for label, href in USER_NAV)
    else:
        return []
    out = []
    for label, href in items:
        if href == "/admin":
            current = path in ("/admin", "/admin/")
        elif label == "Delivery Options":
            current = path == href
        else:
            current = path == href or path.startswith(href + "/")
        out.append(NavItem(label, href, current))
    return out


def _take_flashes(request: Request) -> tuple[list[tuple[str, str]], bool]:
    """Notices for this page: from the flash cookie (then cleared), and from flash(request)."""
    found: list[tuple[str, str]] = []
    had_cookie = FLASH_COOKIE in request.cookies
    data = request.app.state.boxes.flash.open(request.cookies.get(FLASH_COOKIE))
    for item in (data or {}).get("f", []):
        if isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item):
            found.append((item[0], item[1]))
    found.extend(getattr(request.state, "flashes", []))
    return found, had_cookie


def render(request: Request, person: Person | None, template_name: str,
           context: dict[str, Any] | None = None, status_code: int = 200) -> HTMLResponse:
    """The page ``template_name`` (extends base.html) with the common context."""
    flashes, had_flash_cookie = _take_flashes(request)
    if person is not None:
        csrf_value = person.csrf
    else:
        csrf_value = getattr(request.state, "presession_csrf", "")
    ctx: dict[str, Any] = {
        "title": None,
        "person": person.view() if person else None,
        "csrf": csrf_value,
        "csrf_input": _csrf_input,
        "nav": nav_for(person, request.url.path),
        "flashes": [{"kind": kind, "text": text} for kind, text in flashes],
    }
    ctx.update(context or {})
    ctx["csrf"] = csrf_value  # pages can't replace it
    response = templates.TemplateResponse(request, template_name, ctx, status_code=status_code)
    response.headers["Cache-Control"] = "no-store"
    if had_flash_cookie:
        response.delete_cookie(FLASH_COOKIE, path="/")
    return response


# Notices across redirects ------------------------------------------------------------

def flash(target: Response | Request, text: str, kind: FlashKind = "ok") -> None:
    """Show ``text`` on the next page: the one a redirect ``target`` leads to, or the page
    rendered for the request ``target``."""
    if isinstance(target, Request):
        pending = list(getattr(target.state, "flashes", []))
        pending.append((kind, text))
        target.state.flashes = pending
        return
    pending_json = target.headers.get(FLASH_HEADER)
    items: list[list[str]] = json.loads(pending_json) if pending_json else []
    items.append([kind, text])
    target.headers[FLASH_HEADER] = json.dumps(items, ensure_ascii=True)


def redirect(url: str, *, notice: str | None = None, error: str | None = None) -> RedirectResponse:
    """303 to ``url`` (a path of the console), with an optional notice for that page."""
    response = RedirectResponse(url, status_code=303)
    if notice:
        flash(response, notice, "ok")
    if error:
        flash(response, error, "error")
    return response


def signin_url(next_path: str | None = None) -> str:
    if next_path and next_path not in ("/", "/signin"):
        return "/signin?next=" + quote(next_path, safe="/")
    return "/signin"


def safe_next(value: str | None) -> str:
    """A local path to go to after sign-in; anything else (another site) is "/"."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    if any(ord(ch) < 0x20 for ch in value):
        return "/"
    return value
