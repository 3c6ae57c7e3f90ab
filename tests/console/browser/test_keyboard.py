"""Keyboard only: signing in and saving the Delivery Options form with Tab, Space, typing
and Enter, and the focused control visibly marked."""

from __future__ import annotations

import re

from playwright.sync_api import Locator, Page, expect

from tests.console.browser.harness import (
    Account,
    ConsoleStack,
    eventually,
    expect_programs,
    goto,
    is_focused,
    tab_to,
)

FILTER = "Filter all incoming messages through one or more programs"
FOCUS_STYLE = ("e => { const s = getComputedStyle(e); return {outline: `${s.outlineStyle} "
               "${s.outlineWidth} ${s.outlineColor}`, shadow: s.boxShadow, "
               "border: s.borderColor, background: s.backgroundColor}; }")


def _marked(style: dict[str, str]) -> bool:
    outline = style["outline"]
    return (not outline.startswith("none") and not re.match(r"\S+ 0px", outline)) or \
        style["shadow"] not in ("", "none")


def _press_enter_and_wait(page: Page) -> None:
    with page.expect_navigation():
        page.keyboard.press("Enter")


def test_sign_in_and_delivery_options_with_the_keyboard_alone(
    page: Page, stack: ConsoleStack, account: Account
) -> None:
    base = stack.console_url
    goto(page, base + "/")
    token = page.get_by_label("Token")
    tab_to(page, token)
    page.keyboard.type(account.token)
    tab_to(page, page.get_by_role("button", name="Sign in"))
    _press_enter_and_wait(page)
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()

    goto(page, f"{base}/account/{account.address}")
    box = page.get_by_label(FILTER)
    tab_to(page, box)
    page.keyboard.press("Space")
    expect(box).to_be_checked()

    select = page.get_by_label("Trusted program")
    tab_to(page, select)
    page.keyboard.type("bravo")  # a closed <select> takes the option typed
    expect(select).to_have_value("bravo")
    tab_to(page, page.get_by_role("button", name="Add program"))
    page.keyboard.press("Enter")
    expect_programs(page, ["bravo"])

    save = page.get_by_role("button", name="Save")
    tab_to(page, save)
    page.keyboard.press("Space")  # Space activates a button like Enter does
    eventually(lambda: stack.account_programs(account.address)
               == {"enabled": True, "programs": ["bravo"]}, "the keyboard-made Save")


def _focus_styles(page: Page, button: Locator) -> tuple[dict[str, str], dict[str, str]]:
    """The button's computed style unfocused, then focused from the keyboard."""
    page.evaluate("() => document.activeElement && document.activeElement.blur()")
    page.mouse.move(0, 0)
    before: dict[str, str] = button.evaluate(FOCUS_STYLE)
    tab_to(page, button)
    assert is_focused(button)
    after: dict[str, str] = button.evaluate(FOCUS_STYLE)
    return before, after


def test_the_focused_control_is_visibly_marked(
    page: Page, stack: ConsoleStack, account: Account
) -> None:
    base = stack.console_url
    goto(page, base + "/")
    unmarked = []
    for what, control in (("Token field", page.get_by_label("Token")),
                          ("Sign in button", page.get_by_role("button", name="Sign in"))):
        before, after = _focus_styles(page, control)
        if after == before or not _marked(after):
            unmarked.append(f"sign-in page, {what}: focused {after}, unfocused {before}")

    page.get_by_label("Token").fill(account.token)
    with page.expect_navigation():
        page.get_by_role("button", name="Sign in").click()
    goto(page, f"{base}/account/{account.address}")
    for what, control in (
        ("checkbox", page.get_by_label(FILTER)),
        ("Trusted program select", page.get_by_label("Trusted program")),
        ("Add program button", page.get_by_role("button", name="Add program")),
        ("Save button", page.get_by_role("button", name="Save")),
        ("Sign out button", page.get_by_role("button", name="Sign out")),
        ("Messages link", page.get_by_role("link", name="Messages", exact=True)),
    ):
        before, after = _focus_styles(page, control)
        if after == before or not _marked(after):
            unmarked.append(f"Delivery Options, {what}: focused {after}, unfocused {before}")
    assert not unmarked, "focus not visibly marked:\n" + "\n".join(unmarked)
