"""A private Postfix instance for tests: own config, queue and data directories, one loopback port.

It never touches /etc/postfix or the host's queue: ``postfix -c DIR`` with everything under a
temporary directory, ``inet_interfaces``/``master.cf`` bound to 127.0.0.1:PORT, no chroot,
``maillog_file`` (there is no syslog), all outbound mail refused (``default_transport = error``).
Domains: ``prog.test`` goes to the ``mailexec`` pipe(8) service (``transport_maps``), and
``sender.test`` is delivered by virtual(8) into mailbox files under ``vmail/``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

POSTFIX = "/usr/sbin/postfix"
DEBCONF = "postfix postfix/main_mailer_type select Local only\npostfix postfix/mailname string localhost\n"

MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command
{listen} inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
{pipe_service}
"""


def ensure_postfix() -> str | None:
    """Install Debian's postfix ("Local only") if missing; the reason when impossible."""
    if os.path.exists(POSTFIX):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "postfix is not installed and this is not a root Debian/Ubuntu machine (apt-get)"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["debconf-set-selections"], input=DEBCONF.encode(), check=False, env=env)
    r = subprocess.run(
        ["apt-get", "install", "-y", "-q", "postfix"], capture_output=True, env=env, timeout=600
    )
    if r.returncode != 0 or not os.path.exists(POSTFIX):
        tail = (r.stderr or r.stdout).decode(errors="replace").strip().splitlines()[-3:]
        return f"apt-get install postfix failed: {' | '.join(tail)}"
    return None


class PostfixInstance:
    def __init__(self, port: int, pipe_service: str, mailboxes: list[str], hostname: str) -> None:
        self.port = port
        self.base = Path(tempfile.mkdtemp(prefix="mailexec-postfix-", dir="/tmp"))
        os.chmod(self.base, 0o755)
        self.config = self.base / "etc"
        self.queue = self.base / "spool"
        self.data = self.base / "data"
        self.vmail = self.base / "vmail"
        self.maillog = self.base / "maillog"
        for d in (self.config, self.queue, self.data):
            d.mkdir(mode=0o755)
        self.vmail.mkdir(mode=0o755)
        os.chown(self.data, _uid("postfix"), 0)
        os.chown(self.vmail, 65534, 65534)
        (self.config / "transport").write_text("prog.test mailexec:\n")
        (self.config / "vmailbox").write_text("".join(f"{m} {m.split('@')[0]}\n" for m in mailboxes))
        (self.config / "main.cf").write_text(
            "\n".join(
                [
                    "compatibility_level = 3.6",
                    f"queue_directory = {self.queue}",
                    f"data_directory = {self.data}",
                    "mail_owner = postfix",
                    "setgid_group = postdrop",
                    f"myhostname = {hostname}",
                    "mydomain = test.example",
                    "myorigin = $myhostname",
                    "mydestination =",
                    "inet_interfaces = 127.0.0.1",
                    "inet_protocols = ipv4",
                    "mynetworks = 127.0.0.0/8",
                    f"maillog_file = {self.maillog}",
                    f"maillog_file_prefixes = {self.base}",
                    "alias_maps =",
                    "alias_database =",
                    "local_recipient_maps =",
                    "relay_domains = prog.test",
                    f"transport_maps = texthash:{self.config}/transport",
                    "virtual_mailbox_domains = sender.test",
                    f"virtual_mailbox_base = {self.vmail}",
                    f"virtual_mailbox_maps = texthash:{self.config}/vmailbox",
                    "virtual_uid_maps = static:65534",
                    "virtual_gid_maps = static:65534",
                    "virtual_minimum_uid = 100",
                    "default_transport = error:outbound mail is disabled in this test instance",
                    "relayhost =",
                    "smtputf8_enable = no",
                    "biff = no",
                    "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination",
                    "queue_run_delay = 1s",
                    "minimal_backoff_time = 2s",
                    "maximal_backoff_time = 4s",
                    "delay_warning_time = 0",
                    "mailexec_destination_concurrency_limit = 4",
                    "",
                ]
            )
        )
        (self.config / "master.cf").write_text(
            MASTER_CF.format(listen=f"127.0.0.1:{port}", pipe_service=pipe_service)
        )

    def postfix(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        cmd = [POSTFIX, "-c", str(self.config), *args]
        r = subprocess.run(cmd, capture_output=True, timeout=60)
        if r.returncode != 0 and not r.stderr and shutil.which("script"):
            # postfix(1) reports to stderr only when it is a terminal (and there is no syslog)
            again = subprocess.run(
                ["script", "-qc", " ".join(cmd), "/dev/null"], capture_output=True, timeout=60
            )
            r = subprocess.CompletedProcess(cmd, r.returncode, r.stdout, again.stdout)
        return r

    def start(self) -> None:
        r = self.postfix("check")
        if r.returncode != 0:
            raise RuntimeError(f"postfix check: {r.stderr.decode(errors='replace')}")
        r = self.postfix("start")
        if r.returncode != 0:
            raise RuntimeError(f"postfix start: {r.stderr.decode(errors='replace')}\n{self.log()}")
        import socket

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"postfix did not listen on {self.port}:\n{self.log()}")

    def flush(self) -> None:
        self.postfix("flush")

    def stop(self) -> None:
        self.postfix("stop")
        # master exits after its children; wait so the queue directory can be removed
        pid_file = self.queue / "pid" / "master.pid"
        deadline = time.monotonic() + 10
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)

    def cleanup(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)

    def log(self) -> str:
        try:
            return self.maillog.read_text(errors="replace")
        except OSError:
            return ""

    def mailbox(self, name: str) -> str:
        try:
            return (self.vmail / name).read_text(errors="replace")
        except OSError:
            return ""


def _uid(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_uid
