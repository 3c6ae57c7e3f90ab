"""A real Postfix delivers to mailexec over LMTP (lmtp(8) → ingest's LMTP listener).

One private Postfix instance (Debian's postfix, smtpd on the port the notifier sends DSNs
to) and two extra ingest processes beside the package's pipeline serve every test here:

- ``ingest`` with LMTP on a TCP port (127.0.0.1 is a trusted network, no AUTH) and on a
  Unix socket under Postfix's queue directory (``mailexec/lmtp``, in a setgid directory of
  group postfix, mode 2750; the socket group postfix, mode 0660), the socket a chrooted
  lmtp(8) reaches;
- ``ingest-tls`` with LMTP on a second port, trusting no network, with a self-signed
  certificate: Postfix must STARTTLS and AUTH PLAIN as ``mta``.

Postfix (deploy/postfix/ recipe): ``lmtp`` is chrooted as in Debian's stock master.cf;
``prog.test`` → ``lmtp:inet:127.0.0.1:PORT``, ``sock.test`` → ``lmtp:unix:mailexec/lmtp``,
``auth.test`` → the ``lmtp-auth`` service (lmtp_sasl_*, lmtp_tls_security_level=encrypt);
``both.test`` is a virtual(8) mailbox domain whose account also gets a copy through the
``.mailexec`` pseudo-domain and ``lmtp_generic_maps``; ``sender.test`` holds the senders'
mailboxes (bounces and DSNs land there); ``drop.test`` goes through a TCP relay that can cut
the connection right after the final dot, before ingest's replies reach lmtp(8).

What each test proves is in its docstring; every assertion is on what a user sees: files the
program wrote, mailbox contents, Postfix's log lines, DSN contents, mailexec's message API.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest

from testing.private_postfix import ensure_postfix
from tests.cli.conftest import Pipeline
from tests.cli.helpers import mx
from tests.cli.postfix import PostfixInstance
from tests.conftest import ServiceProcess, free_port

pytestmark = pytest.mark.timeout(180)

HERE = Path(__file__).resolve().parent
HOSTNAME = "mx.test.example"
UID = 64911  # account uids 64911.. (test_postfix_e2e.py uses 64901..)
# Relative to the queue directory = lmtp(8)'s chroot. Not in private/ (postfix's, mode 0700):
# an unprivileged ingest could not bind there; its own setgid directory, group postfix.
SOCKET_DIR = "mailexec"
SOCKET_NAME = f"{SOCKET_DIR}/lmtp"
SENDERS = ["alice", "frank", "grace", "heidi", "ivan", "judy", "postmaster"]


@dataclass
class Mta:
    """The shared Postfix + the two LMTP ingest processes."""

    pf: PostfixInstance
    pipeline: Pipeline
    ingest: ServiceProcess  # TCP (trusted) + the Unix socket
    ingest_tls: ServiceProcess  # STARTTLS + AUTH only
    tcp_port: int
    tls_port: int
    programs: dict[str, Path]
    cutter: DotCutter

    @property
    def smtp_port(self) -> int:
        return self.pipeline.smtp_port

    def diagnostics(self) -> str:
        logs = [f"--- maillog\n{self.pf.log()[-8000:]}", self.pipeline.logs()]
        for proc in (self.ingest, self.ingest_tls):
            logs.append(f"--- {proc.log_path.name}\n{proc.log_tail(30)}")
        return "\n".join(logs)

    def lines(self, qid: str) -> list[str]:
        """Postfix's log lines about queue id ``qid``."""
        return [line for line in self.pf.log().splitlines() if f" {qid}: " in line]

    def set_sasl_password(self, password: str) -> None:
        (self.pf.config / "lmtp_sasl_passwd").write_text(f"127.0.0.1 mta:{password}\n")


def wait_for(what: str, probe: Callable[[], Any], timeout: float, on_fail: Callable[[], str]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}\n{on_fail()}")


def _compile(src: Path, out: Path) -> Path:
    subprocess.run(["cc", "-O2", "-Wall", "-o", str(out), str(src)], check=True)
    return out


def _self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=ingest.test.example", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


