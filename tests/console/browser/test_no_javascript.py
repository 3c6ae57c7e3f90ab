"""With JavaScript switched off every form still works: sign-in, Delivery Options (add,
reorder, save) and the admin's suspend and resume."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.console.browser.harness import (
    DESKTOP,
    ConsoleStack,
    expect_programs,
    goto,
    program_row,
    sign_in,
)

FILTER = "Filter all incoming messages through one or more programs"


@pytest.fixture
def nojs(browser: Browser) -> Iterator[Page]:
    ctx = browser.new_context(viewport=DESKTOP, java_script_enabled=False)
    ctx.set_default_timeout(10_000)
    try:
        yield ctx.new_page()
    finally:
        ctx.close()


def test_sign_in_and_delivery_options_without_javascript(nojs: Page, stack: ConsoleStack
                                                         ) -> None:
    page, base = nojs, stack.console_url
    account = stack.account("nojs")
    sign_in(page, base, account.token)
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    goto(page, f"{base}/account/{account.address}")

    page.get_by_label(FILTER).check()
    for name in ("alpha", "bravo"):
        page.get_by_label("Trusted program").select_option(name)
        with page.expect_navigation():
            page.get_by_role("button", name="Add program").click()
    expect_programs(page, ["alpha", "bravo"])
    with page.expect_navigation():
        program_row(page, "alpha").get_by_role("button", name="Move down").click()
    expect_programs(page, ["bravo", "alpha"])
    expect(page.get_by_label(FILTER)).to_be_checked()
    with page.expect_navigation():
        page.get_by_role("button", name="Save").click()

    assert stack.account_programs(account.address) == {"enabled": True,
                                                       "programs": ["bravo", "alpha"]}
    goto(page, f"{base}/account/{account.address}")
    expect_programs(page, ["bravo", "alpha"])
    with page.expect_navigation():
        program_row(page, "alpha").get_by_role("button", name="Remove").click()
    with page.expect_navigation():
        page.get_by_role("button", name="Save").click()
    assert stack.account_programs(account.address)["programs"] == ["bravo"]


def test_admin_suspends_and_resumes_without_javascript(nojs: Page, stack: ConsoleStack
                                                       ) -> None:
    page, base = nojs, stack.console_url
    sign_in(page, base, stack.pipe.env["MAILEXEC_ADMIN_TOKEN"])
    try:
        goto(page, f"{base}/admin")
        with page.expect_navigation():
            page.get_by_role("button", name="Suspend program delivery").click()
        with page.expect_navigation():
            page.get_by_role("button", name="Yes, suspend").click()
        assert stack.status()["program_delivery"] == "suspended"
        goto(page, f"{base}/admin")
        with page.expect_navigation():
            page.get_by_role("button", name="Resume program delivery").click()
        with page.expect_navigation():
            page.get_by_role("button", name="Yes, resume").click()
        assert stack.status()["program_delivery"] == "enabled"
    finally:
        stack.settings(suspended=False)
