"""A user sets up program delivery on the Delivery Options page; mail then runs their
programs in the order they chose, and the page shows the delivery."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from tests.console.browser.harness import (
    Account,
    ConsoleStack,
    eventually,
    expect_programs,
    program_row,
    reload_until,
    sign_in,
)

FILTER = "Filter all incoming messages through one or more programs"


def test_user_chooses_two_programs_in_order_and_mail_runs_them_in_that_order(
    page: Page, stack: ConsoleStack, account: Account
) -> None:
    base = stack.console_url
    sign_in(page, base, account.token)
    page.goto(f"{base}/account/{account.address}")
    expect(page.get_by_role("heading", name=re.compile("Delivery Options", re.I)).first
           ).to_be_visible()

    page.get_by_label(FILTER).check()
    page.get_by_label("Trusted program").select_option("alpha")
    page.get_by_role("button", name="Add program").click()
    expect_programs(page, ["alpha"])
    page.get_by_label("Trusted program").select_option("bravo")
    page.get_by_role("button", name="Add program").click()
    expect_programs(page, ["alpha", "bravo"])

    program_row(page, "bravo").get_by_role("button", name="Move up").click()
    expect_programs(page, ["bravo", "alpha"])
    expect(page.get_by_label(FILTER)).to_be_checked()
    page.get_by_role("button", name="Save").click()
    saved = {"enabled": True, "programs": ["bravo", "alpha"]}  # what the executor will get
    eventually(lambda: stack.account_programs(account.address) == saved, "Save reaching policy")

    page.goto(f"{base}/account/{account.address}")  # what the page shows after saving
    expect(page.get_by_label(FILTER)).to_be_checked()
    expect_programs(page, ["bravo", "alpha"])

    sender = f"order-{account.uid}@example.net"
    mid = stack.submit(account.address, sender=sender, subject="two programs")
    stack.wait_state(mid, ("delivered", "bounced"))
    assert account.order_log() == "bravo\nalpha\n"  # both ran, in the chosen order

    row = page.get_by_role("row").filter(has_text=sender)

    def delivered_shown() -> bool:
        return row.count() == 1 and re.search(r"\bdelivered\b", row.inner_text()) is not None

    page.goto(f"{base}/account/{account.address}")
    reload_until(page, delivered_shown, f"message from {sender} shown as delivered")
    shown = row.inner_text()
    assert 0 <= shown.find("bravo") < shown.find("alpha"), (
        f"the message's row should show bravo's run, then alpha's: {shown!r}")

