"""The browser tests' pipeline and the few things every scenario does in a page.

``ConsoleStack`` starts policy, ingest, notifier (sending into an SMTP sink of ours), the
executor and the console once for the whole package, registers two trusted programs
(``alpha`` and ``bravo``: the executor tests' C program, which appends the name it was
run under to ``order.log`` in the account's home) and makes accounts owned by throwaway
uids (64701…) with their own home and user token. It talks to the services over HTTP as
the admin and the MTA would; the pages are driven only through the browser.
"""

from __future__ import annotations

import itertools
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from playwright.sync_api import Locator, Page, Response, ViewportSize, expect

from mailexec.supervisor import service_env
from tests.conftest import ADMIN_TOKEN, MTA_TOKEN, ServiceProcess, free_port
from tests.executor.helpers import Homes, Pipeline, message

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
MTA = {"Authorization": f"Bearer {MTA_TOKEN}"}
PROGRAMS = {
    "alpha": "Appends 'alpha' to order.log in your home directory.",
    "bravo": "Appends 'bravo' to order.log in your home directory.",
}
SCREENSHOTS = Path(__file__).resolve().parent.parent / "screenshots"
DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 375, "height": 740}
# What a stack trace or a framework's debug page would show; never on a console page.
TRACE_MARKERS = ("Traceback", 'File "', "Internal Server Error", "jinja2.exceptions",
                 "starlette", "uvicorn")
_uids = itertools.count(64701)


class Sink:
    """aiosmtpd handler: keeps what the notifier sends."""

    def __init__(self) -> None:
        self.received: list[Envelope] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.received.append(envelope)
        return "250 OK"


@dataclass
class Account:
    address: str
    uid: int
    home: Path
    token: str

    def order_log(self) -> str:
        try:
            return (self.home / "order.log").read_text()
        except FileNotFoundError:
            return ""


