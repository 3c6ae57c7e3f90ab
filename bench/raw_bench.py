"""Part 1: the raw spawn limit (bench/raw/spawn.c), 1 and 2 workers."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from bench.common import Config, Counter, Workdir, build_program, build_spawn, make_message, say, summary


def run(cfg: Config, uid: int, gid: int) -> dict[str, Any]:
    wd = Workdir("mxbench-raw.")
    try:
        counter_path = wd.counter("runs", uid, gid)
        prog = build_program(wd.path, counter_path)
        spawn = build_spawn(wd.path)
        msg = wd.path / "msg"
        msg.write_bytes(make_message(1024, "raw"))
        counter = Counter(counter_path)
        out: dict[str, Any] = {"program": "bench/prog/mxprog.c (static, O_APPEND counter)"}
        n = cfg.n
        for workers in (1, 2):
            rates, cpus, fails = [], [], 0
            for rep in range(cfg.reps):
                counter.reset()
                r = subprocess.run(
                    [str(spawn), str(prog), str(uid), str(gid), str(n), str(workers), str(msg)],
                    capture_output=True, text=True, timeout=cfg.timeout_s,
                )
                try:
                    res = json.loads(r.stdout)
                except json.JSONDecodeError:
                    say(f"raw spawn failed: {r.stderr.strip()}")
                    continue
                seen = counter.poll()
                fails += res["failures"] + (n - seen)
                rates.append(res["runs_per_s"])
                cpus.append(res["cpu_s"] / n)
                say(f"raw spawn, {workers} worker(s), rep {rep + 1}: {res['runs_per_s']:.0f} runs/s, "
                    f"{res['cpu_s'] / n * 1e3:.3f} ms CPU/run, {seen}/{n} counted")
            out[f"workers_{workers}"] = {
                "runs_per_s": summary(rates),
                "cpu_s_per_run": summary(cpus),
                "failures": fails,
                "n": n,
            }
        return out
    finally:
        wd.cleanup()
