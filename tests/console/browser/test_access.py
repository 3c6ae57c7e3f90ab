"""What a signed-in user must not be able to do: open another account's page or an admin
page, change their settings with a forged form, or reuse a cookie after signing out."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.console.browser.harness import (
    DESKTOP,
    Account,
    ConsoleStack,
    goto,
    no_trace,
    on_sign_in_page,
    shoot,
    sign_in,
    sign_out,
)

ADMIN_PAGES = ("/admin", "/admin/settings", "/admin/programs", "/admin/accounts",
               "/admin/messages", "/admin/audit", "/admin/notifications")
FILTER = "Filter all incoming messages through one or more programs"


def test_a_user_gets_a_403_page_for_another_account_and_every_admin_page(
    page: Page, stack: ConsoleStack, account: Account
) -> None:
    other = stack.account("other", ["alpha"], enabled=True)
    base = stack.console_url
    sign_in(page, base, account.token)

    r = goto(page, f"{base}/account/{other.address}")
    assert r.status == 403, f"{r.url}: HTTP {r.status}, expected 403"
    no_trace(page)
    expect(page.get_by_label(FILTER)).to_have_count(0)  # none of the other's settings
    shoot(page, "forbidden")
    for path in ADMIN_PAGES:
        r = goto(page, base + path)
        assert r.status == 403, f"{path} for a user: HTTP {r.status} at {r.url}, expected 403"
        no_trace(page)
        expect(page.get_by_role("button", name="Suspend program delivery")).to_have_count(0)


def _form_action(page: Page) -> str:
    """The URL the Delivery Options form posts to (where its Save button submits)."""
    save = page.get_by_role("button", name="Save")
    action = save.evaluate("b => (b.form && (b.formAction || b.form.action)) || ''")
    assert action, "the Save button is not in a form"
    return str(action)


def test_a_forged_delivery_options_post_without_the_csrf_token_is_refused(
    page: Page, stack: ConsoleStack, account: Account
) -> None:
    base = stack.console_url
    sign_in(page, base, account.token)
    goto(page, f"{base}/account/{account.address}")
    action = _form_action(page)

    # The form's own fields, as the page would send them, minus the CSRF token: what
    # another site could make the victim's browser post with the victim's cookie.
    found = page.get_by_role("button", name="Save").evaluate(
        "b => [...new FormData(b.form, b)].filter(([k]) => !/csrf/i.test(k))"
        ".map(([k, v]) => [k, String(v)])")
    fields = [(str(k), str(v)) for k, v in found]
    fields += [("enabled", "on"), ("programs", "alpha")]
    r = page.request.post(action, data=urlencode(fields), max_redirects=0,
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status in (400, 403), f"forged POST to {action}: HTTP {r.status}\n{r.text()[:500]}"
    assert "Traceback" not in r.text()
    assert stack.account_programs(account.address) == {"enabled": False, "programs": []}

    # The page's own form with its CSRF field taken out.
    removed = page.evaluate(
        "() => { let n = 0; for (const e of document.querySelectorAll('input[type=hidden]'))"
        " if (/csrf/i.test(e.name)) { e.remove(); n++; } return n; }")
    assert removed >= 1, "the Delivery Options form carries no CSRF field"
    page.get_by_label(FILTER).check()
    with page.expect_navigation() as nav:
        page.get_by_role("button", name="Save").click()
    response = nav.value
    assert response is not None and response.status in (400, 403), (
        f"Save without the CSRF field: HTTP {response.status if response else None}")
    no_trace(page)

    assert stack.account_programs(account.address) == {"enabled": False, "programs": []}


def test_a_cookie_saved_before_sign_out_no_longer_works(
    browser: Browser, page: Page, stack: ConsoleStack, account: Account
) -> None:
    base = stack.console_url
    sign_in(page, base, account.token)
    goto(page, f"{base}/account/{account.address}")
    expect(page.get_by_label(FILTER)).to_be_visible()
    saved = page.context.cookies()
    assert saved, "signing in set no cookie"
    # Nothing of the session is readable by the page's scripts, nor the token in the page.
    assert page.evaluate("() => document.cookie") == ""
    assert account.token not in page.content() and account.token not in page.url
    assert all(c["httpOnly"] and c["sameSite"] == "Strict" for c in saved), saved
    sign_out(page)
    assert on_sign_in_page(page) or page.get_by_role("button", name="Sign out").count() == 0

    thief = browser.new_context(viewport=DESKTOP)
    try:
        thief.add_cookies(saved)  # type: ignore[arg-type]
        stolen = thief.new_page()
        r = goto(stolen, f"{base}/account/{account.address}")
        assert on_sign_in_page(stolen), (
            f"a cookie from before the sign-out still opens {r.url} (HTTP {r.status}):\n"
            f"{stolen.inner_text('body')[:500]}")
        expect(stolen.get_by_label(FILTER)).to_have_count(0)
    finally:
        thief.close()


def test_a_forged_suspend_without_the_csrf_token_is_refused(admin_page: Page,
                                                            stack: ConsoleStack) -> None:
    """Another site making a signed-in admin's browser POST "suspend" changes nothing."""
    page, base = admin_page, stack.console_url
    try:
        for path in ("/admin/suspend", "/admin/resume"):
            r = page.request.post(base + path, form={"confirm": "yes"}, max_redirects=0)
            assert r.status in (400, 403), f"forged POST {path}: HTTP {r.status}"
            assert "Traceback" not in r.text()
            assert stack.status()["program_delivery"] == "enabled"
    finally:
        stack.settings(suspended=False)


@pytest.mark.parametrize("path", ["/account/{a}", "/admin"])
def test_signed_out_visitors_are_sent_to_sign_in(page: Page, stack: ConsoleStack,
                                                 account: Account, path: str) -> None:
    goto(page, stack.console_url + path.format(a=account.address))
    assert on_sign_in_page(page), f"{path} without a session: {page.url}"
    no_trace(page)
