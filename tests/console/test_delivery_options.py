"""The Delivery Options page and a user's messages, against real policy, ingest, notifier
and console processes (one set for the module): what a user does there reaches policy,
in order; what ingest and notifier know about the account's mail is shown."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html import unescape

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, MTA_TOKEN
from tests.console.stack import Browser, Stack, hidden_programs, module_stack

FILTER = "Filter all incoming messages through one or more programs"
SEED_WARNING = ("{} is not in the trusted directory: program delivery will fail when it "
                "tries to use that program.")


@pytest.fixture(scope="module")
def stack(mx_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    for stack in module_stack(mx_env, tmp_path_factory.mktemp("console-delivery")):
        stack.program("alpha", "Files a copy in ~/mail/alpha")
        stack.program("bravo")
        yield stack


@pytest.fixture
def user(stack: Stack) -> Iterator[tuple[Browser, str]]:
    address, token = stack.account()
    b = Browser(stack)
    assert b.sign_in(token).status_code == 303
    yield b, address
    b.close()


def _text(html: str) -> str:
    return unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)))


def _form(html: str, action: str, enabled: str | None = None,
          **fields: str | list[str]) -> list[tuple[str, str]]:
    """The Delivery Options form as ``html`` holds it (CSRF value, switch, listed
    programs), ``enabled`` "on"/"" over the page's switch, ``fields`` added, and the
    button ``action`` pressed."""
    csrf = re.search(r'name="csrf" value="([^"]*)"', html)
    assert csrf, "no CSRF field"
    items = [("csrf", unescape(csrf.group(1)))]
    if enabled is None:
        enabled = "on" if re.search(r'name="enabled" value="on"[^>]*checked', html) else ""
    if enabled:
        items.append(("enabled", "on"))
    items += [("programs", name) for name in hidden_programs(html)]
    for key, value in fields.items():
        items += [(key, v) for v in (value if isinstance(value, list) else [value])]
    items.append(("action", action))
    return items


def test_the_page_has_the_guides_form(stack: Stack, user: tuple[Browser, str]) -> None:
    browser, address = user
    r = browser.get(f"/account/{address}")
    assert r.status_code == 200
    page = r.text
    assert page.count("<h1") == 1 and 'lang="en"' in page
    assert "<title>Delivery Options for" in page and "· mailexec console</title>" in page
    assert re.search(r'<input type="checkbox" id="enabled" name="enabled" value="on">\s*'
                     + re.escape(FILTER), page)
    assert '<label for="trusted">Trusted program</label>' in page
    assert "alpha — Files a copy in ~/mail/alpha</option>" in page
    assert ">bravo</option>" in page
    assert '<label for="other">Other program name</label>' in page
    assert 'for="path"' not in page  # secure mode: names, not paths
    for button in ("Add program", "Save", "Sign out"):
        assert f">{button}</button>" in page
    assert "Mailbox delivery: on (set by your administrator)" in _text(page)
    assert "No programs yet." in page
    assert "<legend>" in page


def test_user_turns_delivery_on_adds_two_programs_reorders_and_saves(
    stack: Stack, user: tuple[Browser, str]
) -> None:
    browser, address = user
    page = browser.get(f"/account/{address}").text
    r = browser.post(f"/account/{address}", _form(page, "add", enabled="on", trusted="alpha"))
    assert r.status_code == 200 and hidden_programs(r.text) == ["alpha"]
    assert "Added alpha (not saved yet)" in r.text
    r = browser.post(f"/account/{address}", _form(r.text, "add", trusted="bravo"))
    assert hidden_programs(r.text) == ["alpha", "bravo"]
    assert re.search(r'name="enabled" value="on"[^>]*checked', r.text)
    assert "Move up" in r.text and "Move down" in r.text and "Remove" in r.text
    r = browser.post(f"/account/{address}", _form(r.text, "up:1"))
    assert hidden_programs(r.text) == ["bravo", "alpha"]
    assert stack.programs_of(address) == {"enabled": False, "programs": []}  # not saved yet

    saved = browser.post(f"/account/{address}", _form(r.text, "save"))
    assert saved.status_code == 303 and saved.headers["location"] == f"/account/{address}"
    assert stack.programs_of(address) == {"enabled": True, "programs": ["bravo", "alpha"]}
    after = browser.get(f"/account/{address}").text
    assert "Delivery options saved." in after
    assert hidden_programs(after) == ["bravo", "alpha"]
    assert re.search(r'name="enabled" value="on"[^>]*checked', after)
    assert "is not in the trusted directory" not in after

    # remove one, turn the filter off, save: the list and the switch reach policy
    r = browser.post(f"/account/{address}", _form(after, "remove:0"))
    assert hidden_programs(r.text) == ["alpha"]
    r = browser.post(f"/account/{address}", _form(r.text, "save", enabled=""))
    assert r.status_code == 303
    assert stack.programs_of(address) == {"enabled": False, "programs": ["alpha"]}


def test_an_unregistered_name_shows_the_guides_warning(
    stack: Stack, user: tuple[Browser, str]
) -> None:
    browser, address = user
    page = browser.get(f"/account/{address}").text
    r = browser.post(f"/account/{address}", _form(page, "add", enabled="on", other="zulu"))
    assert r.status_code == 200
    assert SEED_WARNING.format("zulu") in _text(r.text)  # before saving
    r = browser.post(f"/account/{address}", _form(r.text, "save"))
    assert r.status_code == 303
    assert stack.programs_of(address) == {"enabled": True, "programs": ["zulu"]}
    after = browser.get(f"/account/{address}").text
    assert SEED_WARNING.format("zulu") in _text(after)  # and after
    assert SEED_WARNING.format("alpha") not in _text(after)


def test_bad_entries_are_refused_next_to_the_field(stack: Stack, user: tuple[Browser, str]) -> None:
    browser, address = user
    page = browser.get(f"/account/{address}").text
    for bad in ("no spaces please", "sh;rm -rf", "INSECURE-PROGRAM-DELIVERIES"):
        r = browser.post(f"/account/{address}", _form(page, "add", other=bad))
        assert r.status_code == 400, bad
        assert 'class="field-error" id="other-error"' in r.text
        assert 'aria-invalid="true"' in r.text and "There is a problem" in r.text
        assert hidden_programs(r.text) == []
    r = browser.post(f"/account/{address}", _form(page, "up:7"))
    assert r.status_code == 400 and "reload the page" in r.text
    r = browser.post(f"/account/{address}", [*_form(page, "save"), ("programs", "bad name")])
    assert r.status_code == 400 and "Not saved" in r.text
    assert stack.programs_of(address) == {"enabled": False, "programs": []}


def test_a_user_sees_only_its_own_account(stack: Stack, user: tuple[Browser, str]) -> None:
    browser, address = user
    other, _ = stack.account("other")
    for path in (f"/account/{other}", f"/account/{other}/messages"):
        r = browser.get(path)
        assert r.status_code == 403
        assert r.headers["content-type"].startswith("text/html")
        assert "own account" in r.text and "Traceback" not in r.text and FILTER not in r.text
    page = browser.get(f"/account/{address}").text
    r = browser.post(f"/account/{other}", _form(page, "save", programs=["alpha"]))
    assert r.status_code == 403
    assert stack.programs_of(other) == {"enabled": False, "programs": []}
    # the address as the user may spell it: the account key is the same
    assert browser.get(f"/account/{address.upper()}").status_code == 200


def test_an_admin_may_open_any_account(stack: Stack) -> None:
    address, _ = stack.account()
    admin = Browser(stack)
    try:
        assert admin.sign_in(ADMIN_TOKEN).headers["location"] == "/"
        assert admin.get("/").headers["location"] == "/admin"
        page = admin.get(f"/account/{address}")
        assert page.status_code == 200 and FILTER in page.text
        r = admin.post(f"/account/{address}", _form(page.text, "save", enabled="on",
                                                   programs=["bravo"]))
        assert r.status_code == 303
        assert stack.programs_of(address) == {"enabled": True, "programs": ["bravo"]}
    finally:
        admin.close()


def test_mode_and_status_change_the_form(stack: Stack, user: tuple[Browser, str]) -> None:
    browser, address = user
    with stack.api("policy") as policy:
        assert policy.patch("/v1/settings", json={"mode": "insecure",
                                                  "suspended": True}).status_code == 200
        try:
            page = browser.get(f"/account/{address}").text
            assert '<label for="path">Program path</label>' in page
            assert 'for="trusted"' not in page
            assert "Program delivery is suspended" in page
            r = browser.post(f"/account/{address}", _form(page, "add", path="mymail"))
            assert r.status_code == 400 and "not an absolute path" in r.text
            r = browser.post(f"/account/{address}", _form(page, "add", path="/usr/bin/mymail"))
            assert hidden_programs(r.text) == ["/usr/bin/mymail"]
            assert "is not in the trusted directory" not in r.text
        finally:
            assert policy.patch("/v1/settings", json={"mode": "secure",
                                                      "suspended": False}).status_code == 200
    assert "Program delivery is suspended" not in browser.get(f"/account/{address}").text


def test_recent_messages_and_a_message_page(stack: Stack, user: tuple[Browser, str]) -> None:
    browser, address = user
    with httpx.Client(base_url=stack.procs["ingest"].url, timeout=10,
                      headers={"Authorization": f"Bearer {MTA_TOKEN}",
                               "Content-Type": "message/rfc822"}) as ingest:
        ids = []
        for n in range(3):
            r = ingest.post("/v1/messages", params={"from": f"sender{n}@example.net",
                                                    "to": address},
                            content=f"Subject: hello {n}\r\n\r\nbody\r\n".encode())
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
    page = browser.get(f"/account/{address}").text
    text = _text(page)
    assert "Recent messages" in text
    for n, mid in enumerate(ids):
        assert f"sender{n}@example.net" in text
        assert f'href="/account/{address}/messages/{mid}"' in page
    assert text.index("sender2@example.net") < text.index("sender0@example.net")  # newest first
    assert "queued" in text  # no executor here: nothing ran yet

    listing = browser.get(f"/account/{address}/messages").text
    assert all(f"/messages/{mid}" in listing for mid in ids)

    detail = browser.get(f"/account/{address}/messages/{ids[0]}")
    assert detail.status_code == 200
    assert "sender0@example.net" in detail.text and f"Delivery to {address}" in detail.text
    assert "No DSN was sent about this message." in detail.text

    other, other_token = stack.account("other")
    stranger = Browser(stack)
    try:
        stranger.sign_in(other_token)
        r = stranger.get(f"/account/{other}/messages/{ids[0]}")
        assert r.status_code == 404 and "Traceback" not in r.text
    finally:
        stranger.close()


def test_older_messages_are_paged(stack: Stack, user: tuple[Browser, str]) -> None:
    browser, address = user
    with httpx.Client(base_url=stack.procs["ingest"].url, timeout=10,
                      headers={"Authorization": f"Bearer {MTA_TOKEN}",
                               "Content-Type": "message/rfc822"}) as ingest:
        for n in range(21):
            r = ingest.post("/v1/messages", params={"from": f"p{n}@example.net", "to": address},
                            content=b"Subject: page\r\n\r\nbody\r\n")
            assert r.status_code == 202, r.text
    page = browser.get(f"/account/{address}").text
    older = re.search(r'href="(/account/[^"]+/messages\?cursor=[^"]+)">Older messages', page)
    assert older, "no link to older messages"
    assert "p0@example.net" not in _text(page)
    second = browser.get(unescape(older.group(1))).text
    assert "p0@example.net" in _text(second) and "p20@example.net" not in _text(second)
