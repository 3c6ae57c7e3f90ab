"""Part 2: Postfix pipe(8) on this machine, a PRIVATE instance (own config, queue and data
directories in a temp dir, smtpd on a free loopback port) whose only transport is a
pipe(8) service running the trivial program as the bench user; messages injected with
smtp-source. Never touches a system-wide Postfix."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.common import (
    BENCH_USER, Config, Counter, Workdir, build_program, loadavg, machine_cpu_s, say,
    summary, tree_cpu_s,
)

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = bench.localdomain
mydomain = localdomain
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains =
smtpd_relay_restrictions = permit_mynetworks, reject
default_transport = benchpipe
local_transport = benchpipe
relay_transport = benchpipe
benchpipe_destination_recipient_limit = 1
smtpd_peername_lookup = no
biff = no
append_dot_mydomain = no
smtputf8_enable = no
maillog_file = {d}/maillog
maillog_file_prefixes = {d}
alias_maps =
alias_database =
"""

MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
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
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
benchpipe unix  -       n       n       -       -       pipe
  flags=q user={user} argv={prog}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_installed() -> None:
    """Debian's postfix, "Local only", installed non-interactively if missing. Another
    engineer may be running dpkg at the same time: wait on the lock, don't fail."""
    if shutil.which("postfix") and shutil.which("smtp-source"):
        return
    say("installing Debian postfix (Local only)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(
        ["debconf-set-selections"],
        input=b"postfix postfix/main_mailer_type select Local only\n"
              b"postfix postfix/mailname string bench.localdomain\n",
        check=False,
    )
    lock = ["-o", "DPkg::Lock::Timeout=900"]
    for attempt in range(3):
        subprocess.run(["apt-get", *lock, "update", "-q"], env=env, check=False)
        r = subprocess.run(["apt-get", *lock, "install", "-y", "-q", "postfix"], env=env)
        if r.returncode == 0 and shutil.which("smtp-source"):
            return
        time.sleep(10)
    raise RuntimeError("could not install postfix")


class Instance:
    def __init__(self, root: Path, prog: Path, user: str) -> None:
        self.root = root
        self.etc = root / "etc"
        self.port = free_port()
        for d in ("etc", "queue", "data"):
            (root / d).mkdir(parents=True, exist_ok=True)
        pf = pwd.getpwnam("postfix")
        os.chown(root / "data", pf.pw_uid, pf.pw_gid)
        (root / "etc" / "main.cf").write_text(MAIN_CF.format(d=root))
        (root / "etc" / "master.cf").write_text(MASTER_CF.format(port=self.port, user=user, prog=prog))
        if Path("/etc/postfix/dynamicmaps.cf").exists():
            shutil.copy("/etc/postfix/dynamicmaps.cf", self.etc / "dynamicmaps.cf")
        os.chmod(root, 0o755)

    def postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["postfix", "-c", str(self.etc), *args], capture_output=True, text=True)

    def start(self) -> None:
        self.postfix("check")
        r = self.postfix("start")
        if r.returncode != 0:
            raise RuntimeError(f"postfix start failed: {r.stdout}{r.stderr}{self.log_tail()}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(100).startswith(b"220"):
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"private postfix did not answer on port {self.port}\n{self.log_tail()}")

    def master_pid(self) -> int:
        return int((self.root / "queue" / "pid" / "master.pid").read_text().split()[0])

    def stop(self) -> None:
        self.postfix("stop")
        time.sleep(0.5)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join((self.root / "maillog").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def queue_empty(self) -> bool:
        for sub in ("incoming", "active", "deferred", "maildrop"):
            d = self.root / "queue" / sub
            if d.exists() and any(p.is_file() for p in d.rglob("*")):
                return False
        return True


def run(cfg: Config, uid: int, gid: int) -> dict[str, Any]:
    ensure_installed()
    wd = Workdir("mxbench-postfix.")
    inst: Instance | None = None
    try:
        counter_path = wd.counter("runs", uid, gid)
        prog = build_program(wd.path, counter_path)
        inst = Instance(wd.path / "pf", prog, BENCH_USER)
        inst.start()
        say(f"private postfix {subprocess.run(['postconf', '-d', '-h', 'mail_version'], capture_output=True, text=True).stdout.strip()} "
            f"on 127.0.0.1:{inst.port} (config {inst.etc})")
        counter = Counter(counter_path)
        n = cfg.n
        sessions = min(cfg.concurrency, 20) if cfg.concurrency else 20
        # warm-up: processes forked, caches hot
        _inject(inst, min(200, n), sessions)
        counter.wait_for(min(200, n), 60)
        rates, cpus, cpus_machine, loads, fails = [], [], [], [], 0
        for rep in range(cfg.reps):
            counter.reset()
            master = inst.master_pid()
            cpu0, m0, t0 = tree_cpu_s([master]), machine_cpu_s(), time.monotonic()
            src = _inject_async(inst, n, sessions)
            t_end = counter.wait_for(n, cfg.timeout_s)
            src.wait()
            cpu1, m1 = tree_cpu_s([master]), machine_cpu_s()
            seen = counter.poll()
            if t_end is None:
                fails += n - seen
                say(f"postfix rep {rep + 1}: only {seen}/{n} runs after {cfg.timeout_s}s\n{inst.log_tail()}")
                continue
            el = t_end - t0
            rates.append(n / el)
            cpus.append((cpu1 - cpu0) / n)
            cpus_machine.append((m1 - m0) / n)
            loads.append(loadavg())
            say(f"postfix pipe(8) rep {rep + 1}: {n / el:.0f} deliveries/s, "
                f"{(cpu1 - cpu0) / n * 1e3:.3f} ms CPU/delivery in postfix's tree "
                f"(machine-wide {(m1 - m0) / n * 1e3:.3f} ms), load {loads[-1]:.1f}")
            deadline = time.monotonic() + 30
            while not inst.queue_empty() and time.monotonic() < deadline:
                time.sleep(0.1)
        return {
            "version": subprocess.run(["postconf", "-d", "-h", "mail_version"], capture_output=True, text=True).stdout.strip(),
            "n": n,
            "smtp_sessions": sessions,
            "deliveries_per_s": summary(rates),
            "cpu_s_per_delivery": summary(cpus),
            "machine_cpu_s_per_delivery": summary(cpus_machine),
            "loadavg": summary(loads),
            "failures": fails,
            "note": "CPU of the postfix master's process tree (smtpd, cleanup, qmgr, pipe and "
                    "the programs they reaped); smtp-source (the client) not included",
        }
    finally:
        if inst is not None:
            inst.stop()
        wd.cleanup()


def _source_cmd(inst: Instance, n: int, sessions: int) -> list[str]:
    return [
        "smtp-source", "-s", str(sessions), "-m", str(n), "-l", "1024",
        "-f", "sender@bench.example", "-t", "bench@bench.example", "-N",
        f"127.0.0.1:{inst.port}",
    ]


def _inject(inst: Instance, n: int, sessions: int) -> None:
    subprocess.run(_source_cmd(inst, n, sessions), check=False, capture_output=True)


def _inject_async(inst: Instance, n: int, sessions: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(_source_cmd(inst, n, sessions), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
