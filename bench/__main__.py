"""`python -m bench` (what `make bench` runs): the raw spawn limit, Postfix pipe(8),
mailexec end to end and the paths MTAs use (Postfix → pipe/lmtp/submit → mailexec) on this
machine, in one run; prints a table, the ratios, and writes bench/results/latest.json. See
bench/README.md.

Environment: BENCH_N (5000), BENCH_N_LARGE (300), BENCH_N_SUBMIT (min(N, 2000)), BENCH_REPS
(3), BENCH_QUICK=1 (N=500, N_LARGE=50, 1 rep), BENCH_CONCURRENCY (64),
BENCH_ONLY=raw,postfix,mailexec,mta,
BENCH_SCENARIOS=1k_x1,1k_x10,1m_x1,latency_half_peak,ingest_only_1k,mta_pipe,mta_lmtp,
mta_submit,mta_latency,lmtp_vs_http,
BENCH_EXECUTORS=k, BENCH_BODY=base64|x, BENCH_PROFILE=1 (py-spy the services during one
extra 1 KiB run), BENCH_KEEP_LOGS=DIR.
Never exits non-zero because of a figure."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any

from bench import mailexec_bench, mta_bench, postfix_bench, profiling, raw_bench, scaleout
from bench.common import BENCH_DIR, ROOT, Config, ensure_user, loadavg, say


def _med(d: Any) -> float | None:
    return d.get("median") if isinstance(d, dict) else None


def _git() -> str:
    r = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                       capture_output=True, text=True)
    return r.stdout.strip()


def profile_hook(cfg: Config):  # type: ignore[no-untyped-def]
    def hook(p: mailexec_bench.Pipeline) -> None:
        if os.environ.get("BENCH_PROFILE", "") in ("", "0"):
            return
        say("profiling one extra 1 KiB × 1 run with py-spy (not counted in the figures)")
        procs = profiling.start(p.service_pids())
        time.sleep(1.0)
        try:
            r = p.run_once("profile", cfg.n, 1024, 1, cfg.concurrency)
            say(f"profiled run: {r['deliveries_per_s']:.0f} deliveries/s under py-spy")
        finally:
            profiling.stop(procs)
    return hook


def fmt(v: float | None, scale: float = 1.0, digits: int = 0) -> str:
    if v is None:
        return "-"
    return f"{v * scale:,.{digits}f}"


def row(label: str, s: Any, scale: float = 1.0, digits: int = 0, unit: str = "") -> str:
    if not isinstance(s, dict) or s.get("median") is None:
        return f"{label:<58} {'-':>10} {'':>10} {'':>10} {unit}"
    return (f"{label:<58} {fmt(s['median'], scale, digits):>10} {fmt(s['min'], scale, digits):>10} "
            f"{fmt(s['max'], scale, digits):>10} {unit}")


def table(res: dict[str, Any]) -> str:
    L = [f"{'figure':<58} {'median':>10} {'min':>10} {'max':>10}", "-" * 100]
    raw = res.get("raw", {})
    for w in (1, 2):
        d = raw.get(f"workers_{w}", {})
        L.append(row(f"raw spawn limit, {w} worker(s)", d.get("runs_per_s"), unit="runs/s"))
        L.append(row(f"raw spawn, CPU per run ({w} worker(s))", d.get("cpu_s_per_run"), 1e3, 3, "ms"))
    pf = res.get("postfix", {})
    L.append(row("Postfix pipe(8), 1 KiB x 1 (smtp-source)", pf.get("deliveries_per_s"), unit="deliveries/s"))
    L.append(row("Postfix CPU per delivery (master's tree)", pf.get("cpu_s_per_delivery"), 1e3, 3, "ms"))
    pfl = pf.get("large", {})
    L.append(row("Postfix pipe(8), 1 MiB x 1 (smtp-source)", pfl.get("deliveries_per_s"),
                 unit="deliveries/s"))
    L.append(row("Postfix CPU per 1 MiB delivery (master's tree)", pfl.get("cpu_s_per_delivery"),
                 1e3, 3, "ms"))
    mx = res.get("mailexec", {}).get("scenarios", {})
    names = {"1k_x1": "1 KiB x 1", "1k_x10": "1 KiB x 10 rcpts", "1m_x1": "1 MiB x 1",
             "latency_half_peak": "half peak rate (paced)"}
    for key, label in names.items():
        d = mx.get(key)
        if not d:
            continue
        if "error" in d:
            L.append(f"mailexec {label}: ERROR {d['error'][:60]}")
            continue
        L.append(row(f"mailexec {label}", d.get("deliveries_per_s"), unit="deliveries/s"))
        if key == "latency_half_peak" and d.get("reps"):
            L.append(f"  offered {d['reps'][0].get('offered_rate', 0):.0f} msgs/s, open loop")
        for lk, lname in (("latency_ms", "submit"), ("latency_ms_db", "db")):
            lat = d.get(lk)
            if lat and key == "latency_half_peak":  # closed-loop runs measure the backlog
                for pctl in ("p50", "p95", "p99"):
                    L.append(row(f"  latency {lname}->program exit {pctl}", lat.get(pctl), 1, 1, "ms"))
        cpu = d.get("cpu_s_per_delivery", {})
        total = 0.0
        for comp, s in cpu.items():
            if _med(s) and _med(s) > 0.000005:
                L.append(row(f"  CPU/delivery {comp}", s, 1e3, 3, "ms"))
                if comp not in ("pg_background", "executor_self"):
                    total += _med(s)
        label = "  CPU/delivery total (services+pg backends+rabbitmq)"
        L.append(f"{label:<58} {total * 1e3:>10.3f} {'':>10} {'':>10} ms")
        rss = d.get("peak_rss_kib", {})
        def mib(v: dict[str, Any]) -> str:
            tree = v.get("tree_max")
            extra = f" (tree max {tree / 1024:.0f})" if tree and tree != v["main"] else ""
            return f"{v['main'] / 1024:.0f}{extra}"

        L.append("  peak RSS MiB: " + ", ".join(
            f"{k} {mib(v)}" for k, v in rss.items() if v.get("main")))
    d = mx.get("ingest_only_1k")
    if d and "error" not in d:
        L.append(row("mailexec ingest alone, 1 KiB", d.get("accepted_per_s"), unit="msgs/s"))
        for comp, s in d.get("cpu_s_per_message", {}).items():
            if _med(s) and _med(s) > 0.000005 and comp not in ("machine",):
                L.append(row(f"  CPU/message {comp}", s, 1e3, 3, "ms"))
    if res.get("mta"):
        L.append("-" * 100)
        L.extend(mta_bench.table_lines(res["mta"]))
    L.append("-" * 100)
    for k, v in res.get("ratios", {}).items():
        L.append(f"{k:<70} {v if v is None else f'{v:.2f}'}")
    return "\n".join(L)


def ratios(res: dict[str, Any]) -> dict[str, float | None]:
    mx = res.get("mailexec", {}).get("scenarios", {}).get("1k_x1", {})
    mx_rate = _med(mx.get("deliveries_per_s"))
    pf_rate = _med(res.get("postfix", {}).get("deliveries_per_s"))
    raw1 = _med(res.get("raw", {}).get("workers_1", {}).get("runs_per_s"))
    raw2 = _med(res.get("raw", {}).get("workers_2", {}).get("runs_per_s"))
    raw_cpu = _med(res.get("raw", {}).get("workers_2", {}).get("cpu_s_per_run"))
    pf_cpu = _med(res.get("postfix", {}).get("cpu_s_per_delivery"))
    mx_cpu = None
    if mx.get("cpu_s_per_delivery"):
        mx_cpu = sum(_med(s) or 0.0 for k, s in mx["cpu_s_per_delivery"].items()
                     if k not in ("pg_background", "executor_self"))
    div = lambda a, b: (a / b) if a and b else None  # noqa: E731
    ncpu = os.cpu_count() or 1
    return {
        "mailexec/Postfix deliveries/s (1 KiB x 1)": div(mx_rate, pf_rate),
        # the "tight loop in one process", and the same loop on every core
        "mailexec/raw-1-worker deliveries/s (1 KiB x 1)": div(mx_rate, raw1),
        "mailexec/raw-2-workers deliveries/s (1 KiB x 1)": div(mx_rate, raw2),
        "mailexec/Postfix CPU per delivery": div(mx_cpu, pf_cpu),
        "mailexec/raw CPU per delivery": div(mx_cpu, raw_cpu),
        f"CPU-bound ceiling on {ncpu} idle cores, mailexec (deliveries/s)": div(ncpu, mx_cpu),
        f"CPU-bound ceiling on {ncpu} idle cores, Postfix (deliveries/s)": div(ncpu, pf_cpu),
        f"CPU-bound ceiling on {ncpu} idle cores, raw loop (runs/s)": div(ncpu, raw_cpu),
    }


def main() -> int:
    cfg = Config.from_env()
    if os.geteuid() != 0:
        say("must run as root (setuid in the raw loop, Postfix, the executor)")
        return 77
    uid, gid = ensure_user()
    res: dict[str, Any] = {
        "meta": {
            "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "git": _git(), "host": platform.node(), "cpus": os.cpu_count(),
            "kernel": platform.release(), "python": sys.version.split()[0],
            "config": {"n": cfg.n, "n_large": cfg.n_large, "reps": cfg.reps,
                       "concurrency": cfg.concurrency, "only": sorted(cfg.only)},
            "bench_uid": uid, "loadavg_start": loadavg(),
        }
    }
    say(f"N={cfg.n} N_LARGE={cfg.n_large} reps={cfg.reps}; load average {loadavg():.1f} "
        f"on {os.cpu_count()} CPUs (other load on this machine lowers every rate; CPU per "
        "delivery is robust)")
    parts = (("raw", lambda: raw_bench.run(cfg, uid, gid)),
             ("postfix", lambda: postfix_bench.run(cfg, uid, gid)),
             ("mailexec", lambda: mailexec_bench.run(cfg, uid, gid, profile_hook(cfg))),
             ("mta", lambda: mta_bench.run(cfg, uid, gid)))
    for name, fn in parts:
        if not cfg.wants(name):
            continue
        say(f"--- {name}")
        try:
            res[name] = fn()
        except Exception as exc:  # never fail on a number (nor on a missing part)
            say(f"{name} failed: {exc!r}")
            res[name] = {"error": repr(exc)[:4000]}
    res["ratios"] = ratios(res)
    if os.environ.get("BENCH_PROFILE", "") not in ("", "0"):
        res["profiles"] = profiling.summaries()
    res["scaleout"] = scaleout.derive(res)
    res["meta"]["loadavg_end"] = loadavg()
    res["meta"]["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    out = BENCH_DIR / "results" / "latest.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str) + "\n")
    print()
    print(table(res))
    if res.get("scaleout"):
        print("\nscale-out (bench/scaleout.py):")
        print(scaleout.render(res["scaleout"]))
    if res.get("profiles"):
        print()
        print(profiling.render(res["profiles"]))
    print(f"\nwritten {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
