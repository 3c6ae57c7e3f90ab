"""Shared plumbing of the bench: configuration, the trivial program, the bench user,
per-process CPU/RSS accounting from /proc, counter files, summary statistics."""

from __future__ import annotations

import os
import pwd
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.settings import Settings

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
BENCH_USER = os.environ.get("BENCH_USER", "mxbench")


def env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0", "false", "no")


@dataclass
class Config:
    n: int = 5000  # 1 KiB messages per run (and deliveries per run of the 10-recipient case)
    n_large: int = 300  # 1 MiB messages per run
    reps: int = 3
    concurrency: int = 64  # requests in flight against ingest / smtp-source sessions
    only: set[str] = field(default_factory=set)  # raw, postfix, mailexec (empty: all)
    timeout_s: float = 600.0  # give up waiting for one run after this long

    @classmethod
    def from_env(cls) -> Config:
        quick = QUICK
        c = cls(
            n=env_int("BENCH_N", 500 if quick else 5000),
            n_large=env_int("BENCH_N_LARGE", 50 if quick else 300),
            reps=env_int("BENCH_REPS", 1 if quick else 3),
            concurrency=env_int("BENCH_CONCURRENCY", 64),
            timeout_s=float(env_int("BENCH_TIMEOUT_S", 600)),
        )
        only = os.environ.get("BENCH_ONLY", "").strip()
        c.only = {x.strip() for x in only.split(",") if x.strip()}
        return c

    def wants(self, part: str) -> bool:
        return not self.only or part in self.only


def say(msg: str) -> None:
    print(f"bench: {msg}", flush=True)


# ---------------------------------------------------------------- statistics


def summary(values: Sequence[float | None]) -> dict[str, Any]:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "values": []}
    return {
        "median": statistics.median(vals),
        "min": min(vals),
        "max": max(vals),
        "values": vals,
    }


def percentiles(samples: list[float], ps: tuple[float, ...] = (50, 95, 99)) -> dict[str, float | None]:
    if not samples:
        return {f"p{int(p)}": None for p in ps}
    s = sorted(samples)
    out: dict[str, float | None] = {}
    for p in ps:
        k = min(len(s) - 1, max(0, int(round(p / 100 * (len(s) - 1)))))
        out[f"p{int(p)}"] = s[k]
    return out


# ---------------------------------------------------------------- user, workdir, programs


