"""An admin suspends program delivery from the dashboard: mail that arrives meanwhile is
held and shown as suspended; after the resume it is delivered."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from tests.console.browser.harness import ConsoleStack, reload_until, shoot


def suspend(page: Page, base: str) -> None:
    """Dashboard → "Suspend program delivery" → confirmation → "Yes, suspend"."""
    page.goto(f"{base}/admin")
    page.get_by_role("button", name="Suspend program delivery").click()
    expect(page.get_by_role("button", name="Yes, suspend")).to_be_visible()
    shoot(page, "admin-suspend-confirm")
    with page.expect_navigation():
        page.get_by_role("button", name="Yes, suspend").click()


def resume(page: Page, base: str) -> None:
    page.goto(f"{base}/admin")
    page.get_by_role("button", name="Resume program delivery").click()
    with page.expect_navigation():
        page.get_by_role("button", name="Yes, resume").click()


def test_admin_suspends_a_message_is_held_then_resumed_and_delivered(
    admin_page: Page, stack: ConsoleStack
) -> None:
    page, base = admin_page, stack.console_url
    account = stack.account("held", ["alpha"], enabled=True)
    try:
        suspend(page, base)
        assert stack.status()["program_delivery"] == "suspended"
        page.goto(f"{base}/admin")
        expect(page.locator("main")).to_contain_text(re.compile(r"suspended", re.I))
        expect(page.get_by_role("button", name="Resume program delivery")).to_be_visible()
        shoot(page, "admin-dashboard-suspended")

        mid = stack.submit(account.address, subject="while suspended")
        stack.wait_state(mid, ("suspended",))
        assert account.order_log() == ""  # nothing ran

        page.goto(f"{base}/admin/messages/{mid}")
        reload_until(page, lambda: re.search(r"\bsuspended\b", page.inner_text("main"), re.I)
                     is not None, f"message {mid} shown as suspended")
        expect(page.locator("main")).to_contain_text(account.address)

        resume(page, base)
        assert stack.status()["program_delivery"] == "enabled"
        page.goto(f"{base}/admin/messages/{mid}")
        reload_until(page, lambda: re.search(r"\bdelivered\b", page.inner_text("main"), re.I)
                     is not None, f"message {mid} shown as delivered after the resume")
        assert stack.recipient_state(mid) == "delivered"
        assert account.order_log() == "alpha\n"
    finally:
        stack.settings(suspended=False)  # whatever happened, later tests get mail delivered
