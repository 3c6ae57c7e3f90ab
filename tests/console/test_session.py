"""Signing in and out of the console, its cookies and CSRF, against real policy, ingest,
notifier and console processes (one set for the module)."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import MTA_TOKEN, ROOT, SERVICE_TOKEN
from tests.console.stack import Browser, Stack, csrf_of, module_stack, stack_env

CSRF_TEXT = "This form has expired or did not come from the console"


@pytest.fixture(scope="module")
def stack(mx_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from module_stack(mx_env, tmp_path_factory.mktemp("console-session"))


@pytest.fixture
def browser(stack: Stack) -> Iterator[Browser]:
    b = Browser(stack)
    yield b
    b.close()


def _session_set_cookie(response: httpx.Response) -> str:
    found = [v for v in response.headers.get_list("set-cookie")
             if v.startswith("mailexec_session=")]
    assert len(found) == 1, response.headers.get_list("set-cookie")
    return found[0]


def test_sign_in_sets_a_sealed_http_only_cookie(stack: Stack, browser: Browser) -> None:
    address, token = stack.account()
    r = browser.sign_in(token, next_path=f"/account/{address}")
    assert r.status_code == 303 and r.headers["location"] == f"/account/{address}"
    header = _session_set_cookie(r)
    attributes = [a.strip().lower() for a in header.split(";")[1:]]
    assert "httponly" in attributes and "samesite=strict" in attributes and "path=/" in attributes
    assert "max-age=1800" in attributes
    assert "secure" not in attributes  # MAILEXEC_CONSOLE_COOKIE_SECURE=never in this stack
    value = header.split(";")[0].split("=", 1)[1]
    raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    assert token not in value and token.encode() not in raw
    assert address not in value and address.encode() not in raw

    page = browser.get(f"/account/{address}")
    assert page.status_code == 200, page.text
    assert "Delivery Options" in page.text
    home = browser.get("/")
    assert home.status_code == 303 and home.headers["location"] == f"/account/{address}"


def test_signed_out_visitors_are_sent_to_sign_in(stack: Stack, browser: Browser) -> None:
    r = browser.get("/account/someone@example.org")
    assert r.status_code == 303
    assert r.headers["location"] == "/signin?next=/account/someone%40example.org"
    form = browser.get(r.headers["location"])
    assert form.status_code == 200
    assert 'type="password"' in form.text and '<label for="token">Token</label>' in form.text
    assert ">Sign in</button>" in form.text
    assert 'name="next" value="/account/someone@example.org"' in form.text


def test_wrong_and_mta_tokens_are_refused(stack: Stack, browser: Browser) -> None:
    wrong = browser.sign_in("mxu_not-a-token-" + os.urandom(6).hex())
    assert wrong.status_code == 401
    assert "That token was not accepted" in wrong.text
    assert not [v for v in wrong.headers.get_list("set-cookie")
                if v.startswith("mailexec_session=")]
    for token in (MTA_TOKEN, SERVICE_TOKEN):
        refused = browser.sign_in(token)
        assert refused.status_code == 403, refused.text
        assert "This token cannot sign in to the console" in refused.text
        assert token not in refused.text
    assert browser.get("/").status_code == 303  # still signed out


def test_sign_in_needs_csrf(stack: Stack, browser: Browser) -> None:
    _, token = stack.account()
    browser.get("/signin")
    for fields in ({"token": token}, {"token": token, "csrf": "forged"}):
        r = browser.post("/signin", fields)
        assert r.status_code == 403
        assert CSRF_TEXT in r.text
        assert "Traceback" not in r.text
    # another visitor's form value does not fit this visitor's pre-session cookie
    other = Browser(stack)
    try:
        value = csrf_of(other.get("/signin").text)
    finally:
        other.close()
    r = browser.post("/signin", {"token": token, "csrf": value})
    assert r.status_code == 403


def test_tampered_cookie_is_signed_out(stack: Stack, browser: Browser) -> None:
    address, token = stack.account()
    browser.sign_in(token)
    value = browser.http.cookies["mailexec_session"]
    flipped = value[:10] + ("A" if value[10] != "A" else "B") + value[11:]
    for bad in (flipped, value[:-4], "x" + value, "garbage"):
        browser.http.cookies.set("mailexec_session", bad)
        r = browser.get(f"/account/{address}")
        assert r.status_code == 303 and r.headers["location"].startswith("/signin"), bad
        assert "max-age=0" in _session_set_cookie(r).lower()  # and it is cleared


def test_cookie_replayed_after_sign_out_is_refused(stack: Stack, browser: Browser) -> None:
    address, token = stack.account()
    browser.sign_in(token)
    csrf = browser.csrf(f"/account/{address}")
    captured = browser.http.cookies["mailexec_session"]

    out = browser.post("/signout", {"csrf": csrf})
    assert out.status_code == 303 and out.headers["location"] == "/signin"
    cleared = _session_set_cookie(out)
    assert "max-age=0" in cleared.lower()

    thief = Browser(stack)
    try:
        thief.http.cookies.set("mailexec_session", captured)
        r = thief.get(f"/account/{address}")
        assert r.status_code == 303 and r.headers["location"] == "/signin"
        assert "max-age=0" in _session_set_cookie(r).lower()  # the dead cookie is cleared
        notice = thief.get("/signin")
        assert "Your session ended; sign in again" in notice.text
        thief.http.cookies.set("mailexec_session", captured)
        r = thief.post(f"/account/{address}", [("csrf", csrf), ("enabled", "on"),
                                               ("programs", "alpha"), ("action", "save")])
        assert r.status_code == 303 and r.headers["location"] == "/signin"
    finally:
        thief.close()
    assert stack.programs_of(address) == {"enabled": False, "programs": []}


def test_post_without_or_with_wrong_csrf_is_refused(stack: Stack, browser: Browser) -> None:
    address, token = stack.account()
    browser.sign_in(token)
    good = browser.csrf(f"/account/{address}")
    other = Browser(stack)
    try:
        other_address, other_token = stack.account()
        other.sign_in(other_token)
        someone_elses = other.csrf(f"/account/{other_address}")  # another session's value
    finally:
        other.close()
    save = [("enabled", "on"), ("programs", "zulu"), ("action", "save")]
    for extra in ([], [("csrf", "")], [("csrf", good[:-1] + "x")], [("csrf", someone_elses)]):
        r = browser.post(f"/account/{address}", save + extra)
        assert r.status_code == 403, extra
        assert CSRF_TEXT in r.text and "<html" in r.text and "Traceback" not in r.text
    assert stack.programs_of(address) == {"enabled": False, "programs": []}
    r = browser.post("/signout", {})
    assert r.status_code == 403
    assert browser.get(f"/account/{address}").status_code == 200  # still signed in


def test_huge_forms_are_refused(stack: Stack, browser: Browser) -> None:
    address, token = stack.account()
    browser.sign_in(token)
    csrf = browser.csrf(f"/account/{address}")
    body = "csrf=" + csrf + "&other=" + "x" * (2 * 1024 * 1024)
    r = browser.http.post(f"/account/{address}", content=body,
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 413  # refused from its Content-Length, with a page that says why
    assert r.headers["content-type"].startswith("text/html")
    assert "<h1>Too large</h1>" in r.text and "smaller file" in r.text

    def chunks() -> Iterator[bytes]:  # no Content-Length: capped while it streams
        yield ("csrf=" + csrf + "&other=").encode()
        for _ in range(40):
            yield b"x" * 65536

    r = browser.http.post(f"/account/{address}", content=chunks(),
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code in (400, 413), r.status_code
    assert "Traceback" not in r.text
    assert browser.get(f"/account/{address}").status_code == 200


def test_error_pages_are_html_without_internals(stack: Stack, browser: Browser) -> None:
    address, token = stack.account()
    browser.sign_in(token)
    for path, status in (("/no/such/page", 404), ("/admin", 403), ("/admin/settings", 403),
                         (f"/account/{address}/messages/not-a-message", 404),
                         ("/account/not%20an%20address", 404)):
        r = browser.get(path)
        assert r.status_code == status, (path, r.status_code)
        assert r.headers["content-type"].startswith("text/html")
        assert "<h1>" in r.text and "Traceback" not in r.text and 'lang="en"' in r.text
    assert "Administrators only" in browser.get("/admin").text


def test_ops_endpoints(stack: Stack) -> None:
    base = stack.console.url
    assert httpx.get(base + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(base + "/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"policy": True}
    metrics = httpx.get(base + "/metrics").text
    assert 'mailexec_console_requests_total{method="GET",route="/healthz",status="200"}' in metrics
    assert 'mailexec_build_info{' in metrics and 'service="console"' in metrics
    static = httpx.get(base + "/static/vendor/pico.min.css")
    assert static.status_code == 200 and "max-age=31536000" in static.headers["cache-control"]


def test_token_never_in_a_page_or_the_log(stack: Stack, browser: Browser) -> None:
    address, token = stack.account()
    wrong = "mxu_wrong-" + os.urandom(8).hex()
    browser.sign_in(wrong)
    browser.sign_in(token, next_path=f"/account/{address}")
    csrf = browser.csrf(f"/account/{address}")
    browser.post(f"/account/{address}", [("csrf", csrf), ("enabled", "on"),
                                         ("trusted", ""), ("other", "zulu"), ("action", "add")])
    browser.post(f"/account/{address}", [("csrf", csrf), ("enabled", "on"),
                                         ("programs", "zulu"), ("action", "save")])
    browser.get(f"/account/{address}")
    browser.get(f"/account/{address}/messages")
    browser.get("/admin")
    browser.get("/nowhere")
    browser.post("/signout", {"csrf": csrf})
    browser.get("/signin")
    assert len(browser.bodies) > 8
    for body in browser.bodies:
        assert token not in body and wrong not in body
    log = stack.console_log()
    assert "signed in" in log  # the log is the console's, at level info
    for secret in [token, wrong, *stack.tokens]:
        assert secret not in log


def test_console_refuses_to_start_without_a_secret(mx_env: dict[str, str]) -> None:
    env = stack_env(mx_env)
    env["MAILEXEC_CONSOLE_SECRET"] = ""
    env.pop("MAILEXEC_CONSOLE_SECRET_FILE", None)
    done = subprocess.run([sys.executable, "-m", "mailexec", "serve", "console"], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 78, done.stderr
    assert "MAILEXEC_CONSOLE_SECRET" in done.stderr
    assert "Traceback" not in done.stderr
