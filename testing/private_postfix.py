"""A private Postfix instance: own config, queue and data directories, one loopback port.

The one copy behind both users of a real Postfix on this machine: the bench
(``bench/postfix_bench.py``, pipe(8) throughput) and the end-to-end test
(``tests/cli/test_postfix_e2e.py``, Postfix → ``mailexec submit`` → bounce back). It lives in
``testing/`` and not in ``mailexec/`` because it is development tooling (it may apt-get install
Postfix): the product package, the wheel and the image never carry it. Standard library only,
so the tests import it without the bench's dependencies and the bench without the tests'.

It never touches /etc/postfix or the host's queue: ``postfix -c DIR`` with everything under
one directory, smtpd on 127.0.0.1:PORT only, no chroot, ``maillog_file`` (there is no
syslog). What the instance does with mail is the caller's: ``main_cf`` lines (domains,
transports, restrictions) and ``services`` (master.cf entries such as a pipe(8) service).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

POSTFIX = "/usr/sbin/postfix"
SMTP_SOURCE = "/usr/sbin/smtp-source"  # Debian ships it in the postfix package
DEBCONF = b"postfix postfix/main_mailer_type select Local only\npostfix postfix/mailname string localhost\n"

# What every instance needs; the caller's main_cf lines follow (and must not repeat these).
MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = {hostname}
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
maillog_file = {maillog}
maillog_file_prefixes = {base}
alias_maps =
alias_database =
biff = no
smtputf8_enable = no
"""

# Postfix's stock services, none chrooted; the caller's services follow.
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
{services}
"""


def ensure_postfix() -> str | None:
    """Install Debian's postfix ("Local only") if missing; the reason when that is impossible.

    Another engineer may be running dpkg at the same time: wait on the lock, try again."""
    if os.path.exists(POSTFIX) and os.path.exists(SMTP_SOURCE):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "postfix is not installed and this is not a root Debian/Ubuntu machine (apt-get)"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["debconf-set-selections"], input=DEBCONF, check=False, env=env)
    lock = ["-o", "DPkg::Lock::Timeout=900"]
    tail: list[str] = []
    for attempt in range(3):
        if attempt:
            time.sleep(10)
        subprocess.run(["apt-get", *lock, "update", "-q"], capture_output=True, env=env, check=False)
        r = subprocess.run(["apt-get", *lock, "install", "-y", "-q", "postfix"],
                           capture_output=True, env=env, check=False)
        if r.returncode == 0 and os.path.exists(POSTFIX) and os.path.exists(SMTP_SOURCE):
            return None
        tail = (r.stderr or r.stdout).decode(errors="replace").strip().splitlines()[-3:]
    return f"apt-get install postfix failed: {' | '.join(tail)}"


class PrivatePostfix:
    """One instance under ``base`` (a fresh directory in /tmp when None), smtpd on ``port``."""

    def __init__(self, port: int, *, hostname: str, main_cf: Iterable[str], services: str,
                 base: Path | None = None) -> None:
        self.port = port
        if base is None:
            base = Path(tempfile.mkdtemp(prefix="mailexec-postfix-", dir="/tmp"))
        self.base = base
        self.config = self.base / "etc"
        self.queue = self.base / "queue"
        self.data = self.base / "data"
        self.maillog = self.base / "maillog"
        for d in (self.config, self.queue, self.data):
            d.mkdir(mode=0o755, parents=True, exist_ok=True)
        owner = pwd.getpwnam("postfix")
        os.chown(self.data, owner.pw_uid, owner.pw_gid)
        os.chmod(self.base, 0o755)
        common = MAIN_CF.format(queue=self.queue, data=self.data, hostname=hostname,
                                maillog=self.maillog, base=self.base)
        (self.config / "main.cf").write_text(common + "".join(f"{line}\n" for line in main_cf))
        (self.config / "master.cf").write_text(
            MASTER_CF.format(listen=f"127.0.0.1:{port}", services=services.rstrip("\n"))
        )
        # Debian registers its dynamically loaded map types here; postfix -c DIR looks in DIR.
        if Path("/etc/postfix/dynamicmaps.cf").exists():
            shutil.copy("/etc/postfix/dynamicmaps.cf", self.config / "dynamicmaps.cf")

    def postfix(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        cmd = [POSTFIX, "-c", str(self.config), *args]
        r = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
        if r.returncode != 0 and not r.stderr and shutil.which("script"):
            # postfix(1) reports to stderr only when it is a terminal (and there is no syslog)
            again = subprocess.run(
                ["script", "-qc", " ".join(cmd), "/dev/null"], capture_output=True, timeout=60,
                check=False,
            )
            r = subprocess.CompletedProcess(cmd, r.returncode, r.stdout, again.stdout)
        return r

    def start(self) -> None:
        """Start it and wait until smtpd greets (220) on the port."""
        r = self.postfix("check")
        if r.returncode != 0:
            raise RuntimeError(f"postfix check: {r.stderr.decode(errors='replace')}")
        r = self.postfix("start")
        if r.returncode != 0:
            raise RuntimeError(f"postfix start: {r.stderr.decode(errors='replace')}\n{self.log_tail()}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(100).startswith(b"220"):
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"private postfix did not answer on port {self.port}\n{self.log_tail()}")

    def master_pid(self) -> int:
        return int((self.queue / "pid" / "master.pid").read_text().split()[0])

    def flush(self) -> None:
        self.postfix("flush")

    def stop(self) -> None:
        try:
            master = self.master_pid()
        except (OSError, ValueError, IndexError):
            master = None  # never started
        self.postfix("stop")
        # master exits after its children; wait so the queue directory can be removed
        # (master.pid stays behind, and the exited master may linger as a zombie)
        deadline = time.monotonic() + 10
        while master is not None and _running(master) and time.monotonic() < deadline:
            time.sleep(0.1)

    def cleanup(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)

    def queue_empty(self) -> bool:
        for sub in ("incoming", "active", "deferred", "maildrop"):
            d = self.queue / sub
            if d.exists() and any(p.is_file() for p in d.rglob("*")):
                return False
        return True

    def log(self) -> str:
        try:
            return self.maillog.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-n:])


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (not gone, not a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
