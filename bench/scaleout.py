"""Scale-out derivation from measured CPU seconds per delivery (bench/README.md explains).

    python -m bench.scaleout [bench/results/latest.json]

For each target rate R (deliveries/s) and component c with CPU cost k_c (s/delivery,
median of the 1 KiB × 1 runs — the worst case per delivery, one message per delivery):
  cores_c    = R · k_c / U          (U = 0.6: planned utilisation, headroom for bursts)
  replicas_c = ceil(R · k_py / U)   for the Python services, where k_py is the CPU of the
               service's own single-threaded process (one asyncio loop can't use more
               than one core): ingest, notifier, policy = all of it; executor = its own
               process only (executor_self) — the launchers and programs it forks run
               on other cores, so an executor pod requests cores_executor / replicas.
At least 2 replicas of everything for availability.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from bench.common import BENCH_DIR

U = 0.6
RATES = (100, 1_000, 10_000)


def _k(cpu: dict[str, Any], name: str) -> float:
    v = cpu.get(name)
    return float(v["median"]) if isinstance(v, dict) and v.get("median") is not None else 0.0


def derive(res: dict[str, Any]) -> dict[str, Any]:
    sc = res.get("mailexec", {}).get("scenarios", {}).get("1k_x1", {})
    cpu = sc.get("cpu_s_per_delivery", {})
    if not cpu:
        return {}
    k = {c: _k(cpu, c) for c in ("ingest", "executor", "executor_self", "notifier", "policy",
                                  "pg_backends", "pg_background", "rabbitmq")}
    wal = sc.get("wal_bytes_per_delivery", {})
    wal_b = wal.get("median") if isinstance(wal, dict) else None
    out: dict[str, Any] = {"k_ms": {c: v * 1e3 for c, v in k.items()}, "utilisation": U, "rates": {}}
    for r in RATES:
        row = {}
        for svc, kpy in (("ingest", k["ingest"]), ("executor", k["executor_self"] or k["executor"]),
                         ("notifier", k["notifier"]), ("policy", k["policy"])):
            row[f"{svc}_replicas"] = max(2, math.ceil(r * kpy / U))
        row["executor_cores"] = r * k["executor"] / U
        row["executor_cores_per_replica"] = row["executor_cores"] / row["executor_replicas"]
        row["ingest_cores"] = r * k["ingest"] / U
        row["rabbitmq_cores"] = r * k["rabbitmq"] / U
        # at most one job + one event per delivery (each published, delivered, acked)
        row["rabbitmq_msgs_per_s"] = r * 2
        row["postgres_cores"] = r * (k["pg_backends"] + k["pg_background"]) / U
        row["postgres_wal_mb_per_s"] = r * wal_b / 1e6 if wal_b else None
        row["total_cores"] = sum(r * k[c] for c in ("ingest", "executor", "notifier", "policy",
                                                     "pg_backends", "pg_background", "rabbitmq")) / U
        out["rates"][r] = row
    return out


def render(d: dict[str, Any]) -> str:
    if not d:
        return "(no 1 KiB x 1 figures to derive from)"
    k = d["k_ms"]
    lines = ["CPU ms/delivery used: " + ", ".join(f"{c} {v:.3f}" for c, v in k.items()),
             f"planned utilisation U = {d['utilisation']}",
             f"{'deliveries/s':>12} {'ingest':>7} {'executor':>9} {'exec cores':>10} "
             f"{'notifier':>8} {'policy':>6} {'RabbitMQ cores':>14} {'RMQ msgs/s':>10} "
             f"{'PG cores':>8} {'WAL MB/s':>8} {'total cores':>11}"]
    for r, row in d["rates"].items():
        wal = row["postgres_wal_mb_per_s"]
        lines.append(
            f"{int(r):>12,} {row['ingest_replicas']:>7} {row['executor_replicas']:>9} "
            f"{row['executor_cores']:>10.1f} {row['notifier_replicas']:>8} "
            f"{row['policy_replicas']:>6} {row['rabbitmq_cores']:>14.1f} "
            f"{row['rabbitmq_msgs_per_s']:>10,} {row['postgres_cores']:>8.1f} "
            f"{'-' if wal is None else f'{wal:.1f}':>8} {row['total_cores']:>11.1f}")
    return "\n".join(lines)


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else BENCH_DIR / "results" / "latest.json"
    print(render(derive(json.loads(path.read_text()))))