class ConsoleStack:
    """Five real services on free ports against the run's database and vhost."""

    def __init__(self, mx_env: dict[str, str], log_dir: Path) -> None:
        self.pipe = Pipeline(mx_env, log_dir)
        self.homes = Homes()
        self.sink = Sink()
        self.smtp = Controller(self.sink, hostname="127.0.0.1", port=free_port())
        env = self.pipe.env
        env.update({
            "MAILEXEC_CONSOLE_PORT": str(free_port()),
            "MAILEXEC_CONSOLE_SECRET": "browser-tests-" + secrets.token_hex(16),
            "MAILEXEC_CONSOLE_COOKIE_SECURE": "never",
            "MAILEXEC_INGEST_URL": self.pipe.ingest_url,
            "MAILEXEC_NOTIFIER_URL": f"http://127.0.0.1:{env['MAILEXEC_NOTIFIER_PORT']}",
            "MAILEXEC_SMTP_URL": f"smtp://127.0.0.1:{self.smtp.port}",
            "MAILEXEC_NOTIFIER_RETRY_BASE_S": "1",
            "MAILEXEC_NOTIFIER_RETRY_MAX_S": "5",
            "MAILEXEC_DSN_AGGREGATE_WINDOW_S": "0.5",
        })
        self.console_url = f"http://127.0.0.1:{env['MAILEXEC_CONSOLE_PORT']}"
        self.policy_url = self.pipe.policy_url
        self.ingest_url = self.pipe.ingest_url
        self.console: ServiceProcess | None = None

    # --- life --------------------------------------------------------------------------

    def start(self, program: bytes) -> None:
        self.smtp.start()
        self.pipe.start("policy")
        self.pipe.start("ingest")
        self.pipe.start("notifier")
        # MAILEXEC_EXECUTOR_HELD_RECHECK_S=1 (the executor tests' environment): a job held
        # while delivery is suspended is looked at again within a second of the resume.
        self.pipe.start("executor", {"MAILEXEC_EXECUTOR_HELD_RECHECK_S": "1"})
        # The console as `mailexec up` starts it: no token, database, broker or SMTP URL.
        self.console = ServiceProcess("console", service_env("console", self.pipe.env),
                                      self.pipe.log_dir / "console.log").start()
        self.settings(mode="secure", suspended=False)
        with self.admin() as c:
            for name, description in PROGRAMS.items():
                r = c.put(f"/v1/programs/{name}", content=program,
                          headers={"Content-Type": "application/octet-stream"})
                assert r.status_code in (200, 201), r.text
                r = c.patch(f"/v1/programs/{name}", json={"description": description})
                assert r.status_code == 200, r.text

    def stop(self) -> None:
        if self.console is not None:
            self.console.stop()
        self.pipe.stop_all()
        self.smtp.stop()
        self.homes.cleanup()

    def logs(self) -> str:
        """The console's log tail, for assertion messages."""
        return self.console.log_tail() if self.console else ""

    # --- the admin's and the MTA's side, over HTTP -------------------------------------

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.policy_url, headers=ADMIN, timeout=10)

    def settings(self, **patch: Any) -> dict[str, Any]:
        with self.admin() as c:
            r = c.patch("/v1/settings", json=patch)
            assert r.status_code == 200, r.text
            return r.json()  # type: ignore[no-any-return]

    def status(self) -> dict[str, Any]:
        with self.admin() as c:
            r = c.get("/v1/status")
            assert r.status_code == 200, r.text
            return r.json()  # type: ignore[no-any-return]

    def account(self, name: str, programs: list[str] | None = None,
                enabled: bool = False) -> Account:
        """A new account ``<name>-<uid>@example.org`` owned by a fresh uid with its own
        home, its program list set by the admin, and a user token for it."""
        uid = next(_uids)
        uid, gid, home = self.homes.make(uid)
        address = f"{name}-{uid}@example.org"
        body = {"owner": {"name": name, "uid": uid, "gid": gid, "home": str(home),
                          "shell": "/bin/sh"},
                "program_delivery": {"enabled": enabled, "programs": programs or []},
                "mailbox_delivery": False}
        with self.admin() as c:
            r = c.put(f"/v1/accounts/{address}", json=body)
            assert r.status_code in (200, 201), r.text
            r = c.post(f"/v1/accounts/{address}/tokens", json={"label": "browser-test"})
            assert r.status_code == 201, r.text
            token = str(r.json()["token"])
        return Account(address, uid, home, token)

    def account_programs(self, address: str) -> dict[str, Any]:
        """The account's program delivery as policy has it (what the executor will use)."""
        with self.admin() as c:
            r = c.get(f"/v1/accounts/{address}")
            assert r.status_code == 200, r.text
            return r.json()["program_delivery"]  # type: ignore[no-any-return]

    def submit(self, to: str, sender: str | None = None, subject: str = "browser test",
               notify: str | None = None) -> str:
        """POST /v1/messages as the MTA; the message's id."""
        sender = sender or f"sender-{secrets.token_hex(3)}@example.net"
        params: list[tuple[str, str | int | float | bool | None]] = [("from", sender), ("to", to)]
        if notify:
            params.append(("notify", notify))
        with httpx.Client(base_url=self.ingest_url, headers=MTA, timeout=10) as c:
            r = c.post("/v1/messages", params=params,
                       content=message(subject), headers={"Content-Type": "message/rfc822"})
            assert r.status_code == 202, r.text
            return str(r.json()["id"])

    def wait_mail_to(self, address: str, timeout: float = 20.0) -> None:
        """Until the notifier has sent something (a DSN) to ``address`` through our sink."""
        deadline = time.monotonic() + timeout
        while not any(address in (e.rcpt_tos or []) for e in self.sink.received):
            assert time.monotonic() < deadline, f"no mail to {address} within {timeout}s"
            time.sleep(0.2)

    def recipient_state(self, mid: str) -> str:
        with httpx.Client(base_url=self.ingest_url, headers=MTA, timeout=10) as c:
            r = c.get(f"/v1/messages/{mid}")
            assert r.status_code == 200, r.text
            return str(r.json()["recipients"][0]["state"])

    def wait_state(self, mid: str, states: tuple[str, ...], timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while (state := self.recipient_state(mid)) not in states:
            assert time.monotonic() < deadline, f"message {mid} still {state} after {timeout}s"
            time.sleep(0.2)
        return state


# --- in the page ------------------------------------------------------------------------


def sign_in(page: Page, base: str, token: str) -> Response | None:
    """Sign in through the form, as a person would: open the console, type the token.

    The response of the page the form leads to (None if the page changed without one)."""
    page.goto(base + "/")
    page.get_by_label("Token").fill(token)
    with page.expect_navigation() as nav:
        page.get_by_role("button", name="Sign in").click()
    return nav.value


def sign_out(page: Page) -> None:
    with page.expect_navigation():
        page.get_by_role("button", name="Sign out").click()


def goto(page: Page, url: str) -> Response:
    response = page.goto(url)
    assert response is not None, url
    return response


def no_trace(page: Page) -> None:
    text = page.content()
    for marker in TRACE_MARKERS:
        assert marker not in text, f"{page.url} shows {marker!r}:\n{page.inner_text('body')[:2000]}"


def on_sign_in_page(page: Page) -> bool:
    return page.get_by_label("Token").count() == 1 and \
        page.get_by_role("button", name="Sign in").count() == 1


def reload_until(page: Page, ready: Callable[[], bool], what: str, timeout: float = 30.0,
                 every: float = 0.5) -> None:
    """Reload the page until ``ready()`` holds (a person pressing F5), at most ``timeout``."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen on {page.url} within {timeout:.0f}s; "
                                 f"the page says:\n{page.inner_text('body')[:3000]}")
        time.sleep(every)
        page.reload()


def eventually(ok: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Until ``ok()`` holds (e.g. a form's POST has reached policy), at most ``timeout``."""
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f}s"
        time.sleep(0.1)


