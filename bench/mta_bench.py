"""Part 4 (``BENCH_ONLY=mta``): the paths an MTA uses, measured in one run with the same
program (mxprog) and the same messages (``smtp-source -s 20 -l 1024 -N``):

(a) ``pipe``:   Postfix → pipe(8) → program (postfix_bench.py's anchor, same config)
(b) ``lmtp``:   Postfix → lmtp(8) → ingest's LMTP listener → executor → program
(c) ``submit``: Postfix → pipe(8) → ``mailexec submit`` → ingest (HTTP) → executor → program

Three private Postfix instances (testing/private_postfix.py) that differ only in the transport,
one mailexec pipeline (bench/mailexec_bench.py's ``Pipeline``, LMTP on a free port), runs
interleaved a, b, c per repetition so foreign load hits all three alike. Per run: deliveries/s
(clock from smtp-source's start to the N-th program exit), CPU per delivery split between
Postfix's processes (the master's tree) and mailexec's (its services' trees, their PostgreSQL
backends, RabbitMQ; in (c) also the ``mailexec submit`` processes); then p99 submit→program
exit, paced at half each path's own rate (bench/smtpgen.py: smtp-source's messages carry no
id to join with the program's line). Last, ingest alone (executor stopped): ``smtp-source -L``
straight at the LMTP port vs loadgen's HTTP POSTs, msgs/s and ingest CPU per message.

Scenario names for BENCH_SCENARIOS: mta_pipe, mta_lmtp, mta_submit, mta_latency, lmtp_vs_http.
BENCH_N_SUBMIT (default min(N, 2000)) sizes (c), which is bound by one Python start per message.

How the pipe(8) processes' children are split off: the pipe service runs with ``-o
max_use=1000000 -o max_idle=3600`` (every transport gets the same), so no pipe process exits
during a run and its cutime+cstime — what it reaped: the program in (a), ``mailexec submit``
in (c) — can be read from /proc at the end. A pipe process that exits anyway hands that time
to the master; the run then says ``split_exact: false``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import profiling
from bench.common import (
    BENCH_USER,
    ROOT,
    Config,
    Workdir,
    all_ppids,
    comm,
    env_int,
    free_port,
    loadavg,
    percentiles,
    reaped_cpu_s,
    say,
    self_cpu_s,
    summary,
    tree,
    tree_cpu_s,
)
from bench.mailexec_bench import VHOST, Pipeline, ingest_only, pg, rabbitmqctl
from bench.postfix_bench import BENCH_MAIN_CF, instance, source_cmd
from testing.private_postfix import PrivatePostfix, ensure_postfix

PATHS = ("pipe", "lmtp", "submit")
LABEL = {
    "pipe": "(a) Postfix -> pipe(8) -> program",
    "lmtp": "(b) Postfix -> lmtp(8) -> mailexec",
    "submit": "(c) Postfix -> pipe(8) -> mailexec submit",
}
SCENARIOS = ("mta_pipe", "mta_lmtp", "mta_submit", "mta_latency", "lmtp_vs_http")
MAILEXEC = ("policy", "ingest", "executor", "notifier", "pg_backends", "rabbitmq")
# the pipe/lmtp service: no process exits mid-run (see the module docstring)
KEEP = "-o max_use=1000000 -o max_idle=3600"
RCPT = "bench@bench.example"  # smtp-source -N sends <seq>bench@…; the canonical map strips <seq>
SYSTEM_PYTHON = "/usr/bin/python3"  # the venv's interpreter lives under /root (mode 700)
SESSIONS = 20  # smtp-source -s, as the Postfix figure; also Postfix's destination concurrency


def wanted() -> list[str]:
    only = os.environ.get("BENCH_SCENARIOS", "")
    return [s for s in SCENARIOS if not only or s in only.split(",")]


# ---------------------------------------------------------------- set-up


def launcher(wd: Path, ingest_url: str, token: str, uid: int, gid: int) -> Path:
    """What a packaged /usr/bin/mailexec is (pip's console script on the system Python,
    the mta token in a CLI config file), plus a pycache the pipe user can write."""
    pycache = wd / "pycache"
    pycache.mkdir()
    os.chown(pycache, uid, gid)
    conf = wd / "cli.toml"
    conf.write_text(f'ingest_url = "{ingest_url}"\ningest_token = "{token}"\n')
    conf.chmod(0o644)
    site = next((ROOT / ".venv" / "lib").glob("python3*/site-packages"), None)
    script = wd / "bin" / "mailexec"
    script.parent.mkdir()
    script.parent.chmod(0o755)
    script.write_text(
        f"#!{SYSTEM_PYTHON}\n"
        "import os, sys\n"
        f"sys.pycache_prefix = {str(pycache)!r}\n"
        f"sys.path += [{str(ROOT)!r}, {str(site)!r}]\n"
        f"os.environ.setdefault('MAILEXEC_CLI_CONFIG', {str(conf)!r})  # /etc/mailexec/cli.toml\n"
        "from mailexec.entry import main\n"
        "if __name__ == '__main__':\n"
        "    sys.exit(main())\n"
    )
    script.chmod(0o755)
    return script


def instances(wd: Path, p: Pipeline, lmtp_port: int, submit: Path) -> dict[str, PrivatePostfix]:
    canonical = wd / "canonical"
    canonical.write_text("/^[0-9]+(bench@bench\\.example)$/ ${1}\n")
    canonical.chmod(0o644)

    def main_cf(transport: str, service: str) -> list[str]:
        lines = [ln.replace("= benchpipe", f"= {transport}").replace("benchpipe_", f"{service}_")
                 for ln in BENCH_MAIN_CF]
        return [*lines, f"recipient_canonical_maps = regexp:{canonical}"]

    pipe = "benchpipe unix  -       n       n       -       -       pipe " + KEEP + "\n  "
    out = {
        "pipe": instance(wd / "pf-pipe", p.prog, BENCH_USER, main_cf=main_cf("benchpipe", "benchpipe"),
                         services=pipe + f"flags=q user={BENCH_USER} argv={p.prog}"),
        "lmtp": instance(wd / "pf-lmtp", p.prog, BENCH_USER,
                         main_cf=main_cf(f"benchlmtp:inet:127.0.0.1:{lmtp_port}", "benchlmtp"),
                         services=f"benchlmtp unix  -       -       n       -       -       lmtp {KEEP}"),
        # docs/mta-integration.md's pipe service
        "submit": instance(wd / "pf-submit", p.prog, BENCH_USER,
                           main_cf=main_cf("benchpipe", "benchpipe"),
                           services=pipe + f"flags=q null_sender= user={BENCH_USER} argv={submit} submit"
                           " --from=${sender} --to=${recipient} --idempotency-key=${queue_id}"),
    }
    return out


# ---------------------------------------------------------------- measuring


Procs = dict[int, tuple[str, float, float]]  # pid → (comm, own CPU s, CPU s of what it reaped)


def snapshot(p: Pipeline, inst: PrivatePostfix) -> tuple[dict[str, float], Procs]:
    """CPU seconds so far: mailexec's components, the Postfix master's tree, and each process
    of that tree (a pipe(8) process's reaped time is its program or `mailexec submit`)."""
    snap = p.cpu_snapshot()
    master = inst.master_pid()
    snap["postfix"] = tree_cpu_s([master])
    procs = {pid: (comm(pid), self_cpu_s(pid), reaped_cpu_s(pid)) for pid in tree(master, all_ppids())}
    return snap, procs


def by_process(master: int, procs0: Procs, procs1: Procs, n: int) -> dict[str, float]:
    """Postfix's CPU per delivery by daemon (smtpd, cleanup, qmgr, lmtp …; pipe without what
    it reaped). Processes that exited during the run (smtpd and cleanup after max_use) are
    only known through the master's reaped time: ``exited``."""
    out: dict[str, float] = {}
    for pid, (name, own, _) in procs1.items():
        out[name] = out.get(name, 0.0) + own - (procs0[pid][1] if pid in procs0 else 0.0)
    gone = sum(own + reaped for pid, (_, own, reaped) in procs0.items() if pid not in procs1)
    m0 = procs0.get(master, ("", 0.0, 0.0))[2]
    m1 = procs1.get(master, ("", 0.0, 0.0))[2]
    out["exited"] = m1 - m0 - gone
    return {k: v / n for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


def _wait_drained(p: Pipeline, inst: PrivatePostfix, n: int, mailexec: bool, timeout: float = 60) -> None:
    """Postfix's queue empty and, for (b)/(c), every recipient recorded delivered."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if inst.queue_empty() and (not mailexec or p.states().get("delivered", 0) >= n):
            return
        time.sleep(0.05)


def run_path(p: Pipeline, inst: PrivatePostfix, path: str, n: int, cfg: Config) -> dict[str, Any]:
    p.reset()
    (before, procs0), t0 = snapshot(p, inst), time.monotonic()
    src = subprocess.Popen(source_cmd(inst.port, n, SESSIONS), stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    t_end = p.counter.wait_for(n, cfg.timeout_s, interval=0.01)
    _, _, client = os.wait4(src.pid, 0)
    src.returncode = 0  # reaped above
    _wait_drained(p, inst, n, path != "pipe")
    after, procs1 = snapshot(p, inst)
    seen = p.counter.poll()
    if t_end is None:
        raise RuntimeError(f"{path}: {seen}/{n} program runs after {cfg.timeout_s}s\n{inst.log_tail()}")
    return {
        "n": n, "elapsed_s": t_end - t0, "deliveries_per_s": n / (t_end - t0),
        **_split(path, inst, before, after, procs0, procs1, n),
        "client_cpu_s_per_delivery": (client.ru_utime + client.ru_stime) / n,
        "loadavg": loadavg(),
    }


def _split(path: str, inst: PrivatePostfix, before: dict[str, float], after: dict[str, float],
           procs0: Procs, procs1: Procs, n: int) -> dict[str, Any]:
    """CPU seconds per delivery between two snapshots, Postfix's and mailexec's apart."""
    pipes0 = {pid: r for pid, (name, _, r) in procs0.items() if name == "pipe"}
    pipes1 = {pid: r for pid, (name, _, r) in procs1.items() if name == "pipe"}
    per = {k: (after[k] - before.get(k, 0.0)) / n for k in after if k != "machine"}
    reaped = sum(v - pipes0.get(pid, 0.0) for pid, v in pipes1.items()) / n
    cpu: dict[str, float] = {"postfix": per["postfix"] - reaped}
    if path == "pipe":
        cpu["program"] = reaped
    else:
        cpu.update({k: per.get(k, 0.0) for k in MAILEXEC})
        cpu["executor_self"] = per.get("executor_self", 0.0)
        if path == "submit":
            cpu["submit"] = reaped
    mx = sum(v for k, v in cpu.items() if k not in ("postfix", "program", "executor_self"))
    return {
        "cpu_s_per_delivery": cpu,
        "postfix_cpu_s_per_delivery": cpu["postfix"] + cpu.get("program", 0.0),
        "mailexec_cpu_s_per_delivery": mx if path != "pipe" else None,
        "machine_cpu_s_per_delivery": (after["machine"] - before["machine"]) / n,
        "split_exact": not (set(pipes0) - set(pipes1)),
        "postfix_by_process": by_process(inst.master_pid(), procs0, procs1, n),
    }


def run_latency(p: Pipeline, inst: PrivatePostfix, path: str, rate: float, cfg: Config) -> dict[str, Any]:
    """Paced at ``rate`` (open loop) for ~10 s: submit (due time) → program exit."""
    p.reset()
    n = min(cfg.n, max(100, int(rate * 10)))
    out = p.wd.path / f"smtpgen-{path}.txt"
    before, procs0 = snapshot(p, inst)
    gen = subprocess.Popen([sys.executable, "-m", "bench.smtpgen", "--port", str(inst.port),
                            "-n", str(n), "-c", str(SESSIONS), "--rate", f"{rate:.3f}",
                            "--prefix", f"lat{path}", "--out", str(out)],
                           cwd=ROOT, stdout=subprocess.PIPE, text=True)
    p.counter.wait_for(n, cfg.timeout_s, keep=True, interval=0.05)
    gen_out, _ = gen.communicate(timeout=cfg.timeout_s)
    lg = json.loads(gen_out.strip().splitlines()[-1])
    _wait_drained(p, inst, lg["accepted"], path != "pipe")
    after, procs1 = snapshot(p, inst)
    p.counter.poll(keep=True)
    due = {}
    for line in out.read_text().splitlines():
        ident, t_due, _ = line.split()
        due[ident] = int(t_due)
    lat = [(ns - due[i]) / 1e6 for i, ns in p.counter.records if i in due]
    cpu = _split(path, inst, before, after, procs0, procs1, max(1, lg["accepted"]))
    return {"offered_rate": rate, "n": n, "accepted": lg["accepted"], "errors": lg["errors"],
            "measured": len(lat), "latency_ms": percentiles(lat), "loadavg": loadavg(), **cpu}


def http_paced(p: Pipeline, rate: float, cfg: Config) -> dict[str, Any]:
    """The control for (b): mailexec alone, loadgen POSTing at the same paced rate with as
    many in flight as Postfix's sessions. Its CPU per delivery against (b)'s says what the
    LMTP front costs or saves; mailexec's cost per delivery depends on the rate (batches)."""
    n = min(cfg.n, max(100, int(rate * 10)))
    r = p.run_once("http-paced", n, 1024, 1, SESSIONS, rate=rate, latency=True)
    cpu = {k: r["cpu_s_per_delivery"].get(k, 0.0) for k in (*MAILEXEC, "executor_self")}
    return {"offered_rate": rate, "n": n, "accepted": r["delivered"], "measured": r["delivered"],
            "latency_ms": r["latency_ms"], "loadavg": r["loadavg"], "cpu_s_per_delivery": cpu,
            "mailexec_cpu_s_per_delivery": sum(cpu[k] for k in MAILEXEC),
            "machine_cpu_s_per_delivery": r["machine_cpu_s_per_delivery"]}


def lmtp_alone(p: Pipeline, cfg: Config, reuse: bool, sessions: int = SESSIONS) -> dict[str, Any]:
    """smtp-source -L straight at ingest's LMTP port (executor stopped): accepted msgs/s."""
    if "executor" in p.services:
        p.stop("executor")
    p.reset()
    rabbitmqctl("purge_queue", "-p", VHOST, "deliveries", check=False)
    port = int(p.env["MAILEXEC_LMTP_PORT"])
    before = p.cpu_snapshot()
    t0 = time.monotonic()
    src = subprocess.Popen(source_cmd(port, cfg.n, sessions, to="bench0@bench.example",
                                      numbered=False, lmtp=True, reuse=reuse),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, client = os.wait4(src.pid, 0)
    elapsed = time.monotonic() - t0
    src.returncode = os.waitstatus_to_exitcode(status)
    after = p.cpu_snapshot()
    stored = pg("SELECT count(*) AS n FROM mail.messages", fetch=True)[0]["n"]
    err = src.stderr.read().decode(errors="replace")[-500:] if src.stderr else ""
    rabbitmqctl("purge_queue", "-p", VHOST, "deliveries", check=False)
    acc = max(1, stored)
    return {
        "accepted": stored, "exit": src.returncode, "stderr": err,
        "accepted_per_s": stored / elapsed,
        "cpu_s_per_message": {k: (after[k] - before.get(k, 0.0)) / acc for k in after if k != "machine"}
        | {"machine": (after["machine"] - before["machine"]) / acc,
           "client": (client.ru_utime + client.ru_stime) / acc},
        "loadavg": loadavg(),
    }


# ---------------------------------------------------------------- aggregation and table


def _agg(reps: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"reps": reps}
    if not reps:
        return out
    for key in ("deliveries_per_s", "postfix_cpu_s_per_delivery", "mailexec_cpu_s_per_delivery",
                "machine_cpu_s_per_delivery", "client_cpu_s_per_delivery", "loadavg"):
        out[key] = summary([r.get(key) for r in reps])
    comps = sorted({k for r in reps for k in r["cpu_s_per_delivery"]})
    out["cpu_s_per_delivery"] = {c: summary([r["cpu_s_per_delivery"].get(c, 0.0) for r in reps])
                                 for c in comps}
    out["split_exact"] = all(r["split_exact"] for r in reps)
    names = sorted({k for r in reps for k in r.get("postfix_by_process", {})})
    out["postfix_by_process"] = {k: summary([r["postfix_by_process"].get(k, 0.0) for r in reps])
                                 for k in names}
    return out


def _agg_paced(reps: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"reps": reps}
    for pc in ("p50", "p95", "p99"):
        out[pc] = summary([r["latency_ms"][pc] for r in reps if r["latency_ms"].get(pc) is not None])
    for key in ("postfix_cpu_s_per_delivery", "mailexec_cpu_s_per_delivery", "machine_cpu_s_per_delivery"):
        out[key] = summary([r.get(key) for r in reps])
    return out


def _agg_alone(reps: list[dict[str, Any]]) -> dict[str, Any]:
    if not reps:
        return {"reps": reps}
    comps = [c for c in reps[0]["cpu_s_per_message"]]
    return {"reps": reps, "accepted_per_s": summary([r["accepted_per_s"] for r in reps]),
            "cpu_s_per_message": {c: summary([r["cpu_s_per_message"].get(c, 0.0) for r in reps])
                                  for c in comps}}


def _med(d: Any) -> float | None:
    return d.get("median") if isinstance(d, dict) else None


def verdicts(out: dict[str, Any]) -> dict[str, Any]:
    paths = out.get("paths", {})
    a = _med(paths.get("pipe", {}).get("deliveries_per_s"))
    b = _med(paths.get("lmtp", {}).get("deliveries_per_s"))
    c = _med(paths.get("submit", {}).get("deliveries_per_s"))
    b_mx = _med(paths.get("lmtp", {}).get("mailexec_cpu_s_per_delivery"))
    alone = out.get("ingest_alone", {})
    lm = alone.get("lmtp_reuse", {})
    ht = alone.get("http_c64", {})
    lm_rate, ht_rate = _med(lm.get("accepted_per_s")), _med(ht.get("accepted_per_s"))
    lm64 = _med(alone.get("lmtp_reuse_s64", {}).get("accepted_per_s"))
    lat = out.get("latency", {})
    b_paced = _med(lat.get("lmtp", {}).get("mailexec_cpu_s_per_delivery"))
    h_paced = _med(lat.get("http_control", {}).get("mailexec_cpu_s_per_delivery"))
    lm_cpu = _med(lm.get("cpu_s_per_message", {}).get("ingest"))
    ht_cpu = _med(ht.get("cpu_s_per_message", {}).get("ingest"))
    div = lambda x, y: (x / y) if x and y else None  # noqa: E731
    return {
        "(b)/(a) deliveries/s [target >= 0.7]": div(b, a),
        "(b) mailexec CPU ms/delivery [target <= 1.2]": b_mx * 1e3 if b_mx else None,
        "(c) deliveries/s [target >= 50]": c,
        "(c)/(a) deliveries/s": div(c, a),
        "LMTP/HTTP alone msgs/s [goal >= 1]": div(lm_rate, ht_rate),
        "LMTP/HTTP alone ingest CPU per message [goal <= 1]": div(lm_cpu, ht_cpu),
        "LMTP (64 sessions)/HTTP (64 in flight) alone msgs/s": div(lm64, ht_rate),
        "(b)/HTTP control mailexec CPU per delivery at the same paced rate": div(b_paced, h_paced),
    }


def _row(label: str, s: Any, scale: float = 1.0, digits: int = 0, unit: str = "") -> str:
    if not isinstance(s, dict) or s.get("median") is None:
        return f"{label:<58} {'-':>10} {'':>10} {'':>10} {unit}"
    f = lambda v: f"{v * scale:,.{digits}f}"  # noqa: E731
    return f"{label:<58} {f(s['median']):>10} {f(s['min']):>10} {f(s['max']):>10} {unit}"


def table_lines(out: dict[str, Any]) -> list[str]:
    L: list[str] = []
    if out.get("error"):
        L.append(f"MTA paths: ERROR {out['error'][:80]}")
    for path, d in out.get("paths", {}).items():
        if "error" in d:
            L.append(f"{LABEL[path]}: ERROR {d['error'][:60]}")
            continue
        L.append(_row(LABEL[path] + f" (N={d['reps'][0]['n'] if d.get('reps') else '?'})",
                      d.get("deliveries_per_s"), unit="deliveries/s"))
        with_prog = " (with the program)" if path == "pipe" else ""
        L.append(_row("  CPU/delivery Postfix's processes" + with_prog,
                      d.get("postfix_cpu_s_per_delivery"), 1e3, 3, "ms"))
        procs = sorted(((k, _med(v) or 0.0) for k, v in d.get("postfix_by_process", {}).items()),
                       key=lambda kv: -kv[1])
        L.append("    by daemon, ms: " + ", ".join(f"{k} {v * 1e3:.2f}" for k, v in procs if abs(v) > 5e-6))
        for comp, s in d.get("cpu_s_per_delivery", {}).items():
            if comp != "postfix" and (_med(s) or 0) > 0.000005:
                L.append(_row(f"    {comp}", s, 1e3, 3, "ms"))
        if path != "pipe":
            L.append(_row("  CPU/delivery mailexec's processes (total)",
                          d.get("mailexec_cpu_s_per_delivery"), 1e3, 3, "ms"))
        L.append(_row("  CPU/delivery machine (everything, foreign load too)",
                      d.get("machine_cpu_s_per_delivery"), 1e3, 3, "ms"))
        lat = out.get("latency", {}).get(path)
        if lat and "error" not in lat:
            paced = lat["reps"][0]["offered_rate"]
            L.append(_row(f"  latency submit->program exit p99 (paced {paced:.0f}/s)",
                          lat.get("p99"), 1, 1, "ms"))
            L.append(_row("  latency p50", lat.get("p50"), 1, 1, "ms"))
            if path != "pipe":
                L.append(_row("  CPU/delivery mailexec's processes, paced",
                              lat.get("mailexec_cpu_s_per_delivery"), 1e3, 3, "ms"))
    ctl = out.get("latency", {}).get("http_control")
    if ctl and ctl.get("reps"):
        paced = ctl["reps"][0]["offered_rate"]
        L.append(f"control: mailexec alone, HTTP POST paced {paced:.0f}/s (as (b)'s paced run), 20 in flight")
        L.append(_row("  latency submit->program exit p99", ctl.get("p99"), 1, 1, "ms"))
        L.append(_row("  latency p50", ctl.get("p50"), 1, 1, "ms"))
        L.append(_row("  CPU/delivery mailexec's processes, paced",
                      ctl.get("mailexec_cpu_s_per_delivery"), 1e3, 3, "ms"))
    names = {"lmtp_reuse": "ingest alone, LMTP (smtp-source -L -d, 20 sessions)",
             "lmtp_reuse_s64": "ingest alone, LMTP (smtp-source -L -d, 64 sessions)",
             "lmtp_connect": "ingest alone, LMTP, a connection per message",
             "http_c64": "ingest alone, HTTP (loadgen, 64 in flight)",
             "http_c20": "ingest alone, HTTP (loadgen, 20 in flight)"}
    for key, label in names.items():
        d = out.get("ingest_alone", {}).get(key)
        if not d or not d.get("reps"):
            continue
        L.append(_row(label, d.get("accepted_per_s"), unit="msgs/s"))
        for comp in ("ingest", "policy", "pg_backends", "rabbitmq", "client"):
            s = d["cpu_s_per_message"].get(comp)
            if (_med(s) or 0) > 0.000005:
                L.append(_row(f"  CPU/message {comp}", s, 1e3, 3, "ms"))
    for k, v in out.get("verdicts", {}).items():
        L.append(f"{k:<70} {'-' if v is None else f'{v:.2f}'}")
    return L


# ---------------------------------------------------------------- the part


def submit_version() -> str:
    r = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h %s", "--",
                        "mailexec/submit.py", "mailexec/entry.py"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--",
                            "mailexec/submit.py", "mailexec/entry.py"], capture_output=True, text=True)
    return r.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")


def run(cfg: Config, uid: int, gid: int) -> dict[str, Any]:
    missing = ensure_postfix()
    if missing:
        raise RuntimeError(missing)
    scen = wanted()
    paths = [x for x in PATHS if f"mta_{x}" in scen]
    n_submit = env_int("BENCH_N_SUBMIT", min(cfg.n, 2000))
    out: dict[str, Any] = {"n": cfg.n, "n_submit": n_submit, "submit": submit_version(),
                           "paths": {}, "latency": {}, "ingest_alone": {}}
    if not scen:
        return out
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        raise RuntimeError(f"no {SYSTEM_PYTHON} for the pipe user (the venv's python is root's)")
    wd = Workdir("mxbench-mta.")
    p = Pipeline(cfg, uid, gid, wd)
    lmtp_port = free_port()
    p.env["MAILEXEC_LMTP_PORT"] = str(lmtp_port)
    pf: dict[str, PrivatePostfix] = {}
    try:
        p.create()
        p.start()
        p.load_data()
        p.add_account(RCPT)
        submit = launcher(wd.path, p.services["ingest"].url, p.tokens["MAILEXEC_INGEST_TOKEN"], uid, gid)
        pf = instances(wd.path, p, lmtp_port, submit)
        for name, inst in pf.items():
            inst.start()
            say(f"private postfix for {LABEL[name]} on 127.0.0.1:{inst.port}")
        say(f"mailexec up (LMTP on {lmtp_port}); mailexec submit: {out['submit']}")
        for path in paths:  # warm-up: processes forked, caches and the submit pycache filled
            w = min(200, cfg.n)
            p.reset()
            subprocess.run(source_cmd(pf[path].port, w, SESSIONS), capture_output=True, check=False)
            if p.counter.wait_for(w, 120) is None:
                raise RuntimeError(f"warm-up of {path}: {p.counter.poll()}/{w} program runs\n"
                                   f"{pf[path].log_tail()}\n" + "\n".join(
                                       s.log_tail() for s in p.services.values()))
            _wait_drained(p, pf[path], w, path != "pipe")
        reps: dict[str, list[dict[str, Any]]] = {x: [] for x in paths}
        for rep in range(cfg.reps):
            for path in paths:
                n = n_submit if path == "submit" else cfg.n
                try:
                    r = run_path(p, pf[path], path, n, cfg)
                except Exception as exc:
                    say(f"{path} rep {rep + 1} failed: {exc!r}"[:2000])
                    continue
                reps[path].append(r)
                cpu = ", ".join(f"{k} {v * 1e3:.3f}" for k, v in r["cpu_s_per_delivery"].items()
                                if v > 0.000005)
                mx = r["mailexec_cpu_s_per_delivery"]
                say(f"{LABEL[path]} rep {rep + 1}: {r['deliveries_per_s']:.0f} deliveries/s; "
                    f"CPU ms/delivery: {cpu}; Postfix {r['postfix_cpu_s_per_delivery'] * 1e3:.3f}"
                    + (f", mailexec {mx * 1e3:.3f}" if mx is not None else "")
                    + f"; machine {r['machine_cpu_s_per_delivery'] * 1e3:.3f}; load {r['loadavg']:.1f}"
                    + ("" if r["split_exact"] else " (a pipe process exited: split approximate)"))
        for path in paths:
            out["paths"][path] = _agg(reps[path]) if reps[path] else {"error": "no repetition finished"}
        if "lmtp" in paths and os.environ.get("BENCH_PROFILE", "") not in ("", "0"):
            out["profiles"] = profile_lmtp_path(p, pf["lmtp"], cfg)
        if "mta_latency" in scen:
            for path in paths:
                rate = _med(out["paths"][path].get("deliveries_per_s"))
                if not rate:
                    continue
                lats = []
                for _rep in range(cfg.reps):
                    try:
                        r = run_latency(p, pf[path], path, rate / 2, cfg)
                    except Exception as exc:
                        say(f"latency {path} failed: {exc!r}"[:2000])
                        continue
                    lats.append(r)
                    lat = r["latency_ms"]
                    mx = r["mailexec_cpu_s_per_delivery"]
                    say(f"{LABEL[path]} paced {r['offered_rate']:.0f}/s: {r['measured']}/{r['n']} measured, "
                        f"latency p50/p95/p99 {lat['p50']:.1f}/{lat['p95']:.1f}/{lat['p99']:.1f} ms; "
                        f"CPU ms/delivery Postfix {r['postfix_cpu_s_per_delivery'] * 1e3:.3f}"
                        + (f", mailexec {mx * 1e3:.3f}" if mx is not None else ""))
                out["latency"][path] = _agg_paced(lats)
            b_rate = _med(out["paths"].get("lmtp", {}).get("deliveries_per_s"))
            if b_rate:
                ctl = []
                for _rep in range(cfg.reps):
                    try:
                        ctl.append(http_paced(p, b_rate / 2, cfg))
                    except Exception as exc:
                        say(f"HTTP control failed: {exc!r}"[:2000])
                        continue
                    r, lat = ctl[-1], ctl[-1]["latency_ms"]
                    say(f"control: HTTP POST paced {r['offered_rate']:.0f}/s: mailexec CPU "
                        f"{r['mailexec_cpu_s_per_delivery'] * 1e3:.3f} ms/delivery, latency p50/p95/p99 "
                        f"{lat['p50']:.1f}/{lat['p95']:.1f}/{lat['p99']:.1f} ms")
                out["latency"]["http_control"] = _agg_paced(ctl)
        if "lmtp_vs_http" in scen:
            out["ingest_alone"] = compare_alone(p, cfg)
    except Exception as exc:
        say(f"MTA paths failed: {exc!r}"[:3000])
        out["error"] = repr(exc)[:4000]
    finally:
        for inst in pf.values():
            inst.stop()
        keep = os.environ.get("BENCH_KEEP_LOGS")
        if keep:
            shutil.copytree(p.log_dir, keep, dirs_exist_ok=True)
            for name, inst in pf.items():
                (Path(keep) / f"maillog-{name}").write_text(inst.log())
        p.stop()
        try:
            p.drop()
        except Exception as exc:
            say(f"dropping the bench database/vhost: {exc!r}")
        wd.cleanup()
    out["verdicts"] = verdicts(out)
    return out


def compare_alone(p: Pipeline, cfg: Config) -> dict[str, Any]:
    """LMTP vs HTTP into one ingest process, executor stopped, interleaved per repetition."""
    runs = {
        "lmtp_reuse": lambda label: lmtp_alone(p, cfg, reuse=True),
        "lmtp_reuse_s64": lambda label: lmtp_alone(p, cfg, reuse=True, sessions=cfg.concurrency),
        "lmtp_connect": lambda label: lmtp_alone(p, cfg, reuse=False),
        "http_c64": lambda label: ingest_only(p, cfg, label),
        "http_c20": lambda label: ingest_only(p, replace(cfg, concurrency=SESSIONS), label),
    }
    reps: dict[str, list[dict[str, Any]]] = {k: [] for k in runs}
    for k, fn in runs.items():  # warm-up
        fn(f"warm-{k}")
    for rep in range(cfg.reps):
        for k, fn in runs.items():
            r = fn(f"{k}-{rep}")
            reps[k].append(r)
            c = r["cpu_s_per_message"]
            say(f"ingest alone {k} rep {rep + 1}: {r['accepted']} accepted, "
                f"{r['accepted_per_s']:.0f} msgs/s, CPU ms/msg ingest {c['ingest'] * 1e3:.3f}, "
                f"policy {c['policy'] * 1e3:.3f}, "
                f"pg {c['pg_backends'] * 1e3:.3f}, rabbitmq {c['rabbitmq'] * 1e3:.3f}, "
                f"client {c['client'] * 1e3:.3f}; load {r['loadavg']:.1f}")
    out = {k: _agg_alone(v) for k, v in reps.items()}
    if os.environ.get("BENCH_PROFILE", "") not in ("", "0"):
        out["profiles"] = profile_alone(p, cfg, runs)
    return out


def profile_lmtp_path(p: Pipeline, inst: PrivatePostfix, cfg: Config) -> dict[str, Any]:
    """py-spy on mailexec's services during one extra (b) run (not counted)."""
    pids = {f"mta_lmtp_{k}": p.services[k].pid for k in ("ingest", "executor")}
    procs = profiling.start(pids)
    if not procs:
        return {}
    time.sleep(1.0)
    try:
        r = run_path(p, inst, "lmtp", cfg.n, cfg)
        say(f"profiled (b) run: {r['deliveries_per_s']:.0f} deliveries/s under py-spy")
    finally:
        profiling.stop(procs)
    return {k: profiling.summarize(profiling.OUT / f"{k}.txt") for k in pids
            if (profiling.OUT / f"{k}.txt").exists()}


def profile_alone(p: Pipeline, cfg: Config, runs: dict[str, Any]) -> dict[str, Any]:
    """py-spy on the ingest process during one extra LMTP run and one extra HTTP run."""
    res: dict[str, Any] = {}
    for key in ("lmtp_reuse", "http_c64"):
        procs = profiling.start({f"ingest_{key}": p.services["ingest"].pid})
        if not procs:
            return res
        time.sleep(1.0)
        try:
            runs[key](f"profile-{key}")
        finally:
            profiling.stop(procs)
        f = profiling.OUT / f"ingest_{key}.txt"
        if f.exists():
            res[key] = profiling.summarize(f)
    return res
