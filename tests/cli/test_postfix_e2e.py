"""A real Postfix hands mail to `mailexec submit` through pipe(8), and takes the bounces back.

Proves, with Debian's postfix in a private instance on a free loopback port:
1. smtp-source → Postfix (transport_maps: prog.test → the `mailexec` pipe service, run as
   `nobody` with flags=q null_sender=) → `mailexec submit --from=${sender} --to=${recipient}`
   → ingest → executor → a trusted C program running as the account's uid, which writes the
   message (Return-Path, Delivered-To and Postfix's own Received header) into its home;
2. SMTP → Postfix → … → a failing trusted program → bounce event → notifier → SMTP back into
   the same Postfix (MAILEXEC_SMTP_URL) → virtual(8) → the sender's mailbox file, holding an
   RFC 3464 report with the program's status and output; the postmaster gets a notice;
3. Postfix logs both deliveries as sent through the `mailexec` service (exit 0 = accepted).
"""

from __future__ import annotations

import json
import os
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from testing.private_postfix import ensure_postfix
from tests.cli.conftest import Pipeline
from tests.cli.helpers import ROOT, mx
from tests.cli.postfix import PostfixInstance

pytestmark = pytest.mark.timeout(240)

HERE = Path(__file__).resolve().parent
HOSTNAME = "mx.test.example"
UID = 64901
SYSTEM_PYTHON = "/usr/bin/python3"


def _site_packages() -> str:
    import httpx

    return str(Path(httpx.__file__).resolve().parent.parent)


def wait_for(what: str, probe: Callable[[], Any], timeout: float, on_fail: Callable[[], str]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}\n{on_fail()}")


@pytest.fixture
def workdir(world_dir: Path) -> Path:
    """World-searchable (the pipe runs as nobody; programs as the account's uid)."""
    return world_dir


def _compile(src: Path, out: Path) -> bytes:
    subprocess.run(["cc", "-O2", "-Wall", "-o", str(out), str(src)], check=True)
    return out.read_bytes()


