"""The console's admin pages against real policy, ingest and notifier processes, driven over
HTTP the way a browser without JavaScript would: GET a page, read its form's CSRF value,
POST the form, follow the redirect (services/console/pages/admin*.py).

One set of services for the whole module (starting four processes costs seconds); each
test leaves the settings as it found them.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import os
import re
import shutil
import uuid
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, MTA_TOKEN, ServiceProcess, _truncate, free_port

SH = Path("/bin/sh").resolve().read_bytes()  # a shell: refused without the waiver
TRUE = Path(shutil.which("true") or "/bin/true").read_bytes()
ADMIN_PAGES = ("/admin", "/admin/settings", "/admin/programs", "/admin/accounts",
               "/admin/accounts/new", "/admin/messages", "/admin/audit", "/admin/notifications",
               "/admin/suspend", "/admin/resume")
CSRF = re.compile(r'name="csrf" value="([^"]*)"')


class Stack:
    def __init__(self, procs: dict[str, ServiceProcess]) -> None:
        self.procs = procs
        self.console = procs["console"].url
        self.policy = procs["policy"].url
        self.ingest = procs["ingest"].url

    def api(self, service: str, token: str = ADMIN_TOKEN) -> httpx.Client:
        return httpx.Client(base_url=self.procs[service].url, timeout=10,
                            headers={"Authorization": f"Bearer {token}"})

    def settings(self) -> dict[str, object]:
        with self.api("policy") as c:
            r = c.get("/v1/settings")
            r.raise_for_status()
            return dict(r.json())

    def browser(self, token: str = ADMIN_TOKEN) -> Browser:
        return Browser(self.console).sign_in(token)


class Browser:
    """A console visitor: cookies kept, redirects followed, forms posted with their CSRF."""

    def __init__(self, base: str) -> None:
        self.client = httpx.Client(base_url=base, timeout=15, follow_redirects=True)
        self.csrf = ""

    def get(self, path: str, **params: str) -> httpx.Response:
        r = self.client.get(path, params=params or None)
        if m := CSRF.search(r.text):
            self.csrf = html.unescape(m.group(1))
        return r

    def post(self, path: str, data: dict[str, str] | None = None,
             files: dict[str, tuple[str, bytes, str]] | None = None) -> httpx.Response:
        r = self.client.post(path, data={**(data or {}), "csrf": self.csrf}, files=files)
        if m := CSRF.search(r.text):
            self.csrf = html.unescape(m.group(1))
        return r

    def sign_in(self, token: str) -> Browser:
        self.get("/signin")
        r = self.post("/signin", {"token": token, "next": "/"})
        assert r.status_code == 200, r.text[:2000]
        assert "Sign out" in r.text, r.text[:2000]
        return self

    def close(self) -> None:
        self.client.close()


def text_of(page: httpx.Response) -> str:
    """The page's visible text, roughly: tags out, entities decoded, spaces collapsed."""
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page.text)))


def field_error(page: httpx.Response, name: str) -> str:
    """The error shown next to the input ``name``, tied to it by aria-describedby."""
    fid = "f-" + name.replace(".", "-").replace("_", "-")
    control = re.search(rf'<(?:input|select|textarea)[^>]*\bid="{fid}"[^>]*>', page.text)
    assert control, f"no control {fid}"
    assert 'aria-invalid="true"' in control.group(0)
    assert f"{fid}-error" in control.group(0)
    shown = re.search(rf'id="{fid}-error"[^>]*>(.*?)</p>', page.text, re.S)
    assert shown, f"no error next to {name}"
    return html.unescape(shown.group(1)).strip()


