"""py-spy profiles of the running services during one extra 1 KiB × 1 run (not counted
in the figures: sampling costs the target a little). Raw collapsed stacks are kept in
bench/results/profiles/<service>.txt; the summary lists, per service, the top leaf
frames (self time), the top functions by inclusive time and time by package."""

from __future__ import annotations

import collections
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import BENCH_DIR, say

OUT = BENCH_DIR / "results" / "profiles"
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*?)(?::\d+)?\)$")


def py_spy() -> str | None:
    cand = Path(sys.executable).parent / "py-spy"
    if cand.exists():
        return str(cand)
    return shutil.which("py-spy")


def start(pids: dict[str, int], rate: int = 200) -> dict[str, subprocess.Popen[bytes]]:
    exe = py_spy()
    if not exe:
        say("py-spy not installed (.venv/bin/pip install py-spy): no profile")
        return {}
    OUT.mkdir(parents=True, exist_ok=True)
    procs = {}
    for name, pid in pids.items():
        procs[name] = subprocess.Popen(
            [exe, "record", "-p", str(pid), "-r", str(rate), "-f", "raw", "--nonblocking",
             "-o", str(OUT / f"{name}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
    return procs


def stop(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for p in procs.values():
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


def _module(file: str) -> str:
    """'asyncpg/connection.py' -> 'asyncpg'; 'services/executor/x.py' -> 'services.executor';
    'subprocess.py' -> 'subprocess'; '<frozen runpy>' stays."""
    f = file.replace("\\", "/")
    for marker in ("site-packages/", "lib/python3.11/"):
        if marker in f:
            f = f.split(marker, 1)[1]
    parts = f.split("/")
    if parts[0] in ("services", "shared", "mailexec", "bench") and len(parts) > 2:
        return parts[0] + "." + parts[1]
    if len(parts) > 1:
        return parts[0]
    return parts[0].removesuffix(".py")


def summarize(path: Path, top: int = 12) -> dict[str, Any]:
    self_t: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    mods: collections.Counter[str] = collections.Counter()
    total = 0
    idle = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, cnt = line.rpartition(" ")
        if not stack or not cnt.isdigit():
            continue
        n = int(cnt)
        total += n
        frames = [f for f in stack.split(";")
                  if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        leaf = frames[-1]
        m = FRAME.match(leaf)
        lfunc, lfile = (m["func"], m["file"]) if m else (leaf, "")
        if lfunc in ("select", "poll", "epoll_wait", "run_forever", "_run_once") and "selectors" in lfile:
            idle += n
        self_t[f"{lfunc} ({_module(lfile)})"] += n
        mods[_module(lfile)] += n
        seen = set()
        for f in frames:
            m = FRAME.match(f)
            key = f"{m['func']} ({_module(m['file'])})" if m else f
            if key not in seen:
                seen.add(key)
                incl[key] += n
    pct = lambda c: round(100.0 * c / total, 1) if total else 0.0  # noqa: E731
    return {
        "samples": total,
        "idle_pct": pct(idle),
        "top_self": [(k, pct(v)) for k, v in self_t.most_common(top)],
        "top_inclusive": [(k, pct(v)) for k, v in incl.most_common(top + 8)],
        "by_module": [(k, pct(v)) for k, v in mods.most_common(top)],
    }


def summaries() -> dict[str, Any]:
    out = {}
    if not OUT.exists():
        return out
    for f in sorted(OUT.glob("*.txt")):
        try:
            out[f.stem] = summarize(f)
        except OSError:
            pass
    return out


def render(s: dict[str, Any]) -> str:
    lines = []
    for name, d in s.items():
        lines.append(f"== {name}: {d['samples']} samples at 200 Hz, idle excluded")
        lines.append("   self:      " + "; ".join(f"{k} {v}%" for k, v in d["top_self"][:10]))
        lines.append("   by module: " + "; ".join(f"{k} {v}%" for k, v in d["by_module"][:10]))
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(summaries()))
    _ = os