def test_postfix_pipe_to_program_and_bounce_back(
    pipeline: Pipeline, env: dict[str, str], workdir: Path
) -> None:
    reason = ensure_postfix()
    if reason:
        pytest.skip(reason)
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip("no /usr/bin/python3 for the pipe user (the venv's python is private to root)")

    smtp_port = pipeline.smtp_port  # the notifier's MAILEXEC_SMTP_URL points here
    ingest_url = env["MAILEXEC_INGEST_URL"]

    # what a packaged /usr/bin/mailexec is: the CLI config file holds the mta token
    cli_toml = workdir / "cli.toml"
    cli_toml.write_text(f'ingest_url = "{ingest_url}"\ningest_token = "{env["MAILEXEC_INGEST_TOKEN"]}"\n')
    os.chmod(cli_toml, 0o644)
    wrapper = workdir / "mailexec"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"MAILEXEC_CLI_CONFIG={cli_toml} PYTHONPATH={ROOT}:{_site_packages()} "
        f'exec {SYSTEM_PYTHON} -m mailexec "$@"\n'
    )
    os.chmod(wrapper, 0o755)

    # trusted programs and accounts, through the CLI
    deliver = workdir / "deliver"
    refuse = workdir / "refuse"
    _compile(HERE / "data" / "deliver.c", deliver)
    _compile(HERE / "data" / "refuse.c", refuse)
    assert mx(env, "programs", "add", "deliver", str(deliver)).returncode == 0
    assert mx(env, "programs", "add", "refuse", str(refuse)).returncode == 0
    homes = {}
    for i, (user, prog) in enumerate((("bob", "deliver"), ("carol", "refuse"))):
        home = workdir / f"home-{user}"
        home.mkdir(mode=0o700)
        os.chown(home, UID + i, UID + i)
        homes[user] = home
        r = mx(
            env,
            "accounts",
            "set",
            f"{user}@prog.test",
            "--uid",
            str(UID + i),
            "--gid",
            str(UID + i),
            "--home",
            str(home),
            "--shell",
            "/bin/sh",
            "--owner-name",
            user,
            "--program",
            prog,
            "--no-mailbox",
        )
        assert r.returncode == 0, r.stderr
    r = mx(
        env,
        "settings",
        "set",
        "postmaster=postmaster@sender.test",
        "dsn_include_output=true",
        "mode=secure",
        "suspended=false",
        "valid_shells=/bin/sh",
    )
    assert r.returncode == 0, r.stderr

    pipe_service = (
        "mailexec  unix  -       n       n       -       4       pipe\n"
        f"  flags=q null_sender= user=nobody argv={wrapper} submit"
        " --from=${sender} --to=${recipient} --idempotency-key=${queue_id}"
    )
    pf = PostfixInstance(smtp_port, pipe_service, ["alice@sender.test", "postmaster@sender.test"], HOSTNAME)

    def diagnostics() -> str:
        return f"--- maillog\n{pf.log()[-6000:]}\n{pipeline.logs()}"

    try:
        pf.start()

        # 1. success: smtp-source → Postfix → pipe → submit → ingest → executor → program
        sent = subprocess.run(
            [
                "smtp-source",
                "-f",
                "alice@sender.test",
                "-t",
                "bob@prog.test",
                "-m",
                "1",
                "-S",
                "e2e via postfix",
                f"127.0.0.1:{smtp_port}",
            ],
            capture_output=True,
            timeout=30,
        )
        assert sent.returncode == 0, sent.stderr
        mbox = homes["bob"] / "delivered.mbox"
        delivered = wait_for(
            "the program's delivery into bob's home",
            lambda: mbox.exists() and mbox.read_text(errors="replace"),
            60,
            diagnostics,
        )
        assert delivered.startswith("Return-Path: <alice@sender.test>\nDelivered-To: bob@prog.test\n")
        assert f"by {HOSTNAME} (Postfix)" in delivered  # it really went through Postfix
        assert "Subject: e2e via postfix" in delivered
        assert os.stat(mbox).st_uid == UID  # written by the account's uid
        # pipe(8) logs after `mailexec submit` exited 0, which may be after the program ran
        wait_for(
            "Postfix's log of the pipe delivery",
            lambda: "relay=mailexec" in pf.log() and "status=sent (delivered via mailexec" in pf.log(),
            15,
            diagnostics,
        )

        # 2. failure: the program's bounce comes back through Postfix to alice's mailbox
        msg = EmailMessage()
        msg["From"] = "alice@sender.test"
        msg["To"] = "carol@prog.test"
        msg["Subject"] = "this one bounces"
        msg["Message-ID"] = "<bounce-me@sender.test>"
        msg.set_content("please bounce\n")
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as s:
            s.send_message(msg, from_addr="alice@sender.test", to_addrs=["carol@prog.test"])
        dsn = wait_for(
            "the bounce in alice's mailbox",
            lambda: "carol@prog.test" in (box := pf.mailbox("alice")) and box,
            90,
            diagnostics,
        )
        assert "multipart/report" in dsn and "report-type=delivery-status" in dsn
        assert "Final-Recipient: rfc822; carol@prog.test" in dsn
        assert "Action: failed" in dsn
        assert "Status: 5.2.0" in dsn
        assert "mailbox quota exceeded" in dsn  # the program's output, in the diagnostic
        assert "this one bounces" in dsn  # the returned original
        assert "Return-Path: <>" in dsn  # null envelope sender: bounces are never bounced
        assert f"Reporting-MTA: dns; {HOSTNAME}" in dsn
        notice = wait_for("the postmaster notice", lambda: pf.mailbox("postmaster"), 30, diagnostics)
        assert "carol@prog.test" in notice

        # the operator's view of it
        listed = mx(env, "messages", "list", "--recipient", "carol@prog.test", "--json")
        assert listed.returncode == 0, listed.stderr
        mid = json.loads(listed.stdout)[0]["id"]
        show = mx(env, "messages", "show", mid)
        assert show.returncode == 0, show.stderr
        for text in ("carol@prog.test", "bounced", "5.2.0", "refuse", "exit 73", "mailbox quota exceeded"):
            assert text in show.stdout, show.stdout
    finally:
        pf.stop()
        if os.environ.get("MAILEXEC_KEEP_POSTFIX"):
            sys.stderr.write(f"postfix instance kept in {pf.base}\n")
        else:
            pf.cleanup()
