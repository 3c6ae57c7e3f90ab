"""Small rules of the pages (services/console/web.py, pages/signin.py, main.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from services.console.main import check
from services.console.pages.signin import MAX_TOKEN_CHARS, NOT_ACCEPTED, token_problem
from services.console.web import Person, duration, nav_for, safe_next, signin_url, when
from shared.service import StartupError
from shared.settings import Settings
from shared.sysexits import EX_CONFIG

USER = Person(session="s", role="user", name="bob", account="bob@example.org", csrf="c",
              _token="secret-token")
ADMIN = Person(session="s", role="admin", name="admin", account=None, csrf="c",
               _token="secret-token")


@pytest.mark.parametrize("value", ["/account/a@b", "/admin/settings?x=1", "/"])
def test_safe_next_keeps_local_paths(value: str) -> None:
    assert safe_next(value) == value


@pytest.mark.parametrize("value", [None, "", "https://evil.example/", "//evil.example/x",
                                   "/\\evil.example", "javascript:alert(1)", "/a\nb", "evil"])
def test_safe_next_refuses_other_sites(value: str | None) -> None:
    assert safe_next(value) == "/"


def test_signin_url_carries_the_path() -> None:
    assert signin_url("/account/a@b") == "/signin?next=/account/a%40b"
    assert signin_url("/") == "/signin"


def test_token_problem() -> None:
    assert token_problem("") == "Enter your token"
    assert token_problem("mxu_abc") is None
    assert token_problem("a" * (MAX_TOKEN_CHARS + 1)) == NOT_ACCEPTED
    assert token_problem("a b") == NOT_ACCEPTED
    assert token_problem("a\x00b") == NOT_ACCEPTED


def test_the_person_never_shows_the_token() -> None:
    assert "secret-token" not in repr(USER)
    assert not hasattr(USER.view(), "_token")
    assert "secret-token" not in repr(USER.view())


def test_nav_by_role() -> None:
    assert [i.label for i in nav_for(USER, "/account/bob@example.org")] == [
        "Delivery Options", "Messages"]
    assert [i.current for i in nav_for(USER, "/account/bob@example.org")] == [True, False]
    labels = [i.label for i in nav_for(ADMIN, "/admin/settings")]
    assert labels == ["Dashboard", "Settings", "Programs", "Accounts", "Messages", "Audit",
                      "Notifications"]
    assert [i.label for i in nav_for(ADMIN, "/admin/settings") if i.current] == ["Settings"]
    assert nav_for(None, "/") == []


def test_time_and_duration_filters() -> None:
    assert when("2026-12-06T02:00:00+00:00") == "2026-12-06 02:00:00 UTC"
    assert when("2026-12-06T02:00:00Z") == "2026-12-06 02:00:00 UTC"
    assert when(None) == "—"
    assert duration(12) == "12 ms"
    assert duration(2500) == "2.5 s"
    assert duration(None) == "—"


def test_start_up_check_wants_a_secret() -> None:
    with pytest.raises(StartupError) as info:
        check(Settings(console_secret=""))
    assert info.value.status == EX_CONFIG
    assert "MAILEXEC_CONSOLE_SECRET" in str(info.value)
    with pytest.raises(StartupError):
        check(Settings(console_secret="x", console_cookie_secure="sometimes"))
    check(Settings(console_secret="x"))


def _request(scheme: str, mode: str) -> Any:
    from starlette.requests import Request

    app = SimpleNamespace(state=SimpleNamespace(settings=Settings(console_secret="x",
                                                                  console_cookie_secure=mode)))
    return Request({"type": "http", "scheme": scheme, "method": "GET", "path": "/",
                    "headers": [], "query_string": b"", "server": ("h", 80), "app": app})


@pytest.mark.parametrize(("scheme", "mode", "secure"), [
    ("https", "auto", True), ("http", "auto", False), ("http", "always", True),
    ("https", "never", False),
])
def test_cookies_are_secure_per_setting_and_scheme(scheme: str, mode: str, secure: bool) -> None:
    """"auto" follows the scheme uvicorn gives the request: https directly, or
    X-Forwarded-Proto from a proxy uvicorn trusts (--forwarded-allow-ips)."""
    from services.console.app import _secure
    from services.console.pages.signin import cookie_secure

    assert cookie_secure(_request(scheme, mode)) is secure
    assert _secure(Settings(console_secret="x", console_cookie_secure=mode),
                   {"scheme": scheme}) is secure