# lmtp chrooted as in Debian's stock master.cf; the AUTH variant is a service of its own, so
# the trusted TCP and Unix-socket deliveries of the same instance stay without SASL. Without
# tlsmgr (in Debian's stock master.cf, not in the private instance's) lmtp(8) finds "no
# entropy for TLS key generation" and defers everything that needs TLS.
MASTER_CF = """\
tlsmgr    unix  -       -       y       1000?   1       tlsmgr
lmtp      unix  -       -       y       -       -       lmtp
lmtp-auth unix  -       -       y       -       -       lmtp
  -o lmtp_sasl_auth_enable=yes
  -o lmtp_sasl_password_maps=texthash:$config_directory/lmtp_sasl_passwd
  -o lmtp_sasl_security_options=noanonymous
  -o lmtp_sasl_tls_security_options=noanonymous
  -o lmtp_tls_security_level=encrypt
  -o lmtp_tls_loglevel=1
"""


@pytest.fixture(scope="module")
def mta(pipeline: Pipeline) -> Iterator[Mta]:
    reason = ensure_postfix()
    if reason:
        pytest.skip(reason)
    if shutil.which("cc") is None or shutil.which("openssl") is None:
        pytest.skip("needs cc (the trusted test program) and openssl (the ingest certificate)")

    work = Path(tempfile.mkdtemp(prefix="mailexec-lmtptest-", dir="/tmp"))
    os.chmod(work, 0o755)
    programs = {
        name: _compile(HERE / "data" / f"{name}.c", work / name) for name in ("deliver", "refuse")
    }
    cert, key = _self_signed(work)
    tcp_port, tls_port = free_port(), free_port()
    cutter = DotCutter(tcp_port)
    pf = PostfixInstance(
        pipeline.smtp_port,
        MASTER_CF,
        [f"{s}@sender.test" for s in SENDERS] + ["dora@both.test"],
        HOSTNAME,
        transport=(
            f"prog.test   lmtp:inet:127.0.0.1:{tcp_port}\n"
            f"sock.test   lmtp:unix:{SOCKET_NAME}\n"
            f"auth.test   lmtp-auth:inet:127.0.0.1:{tls_port}\n"
            f".mailexec   lmtp:inet:127.0.0.1:{tcp_port}\n"
            f"drop.test   lmtp:inet:127.0.0.1:{cutter.port}\n"
        ),
        relay_domains="prog.test, sock.test, auth.test, drop.test",
        mailbox_domains="sender.test, both.test",
        main_cf=[
            "virtual_alias_maps = texthash:$config_directory/virtual",
            "lmtp_generic_maps = regexp:$config_directory/lmtp_generic",
        ],
    )
    (pf.config / "virtual").write_text("dora@both.test   dora@both.test, dora@both.test.mailexec\n")
    (pf.config / "lmtp_generic").write_text("/^(.*)\\.mailexec$/   ${1}\n")

    socket_dir = pf.queue / SOCKET_DIR
    socket_dir.mkdir()
    os.chown(socket_dir, 65534, _gid("postfix"))  # in production: the user ingest runs as
    os.chmod(socket_dir, 0o2750)
    env = dict(pipeline.env)
    socket_path = pf.queue / SOCKET_NAME
    plain_env = env | {
        "MAILEXEC_INGEST_PORT": str(free_port()),
        "MAILEXEC_LMTP_PORT": str(tcp_port),
        "MAILEXEC_LMTP_SOCKET": str(socket_path),
        "MAILEXEC_LMTP_SOCKET_GROUP": "postfix",
        "MAILEXEC_LMTP_SOCKET_MODE": "0660",
    }
    tls_env = env | {
        "MAILEXEC_INGEST_PORT": str(free_port()),
        "MAILEXEC_LMTP_PORT": str(tls_port),
        "MAILEXEC_LMTP_TRUSTED_NETWORKS": "192.0.2.0/24",  # not 127.0.0.1: AUTH or nothing
        "MAILEXEC_LMTP_TLS_CERT": str(cert),
        "MAILEXEC_LMTP_TLS_KEY": str(key),
    }
    log_dir = pipeline.log_dir
    ingest = ServiceProcess("ingest", plain_env, log_dir / "ingest-lmtp.log")
    ingest_tls = ServiceProcess("ingest", tls_env, log_dir / "ingest-lmtp-tls.log")
    m = Mta(pf, pipeline, ingest, ingest_tls, tcp_port, tls_port, programs, cutter)
    m.set_sasl_password("not-the-mta-token")
    try:
        pf.start()
        ingest.start(wait_ready=False)
        ingest_tls.start(wait_ready=False)
        ingest.wait_ready(60)
        ingest_tls.wait_ready(60)
        yield m
    finally:
        cutter.close()
        ingest_tls.stop()
        ingest.stop()
        pf.stop()
        if os.environ.get("MAILEXEC_KEEP_POSTFIX"):
            sys.stderr.write(f"postfix instance kept in {pf.base}\n")
        else:
            pf.cleanup()
        shutil.rmtree(work, ignore_errors=True)