def run_in_thread(coro: Coroutine[Any, Any, None]) -> None:
    """asyncio.run where a Playwright sync API of an earlier module may have left this
    thread's event loop marked as running."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coro).result()


@pytest.fixture(scope="module")
def stack(mx_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    run_in_thread(_truncate())  # no program, account or setting of another module's
    logs = tmp_path_factory.mktemp("console-admin")
    env = dict(os.environ)
    env.update(mx_env)
    for name in ("INGEST", "POLICY", "NOTIFIER", "CONSOLE"):
        env[f"MAILEXEC_{name}_PORT"] = str(free_port())
    for name in ("INGEST", "POLICY", "NOTIFIER"):
        env[f"MAILEXEC_{name}_URL"] = f"http://127.0.0.1:{env[f'MAILEXEC_{name}_PORT']}"
    env.update({"MAILEXEC_CONSOLE_SECRET": "test-console-secret",
                "MAILEXEC_CONSOLE_COOKIE_SECURE": "never",
                "MAILEXEC_MAX_PROGRAM_BYTES": str(max(len(TRUE), 4096) * 4)})
    procs: dict[str, ServiceProcess] = {}
    try:
        for name in ("policy", "ingest", "notifier", "console"):
            procs[name] = ServiceProcess(name, dict(env), logs / f"{name}.log").start()
        yield Stack(procs)
    finally:
        for proc in reversed(list(procs.values())):
            proc.stop()
        run_in_thread(_truncate())  # and none of ours for the next module


@pytest.fixture(scope="module")
def admin(stack: Stack) -> Iterator[Browser]:
    browser = stack.browser()
    yield browser
    browser.close()


def make_account(stack: Stack, address: str) -> None:
    with stack.api("policy") as c:
        r = c.put(f"/v1/accounts/{address}", json={
            "owner": {"name": "u", "uid": 64101, "gid": 64101, "home": "/tmp", "shell": "/bin/sh"},
            "program_delivery": {"enabled": True, "programs": ["sorter"]},
            "mailbox_delivery": False})
        assert r.status_code in (200, 201), r.text


# --- dashboard: suspend and resume ----------------------------------------------------------


def test_dashboard_suspend_and_resume_through_confirmation(stack: Stack, admin: Browser) -> None:
    page = admin.get("/admin")
    assert page.status_code == 200
    assert "<title>Dashboard · mailexec console</title>" in page.text
    assert len(re.findall(r"<h1[ >]", page.text)) == 1
    assert 'action="/admin/suspend"' in page.text and "Suspend program delivery" in page.text

    confirm = admin.get("/admin/suspend")
    assert "Suspend program delivery?" in confirm.text
    assert "Messages will be held, not bounced, until you resume." in confirm.text
    assert "Yes, suspend" in confirm.text and 'href="/admin"' in confirm.text
    assert stack.settings()["suspended"] is False  # the GET changed nothing

    done = admin.post("/admin/suspend")
    assert done.status_code == 200 and str(done.url).endswith("/admin")
    assert "Program delivery is suspended" in text_of(done)  # the notice
    assert stack.settings()["suspended"] is True
    with stack.api("policy") as c:
        assert c.get("/v1/status").json()["program_delivery"] == "suspended"
    assert "Resume program delivery" in done.text

    assert "Yes, resume" in admin.get("/admin/resume").text
    done = admin.post("/admin/resume")
    assert done.status_code == 200 and "Suspend program delivery" in done.text
    assert stack.settings()["suspended"] is False


def test_a_post_without_the_csrf_value_changes_nothing(stack: Stack, admin: Browser) -> None:
    r = admin.client.post("/admin/suspend", data={})
    assert r.status_code == 403
    assert stack.settings()["suspended"] is False


# --- settings -------------------------------------------------------------------------------


def settings_form(page: httpx.Response) -> dict[str, str]:
    """What the browser would submit of the settings form as shown."""
    form: dict[str, str] = {}
    for m in re.finditer(r'<input([^>]*)>', page.text):
        attrs = m.group(1)
        name = re.search(r'name="([^"]+)"', attrs)
        if not name or name.group(1) == "csrf":
            continue
        kind = re.search(r'type="([^"]+)"', attrs)
        value = re.search(r'value="([^"]*)"', attrs)
        if kind and kind.group(1) == "checkbox":
            if " checked" in attrs:
                form[name.group(1)] = "on"
        else:
            form[name.group(1)] = html.unescape(value.group(1)) if value else ""
    for m in re.finditer(r'<textarea[^>]*name="([^"]+)"[^>]*>(.*?)</textarea>', page.text, re.S):
        form[m.group(1)] = html.unescape(m.group(2))
    for m in re.finditer(r'<select[^>]*name="([^"]+)"[^>]*>(.*?)</select>', page.text, re.S):
        chosen = re.search(r'<option value="([^"]*)" selected', m.group(2))
        form[m.group(1)] = chosen.group(1) if chosen else ""
    return form


def test_settings_bad_value_is_shown_at_its_field_and_nothing_changes(
    stack: Stack, admin: Browser
) -> None:
    before = stack.settings()
    page = admin.get("/admin/settings")
    assert "<title>Settings · mailexec console</title>" in page.text
    form = settings_form(page)
    assert {"mode", "program_timeout_s", "valid_shells", "tempfail_exit_codes",
            "safe_user.uid", "safe_user.gid", "postmaster"} <= set(form)

    bad = admin.post("/admin/settings", {**form, "program_timeout_s": "-1",
                                         "max_output_bytes": "1000"})
    assert bad.status_code == 400
    assert "greater than or equal to 1" in field_error(bad, "program_timeout_s")
    assert "There is a problem" in bad.text
    assert stack.settings() == before  # not even the valid change was sent

    ok = admin.post("/admin/settings", {**form, "program_timeout_s": "75",
                                        "tempfail_exit_codes": "75, 71, 64"})
    assert ok.status_code == 200 and str(ok.url).endswith("/admin/settings")
    assert "Settings saved" in ok.text
    after = stack.settings()
    assert after["program_timeout_s"] == 75 and after["tempfail_exit_codes"] == [75, 71, 64]
    assert {k: v for k, v in after.items() if k not in ("program_timeout_s",
                                                         "tempfail_exit_codes")} == {
        k: v for k, v in before.items() if k not in ("program_timeout_s", "tempfail_exit_codes")}
    with stack.api("policy") as c:  # only the two changed settings were patched
        entry = c.get("/v1/audit", params={"kind": "settings", "limit": 1}).json()["items"][0]
    assert set(entry["new"]) == {"program_timeout_s", "tempfail_exit_codes"}

    restore = admin.post("/admin/settings", {**settings_form(admin.get("/admin/settings")),
                                             "program_timeout_s": str(before["program_timeout_s"]),
                                             "tempfail_exit_codes": "71, 75"})
    assert restore.status_code == 200
    assert stack.settings() == before


# --- trusted programs -----------------------------------------------------------------------


def test_program_upload_interpreter_refused_then_binary_accepted(
    stack: Stack, admin: Browser
) -> None:
    admin.get("/admin/programs")
    refused = admin.post("/admin/programs", {"name": "shfilter", "network": ""},
                         files={"file": ("shfilter", SH, "application/octet-stream")})
    assert refused.status_code == 400
    message = field_error(refused, "allow_interpreter")
    assert "refused" in message and "allow it anyway" in message
    with stack.api("policy") as c:
        assert c.get("/v1/programs/shfilter").status_code == 404

    accepted = admin.post("/admin/programs",
                          {"name": "sorter", "description": "Sorts <mail>", "network": "egress"},
                          files={"file": ("true", TRUE, "application/octet-stream")})
    assert accepted.status_code == 200, accepted.text[:3000]
    digest = hashlib.sha256(TRUE).hexdigest()
    assert digest in accepted.text.replace("<wbr>", "")  # broken into groups for phones
    assert "Sorts &lt;mail&gt;" in accepted.text  # escaped, never markup
    with stack.api("policy") as c:
        meta = c.get("/v1/programs/sorter").json()
    assert meta["sha256"] == digest and meta["network"] == "egress"
    assert meta["description"] == "Sorts <mail>"

    edit = admin.post("/admin/programs/sorter", {"description": "", "network": "none"})
    assert edit.status_code == 200 and "Program sorter saved" in edit.text
    with stack.api("policy") as c:
        meta = c.get("/v1/programs/sorter").json()
    assert meta["description"] is None and meta["network"] == "none"



def test_program_too_large_and_delete_with_confirmation(stack: Stack, admin: Browser) -> None:
    admin.get("/admin/programs")
    limit = int(stack.procs["policy"].env["MAILEXEC_MAX_PROGRAM_BYTES"])
    big = admin.post("/admin/programs", {"name": "big"},
                     files={"file": ("big", b"\x7fELF" + b"\0" * limit, "application/octet-stream")})
    assert big.status_code == 400
    assert "larger than the limit" in field_error(big, "file")

    ok = admin.post("/admin/programs", {"name": "doomed"},
                    files={"file": ("doomed", TRUE, "application/octet-stream")})
    assert ok.status_code == 200
    confirm = admin.get("/admin/programs/doomed/delete")
    assert "Delete the trusted program doomed?" in confirm.text and "Cancel" in confirm.text
    with stack.api("policy") as c:
        assert c.get("/v1/programs/doomed").status_code == 200
    gone = admin.post("/admin/programs/doomed/delete")
    assert gone.status_code == 200 and "Program doomed deleted" in gone.text
    with stack.api("policy") as c:
        assert c.get("/v1/programs/doomed").status_code == 404


# --- accounts and tokens --------------------------------------------------------------------


ACCOUNT_FORM = {"address": "Carol@Example.org", "owner_name": "carol", "uid": "64201",
                "gid": "64201", "home": "/home/carol", "shell": "/bin/sh",
                "program_delivery": "on", "programs": "sorter\nnot-registered",
                "mailbox_delivery": "on"}


def test_account_create_edit_token_once_and_revoke(stack: Stack, admin: Browser) -> None:
    admin.get("/admin/accounts/new")
    bad = admin.post("/admin/accounts/new", {**ACCOUNT_FORM, "uid": "minus one"})
    assert bad.status_code == 400 and "whole number" in field_error(bad, "uid")

    created = admin.post("/admin/accounts/new", ACCOUNT_FORM)
    assert created.status_code == 200
    assert str(created.url).endswith("/admin/accounts/carol@example.org")
    assert "Account carol@example.org created" in created.text
    assert "not-registered" in text_of(created) and "not a registered trusted program" in \
        text_of(created)  # policy's warning, shown
    again = admin.post("/admin/accounts/new", ACCOUNT_FORM)
    assert again.status_code == 400 and "exists already" in field_error(again, "address")

    found = admin.get("/admin/accounts", q="CAROL@example.org")
    assert found.status_code == 200 and "carol@example.org" in text_of(found)
    assert "carol@example.org" in text_of(admin.get("/admin/accounts", q="aro"))  # any part
    none = admin.get("/admin/accounts", q="nobody")
    assert none.status_code == 200 and "No account address contains" in text_of(none)
    assert "carol@example.org" not in text_of(none)

    page = admin.get("/admin/accounts/carol@example.org")
    issued = admin.post("/admin/accounts/carol@example.org/tokens", {"label": "laptop"})
    assert issued.status_code == 200
    assert issued.headers["cache-control"] == "no-store"
    token = re.search(r'id="new-token" readonly value="([^"]+)"', issued.text)
    assert token, issued.text[:3000]
    secret = html.unescape(token.group(1))
    assert secret not in str(issued.url)
    assert all(secret not in str(r.url) for r in issued.history)
    with stack.api("policy", secret) as c:
        assert c.get("/v1/accounts/carol@example.org").status_code == 200

    page = admin.get("/admin/accounts/carol@example.org")
    assert secret not in page.text and "laptop" in page.text
    assert admin.get("/admin/accounts/carol@example.org").text.count(secret) == 0

    with stack.api("policy") as c:
        token_id = c.get("/v1/accounts/carol@example.org/tokens").json()["items"][0]["id"]
    confirm = admin.get(f"/admin/tokens/{token_id}/revoke", account="carol@example.org")
    assert "Revoke the token “laptop” of carol@example.org?" in html.unescape(confirm.text)
    revoked = admin.post(f"/admin/tokens/{token_id}/revoke", {"account": "carol@example.org"})
    assert revoked.status_code == 200 and "Token revoked" in revoked.text
    with stack.api("policy", secret) as c:
        assert c.get("/v1/accounts/carol@example.org").status_code == 401

    edited = admin.post("/admin/accounts/carol@example.org",
                        {**ACCOUNT_FORM, "programs": "sorter", "mailbox_delivery": ""})
    assert edited.status_code == 200 and "Account carol@example.org saved" in edited.text
    with stack.api("policy") as c:
        account = c.get("/v1/accounts/carol@example.org").json()
    assert account["program_delivery"]["programs"] == ["sorter"]
    assert account["mailbox_delivery"] is False


def test_account_delete_with_confirmation(stack: Stack, admin: Browser) -> None:
    make_account(stack, "dave@example.org")
    confirm = admin.get("/admin/accounts/dave@example.org/delete")
    assert "Delete the account dave@example.org?" in confirm.text
    gone = admin.post("/admin/accounts/dave@example.org/delete")
    assert gone.status_code == 200 and "Account dave@example.org deleted" in gone.text
    with stack.api("policy") as c:
        assert c.get("/v1/accounts/dave@example.org").status_code == 404


# --- message tracking, audit, notifications ---------------------------------------------


def submit(stack: Stack, sender: str, recipient: str) -> str:
    with stack.api("ingest", MTA_TOKEN) as c:
        r = c.post("/v1/messages", params={"from": sender, "to": recipient},
                   content=b"Subject: tracked\r\n\r\nhello\r\n",
                   headers={"Content-Type": "message/rfc822"})
        assert r.status_code == 202, r.text
        return str(r.json()["id"])


def test_message_tracking_by_sender_and_by_id(stack: Stack, admin: Browser) -> None:
    make_account(stack, "erin@example.org")
    sender = f"tracked-{uuid.uuid4().hex[:8]}@example.net"
    mid = submit(stack, sender, "erin@example.org")
    other = submit(stack, "someone-else@example.net", "erin@example.org")

    listed = admin.get("/admin/messages", sender=sender)
    assert listed.status_code == 200, listed.text[:2000]
    assert mid in listed.text and other not in listed.text

    by_recipient = admin.get("/admin/messages", recipient="Erin@Example.org")
    assert mid in by_recipient.text and other in by_recipient.text
    assert "erin@example.org: queued" in text_of(by_recipient)  # each recipient's state

    dashboard = admin.get("/admin")  # ingest's numbers: these two wait, one hour received
    assert "not available" not in dashboard.text
    waiting = re.search(r"<caption>Recipients waiting, by state</caption>.*?<tbody><tr>"
                        r"<td>(\d+)</td>", dashboard.text, re.S)
    assert waiting and int(waiting.group(1)) >= 2, dashboard.text[:4000]
    received = re.search(r"<caption>The last hour</caption>.*?<td>(\d+)</td>",
                         dashboard.text, re.S)
    assert received and int(received.group(1)) >= 2

    by_id = admin.get("/admin/messages", id=mid.upper())
    assert by_id.status_code == 200 and str(by_id.url).endswith(f"/admin/messages/{mid}")
    assert "erin@example.org" in by_id.text and sender in by_id.text
    assert f"<title>Message {mid} · mailexec console</title>" in by_id.text

    bad = admin.get("/admin/messages", id="not-an-id")
    assert bad.status_code == 400 and "message id" in field_error(bad, "id")
    assert admin.get(f"/admin/messages/{uuid.uuid4()}").status_code == 404


def test_audit_lists_the_changes_made_through_the_console(stack: Stack, admin: Browser) -> None:
    make_account(stack, "frank@example.org")
    admin.get("/admin/accounts/frank@example.org")
    admin.post("/admin/accounts/frank@example.org/delete")
    page = admin.get("/admin/audit")
    assert page.status_code == 200
    text = text_of(page)
    assert "account frank@example.org" in text and "delete" in text
    filtered = admin.get("/admin/audit", kind="program")
    assert "program sorter" in text_of(filtered) and "frank@example.org" not in filtered.text
    assert admin.get("/admin/audit", kind="weather").status_code == 400


def test_notifications_page(stack: Stack, admin: Browser) -> None:
    page = admin.get("/admin/notifications")
    assert page.status_code == 200 and "<h1>Notifications</h1>" in page.text
    bad = admin.get("/admin/notifications", message_id="12")
    assert bad.status_code == 400 and field_error(bad, "message_id")
    assert admin.get(f"/admin/notifications/{uuid.uuid4()}").status_code == 404


# --- who may ------------------------------------------------------------------------------


def test_every_admin_page_is_a_403_page_for_a_user(stack: Stack) -> None:
    make_account(stack, "gina@example.org")
    with stack.api("policy") as c:
        r = c.post("/v1/accounts/gina@example.org/tokens", json={"label": "console test"})
        assert r.status_code == 201, r.text
        user_token = r.json()["token"]
    user = stack.browser(user_token)
    try:
        for path in ADMIN_PAGES + ("/admin/accounts/gina@example.org",):
            r = user.get(path)
            assert r.status_code == 403, (path, r.status_code)
            assert "Administrators only" in r.text and "Traceback" not in r.text
        r = user.post("/admin/suspend")
        assert r.status_code == 403
    finally:
        user.close()
    assert stack.settings()["suspended"] is False
