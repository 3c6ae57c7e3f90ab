"""`mailexec tokens list|revoke`, `audit`, `notifications`, `--version` against real policy,
ingest and notifier processes (issue 16)."""

from __future__ import annotations

import time
from importlib.metadata import version
from typing import Any

import pytest

from mailexec.commands import audit as audit_cmd
from tests.cli.helpers import mx, mx_json

MSG = b"From: alice@example.net\r\nTo: nobody@example.org\r\nSubject: hi\r\n\r\nhello\r\n"


def _account(env: dict[str, str], address: str) -> None:
    r = mx(env, "accounts", "set", address, "--uid", "1001", "--gid", "1001", "--home", "/tmp",
           "--shell", "/bin/sh", "--owner-name", "bob")
    assert r.returncode == 0, r.stderr


def test_tokens_issue_list_revoke(env: dict[str, str]) -> None:
    _account(env, "bob@example.org")
    issued = mx_json(env, "tokens", "issue", "bob@example.org", "--label", "laptop")
    listed = mx_json(env, "tokens", "list", "bob@example.org")
    assert [(t["id"], t["label"], t["revoked_at"]) for t in listed] == [(issued["id"], "laptop", None)]
    assert "token" not in listed[0]  # the secret is shown once, at issue
    human = mx(env, "tokens", "list", "bob@example.org")
    assert issued["id"] in human.stdout and "1 token(s) of bob@example.org" in human.stdout

    # the token works until revoked, then gets 401 (EX_NOPERM)
    user = {"MAILEXEC_ADMIN_TOKEN": issued["token"]}
    assert mx(env, "accounts", "programs", "bob@example.org", extra_env=user).returncode == 0
    r = mx(env, "tokens", "revoke", issued["id"])
    assert r.returncode == 0 and f"revoked token {issued['id']}" in r.stdout, r.stderr
    assert mx(env, "tokens", "revoke", issued["id"]).returncode == 0  # again: no change, no error
    assert mx_json(env, "tokens", "list", "bob@example.org")[0]["revoked_at"]
    r = mx(env, "accounts", "programs", "bob@example.org", extra_env=user)
    assert r.returncode == 77 and "401" in r.stderr

    r = mx(env, "tokens", "revoke", "00000000-0000-4000-8000-000000000000")
    assert r.returncode == 66 and "no user token" in r.stderr
    r = mx(env, "tokens", "revoke", "not-a-uuid")
    assert r.returncode != 0

    # issuing and revoking (once) are audited; the audit command filters by kind and target
    entries = mx_json(env, "audit", "--kind", "token", "--target", issued["id"])
    assert [e["action"] for e in entries] == ["revoke", "create"]  # newest first
    assert entries[0]["new"] == {"revoked": True}


def test_audit_follows_cursors_and_stops_at_limit(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(5):
        _account(env, f"u{i}@example.org")
    monkeypatch.setattr(audit_cmd, "MAX_PAGE", 2)  # pages of 2: five entries take three pages
    entries = mx_json(env, "audit", "--kind", "account")
    assert [e["target"] for e in entries] == [f"u{i}@example.org" for i in reversed(range(5))]
    assert len(mx_json(env, "audit", "--kind", "account", "--limit", "3")) == 3
    assert mx_json(env, "audit", "--target", "u2@example.org")[0]["action"] in ("put", "create")
    human = mx(env, "audit", "--limit", "2")
    assert human.returncode == 0 and "2 audit entries" in human.stdout and "u4@example.org" in human.stdout
    assert mx(env, "audit", "--kind", "mailbox").returncode == 2  # not a kind: usage error


def _wait(what: str, probe: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := probe():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_notifications(env: dict[str, str]) -> None:
    notifier = {"MAILEXEC_NOTIFIER_URL": f"http://127.0.0.1:{env['MAILEXEC_NOTIFIER_PORT']}"}
    r = mx(env, "submit", "--from", "alice@example.net", "--to", "nobody@example.org",
           "--notify", "failure", "--verbose", input=MSG)
    assert r.returncode == 0, r.stderr
    msg_id = r.stdout.split("queued as ")[1].strip()
    items = _wait(
        "the bounce's DSN",
        lambda: mx_json(env, "notifications", "--message", msg_id, extra_env=notifier),
    )
    assert [(n["message_id"], n["rcpt"]) for n in items] == [(msg_id, "alice@example.net")]
    assert items[0]["state"] in ("pending", "sent", "failed")
    human = mx(env, "notifications", "--message", msg_id, extra_env=notifier)
    assert human.returncode == 0 and "alice@example.net" in human.stdout
    assert "1 notification(s)" in human.stdout
    other = mx_json(env, "notifications", "--message", "00000000-0000-4000-8000-000000000000",
                    extra_env=notifier)
    assert other == []
    assert len(mx_json(env, "notifications", "--limit", "1", extra_env=notifier)) == 1


def test_version_and_completion() -> None:
    r = mx({"MAILEXEC_INGEST_PORT": "1"}, "--version")
    assert r.returncode == 0 and r.stdout.strip() == f"mailexec {version('mailexec')}"
    r = mx({"MAILEXEC_INGEST_PORT": "1"}, "--help")
    assert "--install-completion" in r.stdout and "--show-completion" in r.stdout