# --- helpers ---------------------------------------------------------------------------


class DotCutter:
    """A TCP relay in front of ingest's LMTP port that, when armed, forwards the client's
    bytes up to and including the final ``CRLF.CRLF`` of one transaction, lets ingest
    answer, and then closes both sides without passing a single reply byte back: the
    network failing in the window RFC 1047 describes. Later connections pass untouched."""

    END = b"\r\n.\r\n"

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.armed = threading.Event()
        self.cut = threading.Event()  # set once a connection was cut after its dot
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            threading.Thread(target=self._relay, args=(client, server), daemon=True).start()

    def _relay(self, client: socket.socket, server: socket.socket) -> None:
        cutting = self.armed.is_set()
        self.armed.clear()
        stop = threading.Event()

        def replies() -> None:  # ingest → lmtp(8), until the cut
            while not stop.is_set():
                try:
                    data = server.recv(65536)
                except OSError:
                    return
                if not data or stop.is_set():
                    return
                client.sendall(data)

        threading.Thread(target=replies, daemon=True).start()
        tail = b""
        in_data = False
        try:
            while data := client.recv(65536):
                seen = tail + data
                if cutting and in_data and self.END in seen:
                    stop.set()  # no reply byte from here on reaches lmtp(8)
                    server.sendall(data)
                    time.sleep(1.0)  # ingest reads the dot, stores, queues, answers into the void
                    self.cut.set()
                    return
                # DATA's 354 comes before the body; the body starts after "DATA\r\n"
                in_data = in_data or b"DATA\r\n" in seen.upper()
                tail = seen[-8:]
                server.sendall(data)
        except OSError:
            pass
        finally:
            stop.set()
            for s in (client, server):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()



def setup_programs(env: dict[str, str], mta: Mta) -> None:
    for name, path in mta.programs.items():
        r = mx(env, "programs", "add", name, str(path))
        assert r.returncode == 0, r.stderr
    r = mx(
        env, "settings", "set", "postmaster=postmaster@sender.test", "dsn_include_output=true",
        "mode=secure", "suspended=false", "valid_shells=/bin/sh",
    )
    assert r.returncode == 0, r.stderr


def add_account(
    env: dict[str, str], homes: Path, address: str, uid: int, program: str, *, mailbox: bool = False
) -> Path:
    home = homes / f"home-{address}"
    home.mkdir(mode=0o700)
    os.chown(home, uid, uid)
    r = mx(
        env, "accounts", "set", address, "--uid", str(uid), "--gid", str(uid), "--home", str(home),
        "--shell", "/bin/sh", "--owner-name", address.split("@")[0], "--program", program,
        "--mailbox" if mailbox else "--no-mailbox",
    )
    assert r.returncode == 0, r.stderr
    return home


