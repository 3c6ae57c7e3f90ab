"""Every main page of the console: opened as the person it is for, screenshotted into
tests/console/screenshots/ (1280 px wide, full page; the README shows two of them), and
audited by axe-core — no serious or critical violation. Sign-in and Delivery Options are
also audited 375 px wide, as on a phone."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from playwright.sync_api import Browser, BrowserContext, Page

from tests.console.browser.axe import assert_accessible
from tests.console.browser.harness import (
    DESKTOP,
    PHONE,
    Account,
    ConsoleStack,
    expect_ok,
    goto,
    no_trace,
    shoot,
    sign_in,
)


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """As the package's, but axe may be injected whatever the page's Content-Security-Policy
    says (the console's own script rules are not what these tests audit)."""
    ctx = browser.new_context(viewport=DESKTOP, bypass_csp=True)
    ctx.set_default_timeout(10_000)
    try:
        yield ctx
    finally:
        ctx.close()


@dataclass(frozen=True)
class Seen:
    """What the pages need to show something: a user with a delivered message and the
    DSN that reported it."""

    user: Account
    message_id: str


@pytest.fixture(scope="module")
def seen(stack: ConsoleStack) -> Seen:
    user = stack.account("seen", ["alpha", "bravo"], enabled=True)
    sender = f"writer-{user.uid}@example.net"
    mid = stack.submit(user.address, sender=sender, subject="for the pages",
                       notify="SUCCESS,FAILURE")  # a success DSN, for the pages to list
    stack.wait_state(mid, ("delivered",))
    stack.wait_mail_to(sender)
    return Seen(user, mid)


# How a page says a service did not give it what it shows.
DEGRADED = re.compile(r"can't be shown|not available|refused|no such endpoint", re.I)
# name (the screenshot's file), who signs in (None: nobody), the path
PAGES = [
    ("sign-in", None, "/"),
    ("delivery-options", "user", "/account/{a}"),
    ("user-message", "user", "/account/{a}/messages/{m}"),
    ("admin-dashboard", "admin", "/admin"),
    ("admin-settings", "admin", "/admin/settings"),
    ("admin-programs", "admin", "/admin/programs"),
    ("admin-accounts", "admin", "/admin/accounts"),
    ("admin-messages", "admin", "/admin/messages"),
    ("admin-message", "admin", "/admin/messages/{m}"),
    ("admin-audit", "admin", "/admin/audit"),
    ("admin-notifications", "admin", "/admin/notifications"),
]


def _open(page: Page, stack: ConsoleStack, seen: Seen, who: str | None, path: str) -> None:
    base = stack.console_url
    if who == "user":
        sign_in(page, base, seen.user.token)
    elif who == "admin":
        sign_in(page, base, stack.pipe.env["MAILEXEC_ADMIN_TOKEN"])
    url = base + path.format(a=seen.user.address, m=seen.message_id)
    expect_ok(goto(page, url), url)
    no_trace(page)


@pytest.mark.parametrize(("name", "who", "path"), PAGES, ids=[p[0] for p in PAGES])
def test_main_page_has_no_serious_accessibility_violation(
    page: Page, stack: ConsoleStack, seen: Seen, name: str, who: str | None, path: str
) -> None:
    _open(page, stack, seen, who, path)
    shoot(page, name)
    assert_accessible(page, name)


@pytest.mark.parametrize(("name", "who", "path"), PAGES[1:], ids=[p[0] for p in PAGES[1:]])
def test_main_page_shows_its_data(
    page: Page, stack: ConsoleStack, seen: Seen, name: str, who: str | None, path: str
) -> None:
    """No part of the page stands in for data it could not fetch (what the screenshots
    would otherwise show the README's readers)."""
    _open(page, stack, seen, who, path)
    text = page.inner_text("main")
    degraded = [line.strip() for line in text.splitlines() if DEGRADED.search(line)]
    assert not degraded, f"{name} ({page.url}) could not show everything:\n" + "\n".join(degraded)


def test_forbidden_page_has_no_serious_accessibility_violation(
    page: Page, stack: ConsoleStack, seen: Seen
) -> None:
    base = stack.console_url
    sign_in(page, base, seen.user.token)
    r = goto(page, base + "/admin")
    assert r.status == 403, f"/admin for a user: HTTP {r.status}"
    no_trace(page)
    assert_accessible(page, "the 403 page")


@pytest.mark.parametrize(("name", "who", "path"), [PAGES[0], PAGES[1]],
                         ids=["sign-in", "delivery-options"])
def test_phone_width_page_has_no_serious_accessibility_violation(
    browser: Browser, stack: ConsoleStack, seen: Seen, name: str, who: str | None, path: str
) -> None:
    ctx = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True, bypass_csp=True)
    try:
        page = ctx.new_page()
        _open(page, stack, seen, who, path)
        width = page.evaluate("() => document.documentElement.scrollWidth")
        shoot(page, f"{name}-phone")
        assert_accessible(page, f"{name} at 375 px")
        assert width <= PHONE["width"], (
            f"{name} at 375 px is {width} px wide: the reader must scroll sideways")
    finally:
        ctx.close()