def ensure_user(name: str = BENCH_USER) -> tuple[int, int]:
    """The bench programs' account: an ordinary user, because the executor never runs
    programs below MAILEXEC_MIN_UID (1000). A system user left by an older bench (uid
    999 and the like) is recreated."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        pw = None
    if pw is not None and pw.pw_uid < Settings().min_uid:
        say(f"recreating user {name}: uid {pw.pw_uid} is below MAILEXEC_MIN_UID")
        subprocess.run(["userdel", name], check=True)
        pw = None
    if pw is None:
        say(f"creating user {name}")
        subprocess.run(
            ["useradd", "--no-create-home", "--home-dir", "/nonexistent",
             "--shell", "/usr/sbin/nologin", "--user-group", name],
            check=True,
        )
        pw = pwd.getpwnam(name)
    return pw.pw_uid, pw.pw_gid


class Workdir:
    """A temporary directory, world-searchable, holding programs and counter files.

    Under /var/tmp, not /tmp: each sandboxed run gets a private /tmp (issue 13), so a
    counter file under the host's /tmp is out of the program's reach and the bench
    would wait forever for runs it can't count."""

    def __init__(self, prefix: str = "mxbench.") -> None:
        self.path = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
        self.path.chmod(0o755)

    def counter(self, name: str, uid: int, gid: int) -> Path:
        p = self.path / name
        p.write_bytes(b"")
        os.chown(p, uid, gid)
        p.chmod(0o644)
        return p

    def cleanup(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def build_program(workdir: Path, out_path: Path, name: str = "mxprog") -> Path:
    """Compile bench/prog/mxprog.c with OUT_PATH baked in (statically, if the libc allows)."""
    binary = workdir / name
    src = BENCH_DIR / "prog" / "mxprog.c"
    base = ["cc", "-O2", f'-DOUT_PATH="{out_path}"', "-o", str(binary), str(src)]
    r = subprocess.run(base[:2] + ["-static"] + base[2:], capture_output=True)
    if r.returncode != 0:
        subprocess.run(base, check=True)
    binary.chmod(0o755)
    return binary


def build_spawn(workdir: Path) -> Path:
    binary = workdir / "spawn"
    subprocess.run(
        ["cc", "-O2", "-o", str(binary), str(BENCH_DIR / "raw" / "spawn.c")], check=True
    )
    return binary


def make_message(size: int, bench_id: str = "0", to: str = "bench@bench.example") -> bytes:
    """An RFC 5322 message of exactly ``size`` bytes carrying ``X-Bench-Id``."""
    head = (
        f"From: sender@bench.example\r\nTo: {to}\r\nSubject: bench\r\n"
        f"Message-ID: <{bench_id}@bench.example>\r\nX-Bench-Id: {bench_id}\r\n\r\n"
    ).encode()
    body_len = max(0, size - len(head) - 2)
    line = b"x" * 76 + b"\r\n"
    body = (line * (body_len // len(line) + 1))[:body_len]
    return head + body + b"\r\n"


class FileTail:
    """The complete lines appended to a file since the last read (a partial last line
    waits for its newline)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self._partial = b""

    def new_lines(self) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        data = self._partial + data
        cut = data.rfind(b"\n") + 1
        self._partial = data[cut:]
        return data[:cut]


class Counter(FileTail):
    """Reads a counter file incrementally: one line "<id> <ns>" per program run."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.lines = 0
        self.records: list[tuple[str, int]] = []

    def poll(self, keep: bool = False) -> int:
        chunk = self.new_lines()
        self.lines += chunk.count(b"\n")
        if keep:
            for ln in chunk.splitlines():
                ident, _, ns = ln.partition(b" ")
                try:
                    self.records.append((ident.decode(), int(ns)))
                except ValueError:
                    pass
        return self.lines

    def reset(self) -> None:
        with open(self.path, "r+b") as f:
            f.truncate(0)
        self.offset = 0
        self.lines = 0
        self._partial = b""
        self.records = []

    def wait_for(self, n: int, timeout: float, keep: bool = False, interval: float = 0.02,
                 hopeless: Callable[[], str | None] | None = None) -> float | None:
        """Poll until n lines; returns the monotonic time they were seen, or None on timeout.

        ``hopeless`` (asked about once a second) says why the lines can never come, e.g.
        every recipient is final and not all were delivered: the wait ends at once, with
        that reason printed, instead of after ``timeout``."""
        deadline = time.monotonic() + timeout
        next_check = time.monotonic() + 1.0
        while True:
            if self.poll(keep) >= n:
                return time.monotonic()
            now = time.monotonic()
            if now > deadline:
                return None
            if hopeless is not None and now >= next_check:
                next_check = now + 1.0
                if (why := hopeless()) is not None:
                    say(f"giving up waiting for {n} program runs: {why}")
                    return None
            time.sleep(interval)


# ---------------------------------------------------------------- /proc accounting


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'
    return raw[raw.rfind(")") + 2 :].split()


def all_ppids() -> dict[int, int]:
    out: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            f = _stat_fields(int(d))
            if f:
                out[int(d)] = int(f[1])
    return out


def tree(root: int, ppids: dict[int, int] | None = None) -> list[int]:
    ppids = ppids if ppids is not None else all_ppids()
    kids: dict[int, list[int]] = {}
    for pid, pp in ppids.items():
        kids.setdefault(pp, []).append(pid)
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        if p in ppids or p == root:
            out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_ticks(pid: int) -> int:
    """utime+stime+cutime+cstime: the process plus every descendant it has reaped."""
    f = _stat_fields(pid)
    if not f:
        return 0
    return int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])


def self_cpu_s(pid: int) -> float:
    """utime+stime of the process alone (its threads, not its children)."""
    f = _stat_fields(pid)
    return (int(f[11]) + int(f[12])) / CLK_TCK if f else 0.0


def reaped_cpu_s(pid: int) -> float:
    """cutime+cstime: what the process's children that it has waited for spent."""
    f = _stat_fields(pid)
    return (int(f[13]) + int(f[14])) / CLK_TCK if f else 0.0


def tree_cpu_s(roots: list[int]) -> float:
    """CPU seconds of the process trees under ``roots`` (living processes, plus what
    they reaped). The difference of two readings is the CPU spent in between,
    including by processes that started and ended in between, as long as an ancestor
    in the tree reaped them."""
    ppids = all_ppids()
    seen: set[int] = set()
    ticks = 0
    for r in roots:
        for p in tree(r, ppids):
            if p not in seen:
                seen.add(p)
                ticks += cpu_ticks(p)
    return ticks / CLK_TCK


def pids_cpu_s(pids: list[int]) -> float:
    return sum(cpu_ticks(p) for p in pids) / CLK_TCK


def vm_hwm_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def tree_vm_hwm_kib(root: int) -> int | None:
    vals = [v for v in (vm_hwm_kib(p) for p in tree(root)) if v is not None]
    return max(vals) if vals else None


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def machine_cpu_s() -> float:
    """All CPU time the machine spent (not idle/iowait), from /proc/stat."""
    f = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    v = [int(x) for x in f]
    busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]  # user nice system irq softirq steal
    return busy / CLK_TCK


def loadavg() -> float:
    return os.getloadavg()[0]


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path | None = None,
               timeout: float = 60) -> None:
    """Until ``url``/readyz answers 200; exits with the log's tail if the process dies."""
    import httpx

    tail = (lambda: "\n" + log.read_text()[-3000:]) if log is not None else (lambda: "")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"service at {url} exited with {proc.returncode}{tail()}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} not ready{tail()}")


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
