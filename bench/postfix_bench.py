"""Part 2: Postfix pipe(8) on this machine, a PRIVATE instance (own config, queue and data
directories in a temp dir, smtpd on a free loopback port) whose only transport is a
pipe(8) service running the trivial program as the bench user; messages injected with
smtp-source. Never touches a system-wide Postfix."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from bench.common import (
    BENCH_USER,
    Config,
    Counter,
    Workdir,
    build_program,
    free_port,
    loadavg,
    machine_cpu_s,
    say,
    summary,
    tree_cpu_s,
)
from testing.private_postfix import PrivatePostfix, ensure_postfix

BENCH_MAIN_CF = [
    "mydomain = localdomain",
    "relay_domains =",
    "smtpd_relay_restrictions = permit_mynetworks, reject",
    "default_transport = benchpipe",
    "local_transport = benchpipe",
    "relay_transport = benchpipe",
    "benchpipe_destination_recipient_limit = 1",
    "smtpd_peername_lookup = no",
    "append_dot_mydomain = no",
]


def instance(root: Path, prog: Path, user: str, *, services: str | None = None,
             main_cf: list[str] | None = None) -> PrivatePostfix:
    """Every address goes to one pipe(8) service running ``prog`` as ``user`` (or to what
    ``services`` and ``main_cf`` say instead: bench/mta_bench.py's other paths)."""
    return PrivatePostfix(
        free_port(), hostname="bench.localdomain", main_cf=main_cf or BENCH_MAIN_CF, base=root,
        services=services or f"benchpipe unix  -       n       n       -       -       pipe\n"
                             f"  flags=q user={user} argv={prog}",
    )


def run(cfg: Config, uid: int, gid: int) -> dict[str, Any]:
    missing = ensure_postfix()
    if missing:
        raise RuntimeError(missing)
    wd = Workdir("mxbench-postfix.")
    inst: PrivatePostfix | None = None
    try:
        counter_path = wd.counter("runs", uid, gid)
        prog = build_program(wd.path, counter_path)
        inst = instance(wd.path / "pf", prog, BENCH_USER)
        inst.start()
        say(f"private postfix {_version()} on 127.0.0.1:{inst.port} (config {inst.config})")
        counter = Counter(counter_path)
        sessions = min(cfg.concurrency, 20) if cfg.concurrency else 20
        # warm-up: processes forked, caches hot
        _inject(inst, min(200, cfg.n), sessions)
        counter.wait_for(min(200, cfg.n), 60)
        result = _measure(cfg, inst, counter, cfg.n, sessions, 1024)
        # 1 MiB x 1 beside mailexec's 1m_x1 (same count, same sessions as mailexec's 16)
        result["large"] = _measure(cfg, inst, counter, cfg.n_large, min(16, sessions), 1 << 20)
        return result
    finally:
        if inst is not None:
            inst.stop()
        wd.cleanup()


def _measure(cfg: Config, inst: PrivatePostfix, counter: Counter, n: int, sessions: int,
             size: int) -> dict[str, Any]:
    """``cfg.reps`` rounds of ``n`` messages of ``size`` bytes through the pipe(8) service."""
    rates, cpus, cpus_machine, loads, fails = [], [], [], [], 0
    label = "1 KiB" if size == 1024 else f"{size >> 20} MiB"
    for rep in range(cfg.reps):
        counter.reset()
        master = inst.master_pid()
        cpu0, m0, t0 = tree_cpu_s([master]), machine_cpu_s(), time.monotonic()
        src = _inject_async(inst, n, sessions, size)
        t_end = counter.wait_for(n, cfg.timeout_s)
        src.wait()
        cpu1, m1 = tree_cpu_s([master]), machine_cpu_s()
        seen = counter.poll()
        if t_end is None:
            fails += n - seen
            say(f"postfix {label} rep {rep + 1}: only {seen}/{n} runs after {cfg.timeout_s}s\n"
                f"{inst.log_tail()}")
            continue
        el = t_end - t0
        rates.append(n / el)
        cpus.append((cpu1 - cpu0) / n)
        cpus_machine.append((m1 - m0) / n)
        loads.append(loadavg())
        say(f"postfix pipe(8) {label} x 1 rep {rep + 1}: {n / el:.0f} deliveries/s, "
            f"{(cpu1 - cpu0) / n * 1e3:.3f} ms CPU/delivery in postfix's tree "
            f"(machine-wide {(m1 - m0) / n * 1e3:.3f} ms), load {loads[-1]:.1f}")
        deadline = time.monotonic() + 30
        while not inst.queue_empty() and time.monotonic() < deadline:
            time.sleep(0.1)
    return {
        "version": _version(),
        "n": n,
        "size": size,
        "smtp_sessions": sessions,
        "deliveries_per_s": summary(rates),
        "cpu_s_per_delivery": summary(cpus),
        "machine_cpu_s_per_delivery": summary(cpus_machine),
        "loadavg": summary(loads),
        "failures": fails,
        "note": "CPU of the postfix master's process tree (smtpd, cleanup, qmgr, pipe and "
                "the programs they reaped); smtp-source (the client) not included",
    }


def source_cmd(port: int, n: int, sessions: int, *, to: str = "bench@bench.example",
               numbered: bool = True, lmtp: bool = False, reuse: bool = False,
               size: int = 1024) -> list[str]:
    """smtp-source: n messages of ``size`` bytes over ``sessions`` parallel sessions;
    ``numbered`` (-N) makes every recipient distinct (``<seq>bench@…``: no 100%
    resolve-cache hits), ``lmtp`` (-L) speaks LMTP, ``reuse`` (-d) keeps each connection
    for the next message."""
    return ["smtp-source", "-s", str(sessions), "-m", str(n), "-l", str(size),
            "-f", "sender@bench.example", "-t", to,
            *(["-N"] if numbered else []), *(["-L"] if lmtp else []), *(["-d"] if reuse else []),
            f"127.0.0.1:{port}"]


def _inject(inst: PrivatePostfix, n: int, sessions: int) -> None:
    subprocess.run(source_cmd(inst.port, n, sessions), check=False, capture_output=True)


def _inject_async(inst: PrivatePostfix, n: int, sessions: int,
                  size: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        source_cmd(inst.port, n, sessions, size=size), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)


def _version() -> str:
    r = subprocess.run(["postconf", "-d", "-h", "mail_version"], capture_output=True, text=True)
    return r.stdout.strip()
