"""Part 3: mailexec end to end — real policy, ingest, executor and notifier processes
(`python -m mailexec serve X`) against a fresh database and vhost `mailexec_bench`,
the trivial program registered as a trusted program, accounts owned by the bench uid,
messages POSTed by bench/loadgen.py; a run ends when every recipient is `delivered`
in mail.recipients."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.common import (
    ROOT,
    Config,
    Counter,
    Workdir,
    build_program,
    cmdline,
    comm,
    free_port,
    loadavg,
    machine_cpu_s,
    percentiles,
    pids_cpu_s,
    say,
    self_cpu_s,
    summary,
    tree_cpu_s,
    tree_vm_hwm_kib,
    vm_hwm_kib,
)
from bench.release import release

DB = os.environ.get("BENCH_DB", "mailexec_bench")
VHOST = os.environ.get("BENCH_VHOST", "mailexec_bench")
PG_ADMIN = os.environ.get("MAILEXEC_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_BENCH = PG_ADMIN.rsplit("/", 1)[0] + f"/{DB}"
TRUSTED = Path(os.environ.get("BENCH_TRUSTED_DIR", "/var/lib/mailexec-bench/trusted"))
SERVICES = ("policy", "ingest", "executor", "notifier")
PORT_VAR = {
    "ingest": "MAILEXEC_INGEST_PORT",
    "policy": "MAILEXEC_POLICY_PORT",
    "notifier": "MAILEXEC_NOTIFIER_PORT",
    "executor": "MAILEXEC_EXECUTOR_METRICS_PORT",
}
N_ACCOUNTS = 10
EXECUTORS = max(1, int(os.environ.get("BENCH_EXECUTORS", "1") or 1))


PG_BACKGROUND = ("walwriter", "checkpointer", "background writer", "autovacuum launcher",
                 "logical replication launcher", "stats collector")


def pg(sql: str, *args: Any, db: str = PG_BENCH, fetch: bool = False) -> Any:
    async def go() -> Any:
        conn = await asyncpg.connect(db)
        try:
            if fetch:
                return await conn.fetch(sql, *args)
            return await conn.execute(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(go())


def rabbitmqctl(*args: str, check: bool = True) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=check, capture_output=True, timeout=180)


class Service:
    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.url = f"http://127.0.0.1:{env[PORT_VAR[name]]}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> Service:
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailexec", "serve", self.name],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout}s\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def infra_pids() -> dict[str, list[int]]:
    """PostgreSQL backends of the bench database, PostgreSQL's shared background
    processes, and the RabbitMQ server (beam.smp running `rabbit boot`)."""
    out: dict[str, list[int]] = {"pg_backends": [], "pg_background": [], "rabbitmq": []}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        pid = int(d)
        c = cmdline(pid)
        if c.startswith("postgres: "):
            if f" {DB} " in c:
                out["pg_backends"].append(pid)
            elif any(k in c for k in PG_BACKGROUND):
                out["pg_background"].append(pid)
        elif comm(pid) == "beam.smp" and "rabbit boot" in c:
            out["rabbitmq"].append(pid)
    return out


class Pipeline:
    def __init__(self, cfg: Config, uid: int, gid: int, wd: Workdir) -> None:
        self.cfg = cfg
        self.uid, self.gid = uid, gid
        self.wd = wd
        self.log_dir = wd.path / "logs"
        self.log_dir.mkdir()
        self.counter_path = wd.counter("runs", uid, gid)
        self.prog = build_program(wd.path, self.counter_path)
        self.counter = Counter(self.counter_path)
        self._uncounted_since: float | None = None  # see never_counted()
        self.home = wd.path / "home"
        self.home.mkdir()
        os.chown(self.home, uid, gid)
        self.tokens = {
            "MAILEXEC_ADMIN_TOKEN": "bench-admin-" + secrets.token_hex(12),
            "MAILEXEC_INGEST_TOKEN": "bench-mta-" + secrets.token_hex(12),
            "MAILEXEC_SERVICE_TOKEN": "bench-service-" + secrets.token_hex(12),
        }
        env = dict(os.environ)
        env.update(self.tokens)
        env.update({
            "MAILEXEC_DATABASE_URL": "postgresql+asyncpg://" + PG_BENCH.split("://", 1)[1],
            "MAILEXEC_AMQP_URL": f"amqp://guest:guest@127.0.0.1:5672/{VHOST}",
            "MAILEXEC_TRUSTED_DIR": str(TRUSTED),
            "MAILEXEC_REPORTING_MTA": "bench.localdomain",
            "MAILEXEC_SMTP_URL": f"smtp://127.0.0.1:{free_port()}",
            "MAILEXEC_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "warning"),
            # off unless a part asks for it (bench/mta_bench.py): ingest binds the LMTP port
            # with SO_REUSEPORT, so on the default 8024 the bench's ingest would silently
            # share the connections of another ingest on this machine (make run, tests)
            "MAILEXEC_LMTP_PORT": "0",
        })
        for var in PORT_VAR.values():
            env[var] = str(free_port())
        env["MAILEXEC_POLICY_URL"] = f"http://127.0.0.1:{env['MAILEXEC_POLICY_PORT']}"
        env["MAILEXEC_INGEST_URL"] = f"http://127.0.0.1:{env['MAILEXEC_INGEST_PORT']}"
        env["MAILEXEC_NOTIFIER_URL"] = f"http://127.0.0.1:{env['MAILEXEC_NOTIFIER_PORT']}"
        self.env = env
        self.services: dict[str, Service] = {}
        self._backend_cpu: dict[int, float] = {}  # PostgreSQL backend pid → CPU s when last seen

    # ---------------------------------------------------------------- lifecycle

    def create(self) -> None:
        say(f"fresh database {DB} and vhost {VHOST}")
        pg(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)', db=PG_ADMIN)
        pg(f'CREATE DATABASE "{DB}"', db=PG_ADMIN)
        rabbitmqctl("delete_vhost", VHOST, check=False)
        rabbitmqctl("add_vhost", VHOST)
        rabbitmqctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
        subprocess.run([sys.executable, "-m", "mailexec", "migrate"], env=self.env, cwd=ROOT,
                       check=True, capture_output=True)
        TRUSTED.mkdir(parents=True, exist_ok=True)
        for p in (TRUSTED, TRUSTED.parent):
            os.chown(p, 0, 0)
            p.chmod(0o755)

    def start(self, *names: str) -> None:
        for name in names or SERVICES:
            self.services[name] = Service(name, dict(self.env), self.log_dir).start()
            if name == "executor":
                # BENCH_EXECUTORS=k: k executor processes (k event loops) on this machine
                for extra in range(2, EXECUTORS + 1):
                    env = dict(self.env, MAILEXEC_EXECUTOR_METRICS_PORT=str(free_port()))
                    svc = Service("executor", env, self.log_dir)
                    svc.log_path = self.log_dir / f"executor{extra}.log"
                    self.services[f"executor{extra}"] = svc.start()

    def stop(self, *names: str) -> None:
        if "executor" in names:
            names = names + tuple(k for k in self.services if k.startswith("executor") and k != "executor")
        for name in names or reversed(list(self.services)):
            svc = self.services.pop(name, None)
            if svc:
                svc.stop()

    def restart_fresh(self) -> None:
        self.stop()
        rabbitmqctl("delete_vhost", VHOST, check=False)
        rabbitmqctl("add_vhost", VHOST)
        rabbitmqctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
        self.start()

    def drop(self) -> None:
        try:
            pg(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)', db=PG_ADMIN)
        finally:
            rabbitmqctl("delete_vhost", VHOST, check=False)

    def load_data(self) -> None:
        h = {"Authorization": f"Bearer {self.tokens['MAILEXEC_ADMIN_TOKEN']}"}
        with httpx.Client(base_url=self.env["MAILEXEC_POLICY_URL"], headers=h, timeout=30) as c:
            r = c.put("/v1/programs/mxprog", content=self.prog.read_bytes(),
                      headers={"Content-Type": "application/octet-stream"})
            if r.status_code >= 300:
                raise RuntimeError(f"registering the program: {r.status_code} {r.text}")
            for k in range(N_ACCOUNTS):
                self.add_account(f"bench{k}@bench.example", c)
            c.patch("/v1/settings", json={"postmaster": "postmaster@bench.example"}).raise_for_status()

    def add_account(self, address: str, client: httpx.Client | None = None) -> None:
        """An account owned by the bench uid whose one program is mxprog."""
        h = {"Authorization": f"Bearer {self.tokens['MAILEXEC_ADMIN_TOKEN']}"}
        c = client or httpx.Client(base_url=self.env["MAILEXEC_POLICY_URL"], headers=h, timeout=30)
        try:
            c.put(f"/v1/accounts/{address}", json={
                "owner": {"name": "mxbench", "uid": self.uid, "gid": self.gid,
                          "home": str(self.home), "shell": "/bin/sh"},
                "program_delivery": {"enabled": True, "programs": ["mxprog"]},
                "mailbox_delivery": False,
            }).raise_for_status()
        finally:
            if client is None:
                c.close()

    def reset(self) -> None:
        """Empty the mail tables and the counter between runs (the pipeline is idle).
        Truncating ``mail.bodies`` leaves it as a running system's is: since migration
        0011 each ring partition is truncated before its turn, so every body is written
        into a partition emptied a few turns before."""
        pg("TRUNCATE mail.messages, mail.bodies, mail.recipients, mail.program_runs, "
           "notifier.notifications, notifier.seen_events CASCADE")
        self.counter.reset()

    def wal_lsn(self) -> int | None:
        try:
            rows = pg("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint AS b", fetch=True)
            return int(rows[0]["b"])
        except Exception:
            return None

    def never_counted(self, expected: int) -> str | None:
        """Why the program's counter can't reach ``expected`` any more: every recipient is
        final but fewer were delivered (bounced: see the executor's log), or all were
        delivered but the program did not count them (its counter out of its reach)."""
        st = self.states()
        final = st.get("delivered", 0) + st.get("bounced", 0)
        if final < expected:
            return None
        if st.get("bounced", 0):
            row = pg("SELECT status, diagnostic FROM mail.recipients WHERE state = 'bounced' "
                     "LIMIT 1", fetch=True)[0]
            return (f"{st['bounced']} of {expected} recipients bounced, e.g. {row['status']} "
                    f"{row['diagnostic']}")
        # delivered is recorded after the program ran, so its line is written by then; a
        # few seconds of grace for the last lines to be read before calling it hopeless
        seen = self.counter.lines
        if seen >= expected:
            return None
        if self._uncounted_since is None:
            self._uncounted_since = time.monotonic()
        if time.monotonic() - self._uncounted_since < 5:
            return None
        self._uncounted_since = None
        return (f"all {expected} delivered but the program counted only {seen} "
                f"({self.counter_path} out of its reach?)")

    def states(self) -> dict[str, int]:
        rows = pg("SELECT state, count(*) AS n FROM mail.recipients GROUP BY state", fetch=True)
        return {r["state"]: r["n"] for r in rows}

    # ---------------------------------------------------------------- measuring

    def cpu_snapshot(self) -> dict[str, float]:
        snap = {name: tree_cpu_s([svc.pid]) for name, svc in self.services.items()}
        if "executor" in self.services:
            # the executor's own Python process, without the launchers/programs it reaped
            snap["executor_self"] = self_cpu_s(self.services["executor"].pid)
        for k, pids in infra_pids().items():
            if k == "pg_backends":
                # backends come and go with the pools: keep what each one had spent when
                # last seen, so one closing between two snapshots never makes a negative
                self._backend_cpu.update({pid: pids_cpu_s([pid]) for pid in pids})
                snap[k] = sum(self._backend_cpu.values())
            else:
                snap[k] = pids_cpu_s(pids) if k != "rabbitmq" else tree_cpu_s(pids)
        snap["machine"] = machine_cpu_s()
        return snap

    def loadgen(self, n: int, size: int, rcpts: int, prefix: str, conc: int, rate: float = 0.0,
                out: Path | None = None) -> subprocess.Popen[str]:
        cmd = [sys.executable, "-m", "bench.loadgen", "--url", self.services["ingest"].url,
               "-n", str(n), "-c", str(conc), "--size", str(size), "--rcpts", str(rcpts),
               "--prefix", prefix]
        if rate:
            cmd += ["--rate", f"{rate:.3f}"]
        if out:
            cmd += ["--out", str(out)]
        env = dict(os.environ, MAILEXEC_INGEST_TOKEN=self.tokens["MAILEXEC_INGEST_TOKEN"])
        return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)

    def run_once(self, label: str, n: int, size: int, rcpts: int, conc: int,
                 rate: float = 0.0, latency: bool = False) -> dict[str, Any]:
        """POST n messages (rcpts recipients each), wait until all are delivered."""
        self.reset()
        self._uncounted_since = None
        expected = n * rcpts
        timings = self.wd.path / f"timings-{label}.txt"
        wal0 = self.wal_lsn()
        before = self.cpu_snapshot()
        t0 = time.monotonic()
        gen = self.loadgen(n, size, rcpts, label, conc, rate, timings)
        t_prog = self.counter.wait_for(expected, self.cfg.timeout_s, keep=latency, interval=0.05,
                                       hopeless=lambda: self.never_counted(expected))
        gen_out, _ = gen.communicate(timeout=self.cfg.timeout_s)
        lg = json.loads(gen_out.strip().splitlines()[-1])
        # every recipient delivered in the database (recorded after the program ran)
        deadline = time.monotonic() + 60
        st = self.states()
        while st.get("delivered", 0) < expected and time.monotonic() < deadline:
            if t_prog is None:
                break
            time.sleep(0.05)
            st = self.states()
        t_db = time.monotonic()
        # the delivered bodies' space given back, as ingest and autovacuum would next:
        # in the CPU per delivery, not in the rate's window (bench/release.py)
        released = release(PG_BENCH)
        after = self.cpu_snapshot()
        after["pg_backends"] += released["pg_cpu_s"]
        wal1 = self.wal_lsn()
        delivered = st.get("delivered", 0)
        elapsed = t_db - t0
        res: dict[str, Any] = {
            "messages": n, "recipients_each": rcpts, "size": size, "expected": expected,
            "delivered": delivered, "states": st,
            "elapsed_s": elapsed,
            "deliveries_per_s": delivered / elapsed if elapsed > 0 else None,
            "program_runs_per_s": (expected / (t_prog - t0)) if t_prog else None,
            "ingest_accepted_per_s": lg.get("accepted_per_s"),
            "loadgen": lg,
            "cpu_s_per_delivery": {k: (after[k] - before.get(k, 0.0)) / max(1, delivered)
                                   for k in after if k != "machine"},
            "machine_cpu_s_per_delivery": (after["machine"] - before["machine"]) / max(1, delivered),
            "client_cpu_s_per_delivery": lg["client_cpu_s"] / max(1, delivered),
            "loadavg": loadavg(),
            "release": released,
            # the whole cluster's WAL (other databases' writes included: an upper bound)
            "wal_bytes_per_delivery": ((wal1 - wal0) / max(1, delivered)
                                       if wal0 is not None and wal1 is not None else None),
        }
        if latency:
            self.counter.poll(keep=True)
            submit: dict[str, int] = {}
            ack: dict[str, int] = {}
            for line in timings.read_text().splitlines():
                b, s0, s1 = line.split()
                submit[b] = int(s0)
                ack[b] = int(s1)
            lat = [(ns - submit[i]) / 1e6 for i, ns in self.counter.records if i in submit]
            res["latency_ms"] = percentiles(lat)
            res["latency_ms_from_ack"] = percentiles(
                [(ns - ack[i]) / 1e6 for i, ns in self.counter.records if i in ack])
            rows = pg("SELECT percentile_disc(ARRAY[0.5,0.95,0.99]) WITHIN GROUP (ORDER BY "
                      "extract(epoch FROM r.final_at - m.received_at) * 1000) AS p "
                      "FROM mail.recipients r JOIN mail.messages m ON m.id = r.message_id "
                      "WHERE r.state = 'delivered'", fetch=True)
            p = rows[0]["p"] if rows else None
            if p:
                res["latency_ms_db"] = {"p50": float(p[0]), "p95": float(p[1]), "p99": float(p[2])}
        return res

    def peak_rss_kib(self) -> dict[str, Any]:
        return {name: {"main": vm_hwm_kib(svc.pid), "tree_max": tree_vm_hwm_kib(svc.pid)}
                for name, svc in self.services.items()}

    def service_pids(self) -> dict[str, int]:
        return {name: svc.pid for name, svc in self.services.items()}


def _short(exc: BaseException, limit: int = 400) -> str:
    text = f"{type(exc).__name__}: {exc}"
    lines = [ln for ln in text.splitlines() if ln.strip()]
    text = lines[0] + (" ... " + lines[-1] if len(lines) > 1 else "")
    return text[:limit]


def _rep_line(label: str, r: dict[str, Any]) -> str:
    cpu = r["cpu_s_per_delivery"]
    parts = ", ".join(f"{k} {v * 1e3:.2f}" for k, v in cpu.items() if v > 0.00001)
    lat = r.get("latency_ms")
    latency = (f", latency p50/p95/p99 {lat['p50']:.1f}/{lat['p95']:.1f}/{lat['p99']:.1f} ms"
               if lat and lat.get("p50") is not None else "")
    return (f"{label}: {r['delivered']}/{r['expected']} delivered, {r['deliveries_per_s']:.0f}/s"
            f"{latency}; CPU ms/delivery: {parts}; machine {r['machine_cpu_s_per_delivery'] * 1e3:.2f};"
            f" load {r['loadavg']:.1f}")


def aggregate(reps: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"reps": reps}
    if not reps:
        return out
    for key in ("deliveries_per_s", "program_runs_per_s", "ingest_accepted_per_s",
                "machine_cpu_s_per_delivery", "client_cpu_s_per_delivery", "loadavg",
                "wal_bytes_per_delivery"):
        out[key] = summary([r.get(key) for r in reps])
    comps = sorted({k for r in reps for k in r["cpu_s_per_delivery"]})
    out["cpu_s_per_delivery"] = {c: summary([r["cpu_s_per_delivery"].get(c, 0.0) for r in reps])
                                 for c in comps}
    for key in ("latency_ms", "latency_ms_from_ack", "latency_ms_db"):
        if any(key in r for r in reps):
            out[key] = {p: summary([r[key][p] for r in reps if key in r and r[key].get(p) is not None])
                        for p in ("p50", "p95", "p99")}
    out["failures"] = sum(r["expected"] - r["delivered"] for r in reps)
    return out


SCENARIOS = ("1k_x1", "1k_x10", "1m_x1", "latency_half_peak", "ingest_only_1k")


def run(cfg: Config, uid: int, gid: int, profile_hook: Any = None) -> dict[str, Any]:
    wd = Workdir("mxbench-mailexec.")
    p = Pipeline(cfg, uid, gid, wd)
    out: dict[str, Any] = {"scenarios": {}, "n": cfg.n, "n_large": cfg.n_large, "executors": EXECUTORS}
    wanted = [s for s in SCENARIOS if not os.environ.get("BENCH_SCENARIOS")
              or s in os.environ["BENCH_SCENARIOS"].split(",")]
    try:
        p.create()
        p.start()
        p.load_data()
        say("mailexec pipeline up: " + ", ".join(f"{k} pid {v}" for k, v in p.service_pids().items()))
        # warm-up: connections, caches, the program copied into the trusted dir
        warm = p.run_once("warm", min(300, cfg.n), 1024, 1, cfg.concurrency)
        if warm["delivered"] < warm["expected"]:
            raise RuntimeError(f"warm-up: {warm['delivered']}/{warm['expected']} delivered, states "
                               f"{warm['states']}\n" + "\n".join(s.log_tail() for s in p.services.values()))
        peak = None
        for scen in wanted:
            try:
                # fresh processes (and a fresh, empty vhost) per scenario: peak RSS
                # belongs to that scenario, and a topology changed by a concurrent
                # commit does not clash with the queues of an earlier scenario
                p.restart_fresh()
                p.run_once("warm", min(200, cfg.n), 1024, 1, cfg.concurrency)
                reps: list[dict[str, Any]] = []
                for rep in range(cfg.reps):
                    label = f"{scen}-{rep}"
                    if scen == "1k_x1":
                        r = p.run_once(label, cfg.n, 1024, 1, cfg.concurrency, latency=True)
                    elif scen == "1k_x10":
                        r = p.run_once(label, max(1, cfg.n // 10), 1024, 10, cfg.concurrency)
                    elif scen == "1m_x1":
                        r = p.run_once(label, cfg.n_large, 1 << 20, 1, min(16, cfg.concurrency))
                    elif scen == "latency_half_peak":
                        rate = (peak or 200.0) / 2
                        n = min(cfg.n, max(200, int(rate * 20)))
                        r = p.run_once(label, n, 1024, 1, cfg.concurrency, rate=rate, latency=True)
                        r["offered_rate"] = rate
                    elif scen == "ingest_only_1k":
                        r = ingest_only(p, cfg, label)
                    else:
                        continue
                    say(_rep_line(label, r) if scen != "ingest_only_1k" else
                        f"{label}: {r['accepted']} accepted, {r['accepted_per_s']:.0f} msgs/s, CPU ms/msg "
                        + ", ".join(f"{k} {v * 1e3:.2f}"
                                    for k, v in r["cpu_s_per_message"].items() if v > 0.00001))
                    reps.append(r)
                if scen == "ingest_only_1k":
                    agg: dict[str, Any] = {"reps": reps,
                                           "accepted_per_s": summary([r["accepted_per_s"] for r in reps]),
                                           "cpu_s_per_message": {
                                               c: summary([r["cpu_s_per_message"][c] for r in reps])
                                               for c in reps[0]["cpu_s_per_message"]} if reps else {},
                                           "ack_ms_p50": summary([r["ack_ms_p50"] for r in reps]),
                                           "ack_ms_p99": summary([r["ack_ms_p99"] for r in reps])}
                else:
                    agg = aggregate(reps)
                agg["peak_rss_kib"] = p.peak_rss_kib()
                if scen == "1k_x1":
                    peak = agg["deliveries_per_s"]["median"]
                    if profile_hook:
                        profile_hook(p)
                out["scenarios"][scen] = agg
            except Exception as exc:  # never fail on a number: record and go on
                say(f"scenario {scen} failed: {_short(exc)}")
                out["scenarios"][scen] = {"error": _short(exc, 2000)}
                try:
                    p.restart_fresh()
                except Exception as exc2:
                    say(f"restart failed: {exc2!r}")
    except Exception as exc:
        say(f"mailexec part failed: {_short(exc)}")
        out["error"] = repr(exc)[:4000]
    finally:
        keep = os.environ.get("BENCH_KEEP_LOGS")
        if keep:
            shutil.copytree(p.log_dir, keep, dirs_exist_ok=True)
        p.stop()
        try:
            p.drop()
        except Exception as exc:
            say(f"dropping {DB}/{VHOST}: {exc!r}")
        wd.cleanup()
    return out


def ingest_only(p: Pipeline, cfg: Config, label: str) -> dict[str, Any]:
    """Executor stopped: how fast does ingest accept (durably store + queue) 1 KiB?"""
    if "executor" in p.services:
        p.stop("executor")
    p.reset()
    rabbitmqctl("purge_queue", "-p", VHOST, "deliveries", check=False)
    before = p.cpu_snapshot()
    gen = p.loadgen(cfg.n, 1024, 1, label, cfg.concurrency)
    out, _ = gen.communicate(timeout=cfg.timeout_s)
    after = p.cpu_snapshot()
    lg = json.loads(out.strip().splitlines()[-1])
    acc = max(1, lg["accepted"])
    rabbitmqctl("purge_queue", "-p", VHOST, "deliveries", check=False)
    return {
        "accepted": lg["accepted"], "errors": lg["errors"],
        "accepted_per_s": lg["accepted_per_s"],
        "ack_ms_p50": lg["ack_ms_p50"], "ack_ms_p99": lg["ack_ms_p99"],
        "cpu_s_per_message": {k: (after[k] - before.get(k, 0.0)) / acc for k in after if k != "machine"}
        | {"machine": (after["machine"] - before["machine"]) / acc, "client": lg["client_cpu_s"] / acc},
        "loadavg": loadavg(),
    }
