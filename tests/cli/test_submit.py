"""`mailexec submit` as an MTA runs it: a real process, stdin, sysexits exit codes."""

from __future__ import annotations

from typing import Any

from tests.cli.helpers import mx, mx_json
from tests.conftest import free_port

MSG = b"From: alice@example.net\r\nTo: bob@example.org\r\nSubject: hi\r\n\r\nhello\r\n"


def submit(env: dict[str, str], *args: str, body: bytes = MSG, real: bool = True, **kw: Any) -> Any:
    """`mailexec submit` as the MTA runs it (a process); real=False: in-process, same code."""
    return mx(env, "submit", *args, input=body, subprocess_=real, **kw)


def test_submit_exit_codes(env: dict[str, str]) -> None:
    r = submit(
        env,
        "--from",
        "alice@example.net",
        "--to",
        "bob@example.org",
        "--to",
        "carol@example.org",
        "--notify",
        "success,failure",
        "--ret",
        "hdrs",
        "--envid",
        "E1",
        "--verbose",
    )
    assert r.returncode == 0, r.stderr
    msg_id = r.stdout.split("queued as ")[1].strip()
    msg = mx_json(env, "messages", "show", msg_id)
    assert msg["envelope"]["from"] == "alice@example.net" and msg["envelope"]["ret"] == "HDRS"
    assert sorted(x["address"] for x in msg["recipients"]) == ["bob@example.org", "carol@example.org"]
    human = mx(env, "messages", "show", msg_id)
    assert human.returncode == 0 and "bob@example.org" in human.stdout
    assert any(state in human.stdout for state in ("queued", "running", "bounced"))  # no such account
    assert msg_id in mx(env, "messages", "list").stdout

    # null sender, as Postfix passes it with null_sender= (or its default MAILER-DAEMON)
    for null in ("--from=", "--from=<>", "--from=MAILER-DAEMON"):
        r = submit(env, null, "--to=bob@example.org", "--verbose", real=False)
        assert r.returncode == 0, r.stderr
        assert mx_json(env, "messages", "show", r.stdout.split()[-1])["envelope"]["from"] == ""

    # the same idempotency key and message: one id; a different message with it: another id
    ids = {
        submit(
            env, "-f", "a@example.net", "-t", "b@example.org", "--idempotency-key", "Q1", "-v", real=False
        ).stdout
        for _ in range(2)
    }
    assert len(ids) == 1
    other = submit(
        env,
        "-f",
        "a@example.net",
        "-t",
        "b@example.org",
        "--idempotency-key",
        "Q1",
        "-v",
        body=MSG + b"x\r\n",
        real=False,
    ).stdout
    assert other not in ids

    # 64: usage
    assert submit(env, "--to", "bob@example.org").returncode == 64
    assert submit(env, "--from", "a@example.net", real=False).returncode == 64
    assert submit(env, "--from", "a@example.net", "--to", "bob@example.org", "--bogus").returncode == 64
    r = submit(env, "--from", "a@example.net", "--to", "bob@example.org", "--ret", "SOME", real=False)
    assert r.returncode == 64 and r.stderr.startswith("5.3.5 ")

    # 65: ingest refuses the data
    r = submit(env, "--from", "a@example.net", "--to", "bob@example.org", body=b"", real=False)
    assert r.returncode == 65 and "HTTP 400" in r.stderr
    r = submit(env, "--from", "a@example.net", "--to", "bob@example.org", body=MSG + b"x" * 5000)
    assert r.returncode == 65 and r.stderr.startswith("5.2.3 ") and "413" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

    # 77: wrong mta token (or 75 when the admin prefers retrying)
    r = submit(env, "--from", "a@example.net", "--to", "bob@example.org", "--token", "nope")
    assert r.returncode == 77 and "MAILEXEC_INGEST_TOKEN" in r.stderr
    r = submit(
        env,
        "--from",
        "a@example.net",
        "--to",
        "bob@example.org",
        "--token",
        "nope",
        "--defer-auth-errors",
        real=False,
    )
    assert r.returncode == 75 and r.stderr.startswith("4.7.0 ")
    # an admin token is not an mta token... but admin may do everything: accepted
    r = submit(
        env,
        "-f",
        "a@example.net",
        "-t",
        "bob@example.org",
        "--token",
        env["MAILEXEC_ADMIN_TOKEN"],
        real=False,
    )
    assert r.returncode == 0, r.stderr


def test_submit_tempfails_when_ingest_is_down(env: dict[str, str]) -> None:
    env["MAILEXEC_INGEST_URL"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    r = submit(env, "--from", "a@example.net", "--to", "bob@example.org")
    assert r.returncode == 75
    assert r.stderr.startswith("4.3.0 ") and "cannot reach ingest" in r.stderr and "retry" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