def send(
    mta: Mta,
    sender: str,
    recipients: list[str],
    subject: str,
    *,
    mail_options: tuple[str, ...] = (),
    rcpt_options: tuple[str, ...] = (),
) -> str:
    """Submit to Postfix's smtpd; Postfix's queue id."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@sender.test>"
    msg.set_content(f"{subject}\n.a line starting with a dot\n")
    with smtplib.SMTP("127.0.0.1", mta.smtp_port, timeout=30) as s:
        s.ehlo("client.test")
        code, reply = s.mail(sender, list(mail_options))
        assert code == 250, reply
        for rcpt in recipients:
            code, reply = s.rcpt(rcpt, list(rcpt_options))
            assert code == 250, reply
        code, reply = s.data(msg.as_bytes())
        assert code == 250, reply
    found = re.search(rb"queued as ([0-9A-Za-z]+)", reply)
    assert found, reply
    return found.group(1).decode()


def delivered(mta: Mta, home: Path, what: str, timeout: float = 30) -> str:
    mbox = home / "delivered.mbox"
    return str(
        wait_for(
            f"the program's delivery into {home.name}",
            lambda: mbox.exists() and what in (text := mbox.read_text(errors="replace")) and text,
            timeout,
            mta.diagnostics,
        )
    )


def mailexec_id(line: str) -> str:
    """The mailexec message id in a ``status=sent (250 2.0.0 <rcpt> queued as ID)`` line."""
    found = re.search(r"queued as ([0-9a-f-]{36})\)", line)
    assert found, line
    return found.group(1)


def message(env: dict[str, str], mid: str) -> dict[str, Any]:
    r = httpx.get(
        f"{env['MAILEXEC_INGEST_URL']}/v1/messages/{mid}",
        headers={"Authorization": f"Bearer {env['MAILEXEC_ADMIN_TOKEN']}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def messages_for(env: dict[str, str], recipient: str) -> list[dict[str, Any]]:
    r = httpx.get(
        f"{env['MAILEXEC_INGEST_URL']}/v1/messages",
        params={"recipient": recipient},
        headers={"Authorization": f"Bearer {env['MAILEXEC_ADMIN_TOKEN']}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    return list(body["messages"] if isinstance(body, dict) else body)


def sent_lines(mta: Mta, qid: str, count: int = 1) -> list[str]:
    return list(
        wait_for(
            f"{count} status=sent line(s) for {qid}",
            lambda: len(lines := [x for x in mta.lines(qid) if "status=sent" in x]) >= count and lines,
            20,
            mta.diagnostics,
        )
    )


# --- tests -----------------------------------------------------------------------------


def test_lmtp_delivers_as_the_account_owner_with_one_reply_per_recipient(
    mta: Mta, env: dict[str, str], world_dir: Path
) -> None:
    """(a) + (b): SMTP → Postfix → chrooted lmtp(8) over TCP → ingest → executor → the program,
    which runs as the account's uid and writes what it got into the home; one message for two
    accounts is one LMTP transaction answered by two 250s (RFC 2033), which Postfix logs as
    two status=sent lines for the same queue id, both naming the same mailexec message."""
    setup_programs(env, mta)
    homes = {
        name: add_account(env, world_dir, f"{name}@prog.test", UID + i, "deliver")
        for i, name in enumerate(("bob", "carol"))
    }
    qid = send(mta, "alice@sender.test", ["bob@prog.test", "carol@prog.test"], "two via lmtp")

    for i, (name, home) in enumerate(homes.items()):
        text = delivered(mta, home, "two via lmtp")
        assert text.startswith(f"Return-Path: <alice@sender.test>\nDelivered-To: {name}@prog.test\n")
        assert f"by {HOSTNAME} (Postfix)" in text  # it really came through Postfix
        assert "\n.a line starting with a dot\n" in text  # dot-unstuffed, LF line ends
        assert "\r" not in text
        assert (home / "delivered.mbox").stat().st_uid == UID + i  # written by the owner

    lines = sent_lines(mta, qid, 2)
    assert len(lines) == 2, lines
    ids = set()
    for name, line in zip(("bob", "carol"), sorted(lines, key=lambda x: "carol" in x), strict=True):
        assert "postfix/lmtp[" in line
        assert f"to=<{name}@prog.test>" in line
        assert f"relay=127.0.0.1[127.0.0.1]:{mta.tcp_port}" in line
        assert f"status=sent (250 2.0.0 <{name}@prog.test> queued as " in line
        ids.add(mailexec_id(line))
    assert len(ids) == 1  # one transaction, one stored message, two recipients
    msg = message(env, ids.pop())
    assert msg["envelope"]["from"] == "alice@sender.test"
    assert sorted(msg["envelope"]["to"]) == ["bob@prog.test", "carol@prog.test"]


def test_unknown_recipient_is_refused_at_rcpt_and_bounced_by_postfix(
    mta: Mta, env: dict[str, str]
) -> None:
    """(c): no such account → ``550 5.1.1`` at RCPT time; Postfix bounces it itself (the
    report comes from its MAILER-DAEMON, with its queue id), and mailexec stores nothing."""
    setup_programs(env, mta)
    qid = send(mta, "frank@sender.test", ["nobody@prog.test"], "to nobody")
    bounce = wait_for(
        "Postfix's bounce in frank's mailbox",
        lambda: "nobody@prog.test" in (box := mta.pf.mailbox("frank")) and box,
        30,
        mta.diagnostics,
    )
    assert f"X-Postfix-Queue-ID: {qid}" in bounce  # Postfix's own bounce(8), not the notifier
    assert "From: Mail Delivery System <MAILER-DAEMON@mx.test.example>" in bounce
    assert "Return-Path: <>" in bounce
    assert "Final-Recipient: rfc822; nobody@prog.test" in bounce
    assert "Status: 5.1.1" in bounce
    assert "Diagnostic-Code: smtp; 550 5.1.1 <nobody@prog.test>: no such account for" in bounce
    [line] = [x for x in mta.lines(qid) if "to=<nobody@prog.test>" in x]
    assert "postfix/lmtp[" in line and "dsn=5.1.1, status=bounced (host 127.0.0.1" in line, line
    assert "(in reply to RCPT TO command)" in line  # refused at RCPT, no DATA was sent
    assert messages_for(env, "nobody@prog.test") == []


def test_notify_never_is_honoured_and_envid_orcpt_reach_the_dsn(
    mta: Mta, env: dict[str, str], world_dir: Path
) -> None:
    """(e): Postfix passes the sender's DSN parameters through LMTP. NOTIFY=NEVER: the program
    fails and nobody is told; NOTIFY=FAILURE with ENVID, ORCPT and RET=HDRS: the DSN carries
    Original-Envelope-Id and Original-Recipient, and only the headers come back."""
    setup_programs(env, mta)
    add_account(env, world_dir, "erin@prog.test", UID + 2, "refuse")

    quiet = send(mta, "grace@sender.test", ["erin@prog.test"], "never tell me",
                 rcpt_options=("NOTIFY=NEVER",))
    told = send(
        mta, "grace@sender.test", ["erin@prog.test"], "tell me with envid",
        mail_options=("ENVID=lmtp-envid-42", "RET=HDRS"),
        rcpt_options=("NOTIFY=FAILURE", "ORCPT=rfc822;erin-alias@prog.test"),
    )
    dsn = wait_for(
        "the DSN of the failing program in grace's mailbox",
        lambda: "tell me with envid" in (box := mta.pf.mailbox("grace")) and box,
        60,
        mta.diagnostics,
    )
    assert "report-type=delivery-status" in dsn
    assert "Original-Envelope-Id: lmtp-envid-42" in dsn
    assert "Original-Recipient: rfc822; erin-alias@prog.test" in dsn
    assert "Final-Recipient: rfc822; erin@prog.test" in dsn
    assert "Status: 5.2.0" in dsn and "mailbox quota exceeded" in dsn
    assert "text/rfc822-headers" in dsn  # RET=HDRS: headers only
    assert "a line starting with a dot" not in dsn
    assert "X-Postfix-Queue-ID" not in dsn  # the notifier's DSN, not a Postfix bounce

    # the NOTIFY=NEVER message failed the same way, and no DSN was made for it
    never_id = mailexec_id(sent_lines(mta, quiet)[0])
    msg = wait_for(
        "the NOTIFY=NEVER message's bounce", lambda: (m := message(env, never_id))
        ["recipients"][0]["state"] == "bounced" and m, 30, mta.diagnostics,
    )
    assert msg["recipients"][0]["notify"] == ["NEVER"]
    assert msg["recipients"][0]["status"] == "5.2.0"
    r = httpx.get(
        f"{mta.pipeline.procs['notifier'].url}/v1/notifications",
        params={"message_id": never_id},
        headers={"Authorization": f"Bearer {env['MAILEXEC_ADMIN_TOKEN']}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    assert [n for n in r.json()["items"] if n["rcpt"] == "grace@sender.test"] == []
    told_id = mailexec_id(sent_lines(mta, told)[0])
    assert message(env, told_id)["envelope"]["envid"] == "lmtp-envid-42"
    assert "never tell me" not in mta.pf.mailbox("grace")


def test_unix_socket_with_chrooted_lmtp(mta: Mta, env: dict[str, str], world_dir: Path) -> None:
    """(g): ``lmtp:unix:mailexec/lmtp`` from lmtp(8) chrooted into the queue directory
    (nothing copied into the chroot: a Unix socket needs no /etc/services or resolver); the
    socket is group postfix, mode 0660, in a directory other users cannot enter."""
    setup_programs(env, mta)
    home = add_account(env, world_dir, "gina@sock.test", UID + 3, "deliver")
    socket_path = mta.pf.queue / SOCKET_NAME
    st = socket_path.stat()
    assert oct(st.st_mode & 0o777) == "0o660"
    assert st.st_gid == _gid("postfix")
    assert oct(socket_path.parent.stat().st_mode & 0o7777) == "0o2750"

    qid = send(mta, "heidi@sender.test", ["gina@sock.test"], "over the unix socket")
    text = delivered(mta, home, "over the unix socket")
    assert "Delivered-To: gina@sock.test\n" in text
    [line] = sent_lines(mta, qid)
    # relay=<the name ingest greets with>[the socket path, as lmtp(8) sees it in its chroot]
    assert "postfix/lmtp[" in line and f"relay={HOSTNAME}[{SOCKET_NAME}]" in line, line
    pid = int(re.search(r"postfix/lmtp\[(\d+)\]", line).group(1))  # type: ignore[union-attr]
    # the process that delivered it (lmtp(8) stays for max_idle) runs chrooted
    root = os.readlink(f"/proc/{pid}/root")
    assert Path(root) == mta.pf.queue.resolve(), root


def test_mailbox_and_program_account_gets_both(
    mta: Mta, env: dict[str, str], world_dir: Path
) -> None:
    """(h): an account with mailbox AND program delivery. A virtual alias keeps the mailbox
    and adds ``dora@both.test.mailexec``, routed to lmtp; ``lmtp_generic_maps`` turns the RCPT
    address back into ``dora@both.test``, the account ingest knows (no 550)."""
    setup_programs(env, mta)
    home = add_account(env, world_dir, "dora@both.test", UID + 4, "deliver", mailbox=True)
    qid = send(mta, "ivan@sender.test", ["dora@both.test"], "mailbox and program")

    text = delivered(mta, home, "mailbox and program")
    assert "Delivered-To: dora@both.test\n" in text  # rewritten back: not .mailexec
    box = wait_for("dora's mailbox", lambda: "mailbox and program" in (b := mta.pf.mailbox("dora"))
                   and b, 20, mta.diagnostics)
    assert "Delivered-To: dora@both.test" in box  # virtual(8)'s copy
    lines = sent_lines(mta, qid, 2)
    [lmtp] = [x for x in lines if "postfix/lmtp[" in x]
    [virtual] = [x for x in lines if "postfix/virtual[" in x]
    # Postfix logs the pseudo-address it routed; the LMTP reply names what it sent in RCPT
    assert "to=<dora@both.test.mailexec>, orig_to=<dora@both.test>" in lmtp
    assert "status=sent (250 2.0.0 <dora@both.test> queued as " in lmtp
    assert "to=<dora@both.test>" in virtual and "status=sent (delivered to mailbox)" in virtual


def test_wrong_auth_password_defers_never_bounces(
    mta: Mta, env: dict[str, str], world_dir: Path
) -> None:
    """(f): ingest trusts no network and asks for STARTTLS + AUTH PLAIN (user mta). With a
    wrong password lmtp(8) gets 535 and defers (lmtp_sasl_auth_soft_bounce), it never bounces;
    with the mta token in lmtp_sasl_password_maps the same mail is delivered."""
    setup_programs(env, mta)
    home = add_account(env, world_dir, "kim@auth.test", UID + 5, "deliver")
    qid = send(mta, "judy@sender.test", ["kim@auth.test"], "needs auth")
    deferred = wait_for(
        "the deferral after the wrong password",
        lambda: [x for x in mta.lines(qid) if "status=deferred" in x],
        30,
        mta.diagnostics,
    )
    assert "SASL authentication failed" in deferred[0], deferred[0]
    assert "535 5.7.8" in deferred[0], deferred[0]
    assert f"TLS connection established to 127.0.0.1[127.0.0.1]:{mta.tls_port}" in mta.pf.log()
    assert not (home / "delivered.mbox").exists()

    mta.set_sasl_password(env["MAILEXEC_INGEST_TOKEN"])
    r = mta.pf.postfix("reload")
    assert r.returncode == 0, r.stderr
    mta.pf.flush()
    text = delivered(mta, home, "needs auth", timeout=40)
    assert "Delivered-To: kim@auth.test\n" in text
    [line] = sent_lines(mta, qid)
    assert f"relay=127.0.0.1[127.0.0.1]:{mta.tls_port}" in line
    assert not [x for x in mta.lines(qid) if "status=bounced" in x]
    assert "needs auth" not in mta.pf.mailbox("judy")  # no bounce, no delay notice
    assert "lmtp authentication failed" in mta.ingest_tls.log_tail(200)


def test_ingest_down_defers_then_delivers_exactly_once(
    mta: Mta, env: dict[str, str], world_dir: Path
) -> None:
    """(d): with ingest stopped, lmtp(8) cannot connect and Postfix keeps the mail
    (status=deferred); once ingest is back the mail is delivered, and the program ran once."""
    setup_programs(env, mta)
    home = add_account(env, world_dir, "leo@prog.test", UID + 6, "deliver")
    mta.ingest.stop()
    try:
        qid = send(mta, "alice@sender.test", ["leo@prog.test"], "while ingest is down")
        deferred = wait_for(
            "Postfix's deferral",
            lambda: [x for x in mta.lines(qid) if "status=deferred" in x],
            30,
            mta.diagnostics,
        )
        assert f"connect to 127.0.0.1[127.0.0.1]:{mta.tcp_port}: Connection refused" in deferred[0]
        assert not (home / "delivered.mbox").exists()
    finally:
        mta.ingest.start(wait_ready=True, timeout=60)
    mta.pf.flush()
    text = delivered(mta, home, "while ingest is down", timeout=40)
    [line] = sent_lines(mta, qid)
    time.sleep(2)  # a second delivery, were there one, would have come by now
    text = (home / "delivered.mbox").read_text(errors="replace")
    assert text.count("Subject: while ingest is down") == 1, text
    [stored] = messages_for(env, "leo@prog.test")
    assert stored["id"] == mailexec_id(line)
    rcpt = message(env, stored["id"])["recipients"][0]
    assert rcpt["state"] == "delivered"
    assert len(rcpt["programs"]) == 1, rcpt


def test_connection_cut_after_the_dot_runs_the_program_at_least_once(
    mta: Mta, env: dict[str, str], world_dir: Path
) -> None:
    """The duplicate window (RFC 1047; docs/mta-integration.md "The duplicate window"): the
    connection breaks after lmtp(8) sent the final dot and before ingest's reply reached it.
    Ingest has stored and queued the message; Postfix cannot know, defers it ("may be sent
    more than once") and sends it again. The program runs at least once (here: twice, one
    mailexec message per attempt), never zero times, and both copies are delivered."""
    setup_programs(env, mta)
    home = add_account(env, world_dir, "otto@drop.test", UID + 7, "deliver")
    mta.cutter.armed.set()
    qid = send(mta, "judy@sender.test", ["otto@drop.test"], "cut after the dot")
    deferred = wait_for(
        "Postfix's deferral after the cut",
        lambda: [x for x in mta.lines(qid) if "status=deferred" in x],
        30,
        mta.diagnostics,
    )
    assert mta.cutter.cut.is_set()
    assert "lost connection" in deferred[0] and "may be sent more than once" in deferred[0], deferred
    # the first copy was accepted by ingest before the cut: the program runs it regardless
    delivered(mta, home, "cut after the dot", timeout=30)
    mta.pf.flush()
    [line] = sent_lines(mta, qid)
    second = mailexec_id(line)

    def both_delivered() -> list[dict[str, Any]] | None:
        stored = messages_for(env, "otto@drop.test")
        states = [message(env, m["id"])["recipients"][0]["state"] for m in stored]
        return stored if len(stored) == 2 and states == ["delivered", "delivered"] else None

    stored = wait_for("both copies delivered", both_delivered, 30, mta.diagnostics)
    assert second in {m["id"] for m in stored}
    text = (home / "delivered.mbox").read_text(errors="replace")
    assert text.count("Subject: cut after the dot") == 2, text


def _gid(name: str) -> int:
    import grp

    return grp.getgrnam(name).gr_gid