def program_rows(page: Page) -> Locator:
    """The rows of the ordered program list (list items or table rows with a Remove
    button: whatever the page uses, it has to be one of the two for a screen reader)."""
    return page.get_by_role("listitem").or_(page.get_by_role("row")).filter(
        has=page.get_by_role("button", name="Remove"))


def expect_programs(page: Page, names: list[str]) -> None:
    """The page lists exactly ``names``, in this order (waits for the page to get there)."""
    expect(program_rows(page)).to_have_count(len(names))
    expect(program_rows(page)).to_contain_text(names)
    assert listed_programs(page) == names


def program_row(page: Page, name: str) -> Locator:
    """The row of the ordered program list that holds ``name``."""
    return program_rows(page).filter(has_text=name)


def listed_programs(page: Page) -> list[str]:
    """The program names of the ordered list, top to bottom, as the page shows them."""
    found = []
    for text in program_rows(page).all_inner_texts():
        names = [n for n in PROGRAMS if re.search(rf"\b{n}\b", text)]
        found.append(names[0] if len(names) == 1 else text.strip())
    return found


def is_focused(locator: Locator) -> bool:
    return bool(locator.evaluate("e => e === document.activeElement"))


def tab_to(page: Page, locator: Locator, limit: int = 60, key: str = "Tab") -> None:
    """Press Tab until ``locator`` has the focus (at most ``limit`` presses)."""
    for _ in range(limit):
        if is_focused(locator):
            return
        page.keyboard.press(key)
    assert is_focused(locator), f"{limit} presses of {key} never reached {locator} on {page.url}"


def shoot(page: Page, name: str) -> Path:
    """A full-page screenshot into tests/console/screenshots/<name>.png (overwritten)."""
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True, animations="disabled")
    return path


def expect_ok(response: Response | None, what: str) -> Response:
    assert response is not None, what
    assert response.status == 200, f"{what}: HTTP {response.status} at {response.url}"
    return response

