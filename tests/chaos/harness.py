"""The chaos run: a bounded stream of messages through the whole pipeline while processes
are killed and dependencies cut, then a ledger checked against the database, the
programs' own side-effect files and an SMTP sink.

Topology: its own RabbitMQ vhost and PostgreSQL database (created and dropped here).

- PostgreSQL, ``pg="real"`` (the default, ``CHAOS_PG``): the database lives in a private,
  throwaway cluster (:mod:`testing.pgcluster`, its own port on 127.0.0.1) that the
  services reach directly; the "restart postgresql" fault is a real server restart
  (``pg_ctlcluster … stop -m fast``, 3 s down, ``start``), every client connection is
  terminated by the server. Afterwards every service must answer ``/readyz`` (its
  database check goes through the pool its work uses) and policy must serve a read from
  the database, or the fault is reported as not reconnected. ``pg="proxy"``: the database
  is on the shared server (5432) behind a :class:`CuttableProxy`, and the fault only cuts
  the proxy for 3 s (a simulation: the server never restarts). The shared server is never
  restarted in either mode.
- RabbitMQ, ``rabbit="proxy"`` (the short test): the broker fault cuts a
  :class:`CuttableProxy` for 3 s (simulated); ``rabbit="real"`` (``make chaos``) is a real
  ``rabbitmqctl stop_app; start_app`` of the machine's shared broker.

Messages go, round-robin, to three accounts whose program succeeds, fails (bounce) or
defers once (exit 75, then succeeds on retry), all with NOTIFY=SUCCESS,FAILURE, so every
message must end with exactly one DSN (delivered or failed). An MTA-like submitter
retries every POST that did not get a 202 (connection reset, 5xx) with the same
``Idempotency-Key``, as an MTA keeps a message queued until the next hop accepts it.

Ledger (all must hold): lost = 0 (every 202'd message is final in the database),
DSNs missing = 0, DSNs duplicated = 0, and program runs duplicated ≤ the number of jobs
that were running in killed executors.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from aiosmtpd.controller import Controller

from services.notifier.smtp_outbox import HELD_PER_WORKER, WORKERS
from testing.pgcluster import PrivateCluster, drop_leftovers
from tests.chaos.proxy import CuttableProxy
from tests.conftest import ServiceProcess, free_port

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PG_ADMIN = os.environ.get("MAILEXEC_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
ACCOUNTS = ("succ", "fail", "defer")
# The notifier sends, then marks sent (services/notifier/smtp_outbox.py): a kill -9 between
# the relay's 250 and the commit re-sends that DSN. Each fault that can hit that window
# may re-send at most what the sender workers hold: the DSN each is sending and the ones
# accepted in the last few ms, still waiting for their gathered "sent" mark.
RESENDS_PER_FAULT = WORKERS * HELD_PER_WORKER
STRICT_DSN = os.environ.get("CHAOS_STRICT_DSN", "") == "1"
PG_DOWN_S = 3.0
RECONNECT_TIMEOUT_S = 60.0


@dataclass
class Sink:
    messages: list[bytes] = field(default_factory=list)
    times: list[float] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.messages.append(bytes(envelope.content))
        self.times.append(time.monotonic())
        return "250 OK"


@dataclass
class Fault:
    name: str
    at: float
    started: float = 0.0
    recovered_s: float | None = None
    in_flight: int = 0
    detail: str = ""
    reconnected: list[str] = field(default_factory=list)
    not_reconnected: list[str] = field(default_factory=list)


@dataclass
class Ledger:
    submitted: int = 0
    accepted: int = 0
    delivered: int = 0
    bounced: int = 0
    lost: int = 0
    not_final: int = 0
    dsn_missing: int = 0
    dsn_duplicated: int = 0
    dsn_resent: int = 0
    dsn_resend_bound: int = 0
    dsn_total: int = 0
    runs_duplicated: int = 0
    runs_duplicate_bound: int = 0
    runs_missing: int = 0
    post_retries: int = 0
    faults: list[Fault] = field(default_factory=list)
    elapsed_s: float = 0.0
    details: list[str] = field(default_factory=list)

    def ok(self) -> bool:
        return (self.lost == 0 and self.not_final == 0 and self.dsn_missing == 0
                and self.dsn_duplicated == 0 and self.runs_missing == 0
                and (self.dsn_resent <= self.dsn_resend_bound if not STRICT_DSN
                     else self.dsn_resent == 0)
                and self.runs_duplicated <= self.runs_duplicate_bound
                and all(f.recovered_s is not None and not f.not_reconnected
                        for f in self.faults))

    def report(self) -> str:
        lines = [
            f"submitted {self.submitted}, accepted {self.accepted} "
            f"(POST retries after resets/5xx: {self.post_retries}), in {self.elapsed_s:.1f}s",
            f"delivered {self.delivered}, bounced {self.bounced}, lost {self.lost}, "
            f"not final {self.not_final}",
            f"DSNs {self.dsn_total}: missing {self.dsn_missing}, duplicated {self.dsn_duplicated} "
            f"(two different DSNs for one message and event), re-sent {self.dsn_resent} (the same "
            f"DSN, same Message-ID, sent again after a notifier kill or database cut; bound "
            f"{self.dsn_resend_bound}{', must be 0: CHAOS_STRICT_DSN' if STRICT_DSN else ''})",
            f"program runs duplicated {self.runs_duplicated} (bound: {self.runs_duplicate_bound} "
            f"jobs running in killed executors), missing {self.runs_missing}",
        ]
        for f in self.faults:
            rec = f"{f.recovered_s:.1f}s" if f.recovered_s is not None else "NOT RECOVERED"
            extra = f", {f.in_flight} job(s) running when killed" if f.name.startswith(
                "kill -9 executor") else ""
            lines.append(f"  fault {f.name} at {f.started:.1f}s: recovered (a new message "
                         f"delivered, DSN sent) in {rec}{extra}")
            if f.detail:
                lines.append(f"    {f.detail}")
            if f.reconnected:
                lines.append(f"    reconnected: {'; '.join(f.reconnected)}")
            if f.not_reconnected:
                lines.append(f"    NOT RECONNECTED: {'; '.join(f.not_reconnected)}")
        lines += [f"  ! {d}" for d in self.details[:20]]
        lines.append("LEDGER " + ("OK" if self.ok() else "FAILED"))
        return "\n".join(lines)


class Chaos:
    def __init__(self, n: int, rate: float, rabbit: str = "proxy", executors: int = 2,
                 executor_kills: int = 1, log_dir: Path | None = None,
                 pg: str | None = None) -> None:
        self.n = n
        self.rate = rate
        self.rabbit = rabbit
        self.pg = pg or os.environ.get("CHAOS_PG", "real")
        if self.pg not in ("real", "proxy"):
            raise ValueError(f"CHAOS_PG must be real or proxy, not {self.pg!r}")
        self.pg_admin = PG_ADMIN
        self.cluster: PrivateCluster | None = None
        self.pg_proxy: CuttableProxy | None = None
        self.amqp_proxy: CuttableProxy | None = None
        self.smtp: Controller | None = None
        self.trusted: Path | None = None
        self.vhost_created = False
        self.n_executors = executors
        self.executor_kills = executor_kills
        self.run_id = uuid.uuid4().hex[:8]
        self.db = f"mailexec_chaos_{self.run_id}"
        self.vhost = f"mailexec_chaos_{self.run_id}"
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="mailexec-chaos-"))
        self.base = Path(tempfile.mkdtemp(prefix="mailexec-chaos-homes-", dir="/tmp"))
        os.chmod(self.base, 0o755)
        self.tokens = {k: f"chaos-{k}-{secrets.token_hex(8)}" for k in ("admin", "mta", "service")}
        self.procs: dict[str, ServiceProcess] = {}
        self.homes: dict[str, Path] = {}
        self.ids: dict[int, str] = {}  # seq -> message id
        self.ledger = Ledger()
        self.sink = Sink()
        self._n_started = 0
        self._cgroups: list[Path] = []
        self.in_flight_bound = 0

    # --- setup ---------------------------------------------------------------------------

    async def _admin_sql(self, sql: str) -> None:
        conn = await asyncpg.connect(self.pg_admin)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def _db_dsn(self) -> str:
        return self.pg_admin.rsplit("/", 1)[0] + f"/{self.db}"

    async def setup(self) -> None:
        if self.pg == "real":
            for name in await asyncio.to_thread(drop_leftovers):
                print(f"chaos: dropped leftover cluster {name} of a run that did not tear down",
                      flush=True)
            self.cluster = PrivateCluster(free_port())
            await asyncio.to_thread(self.cluster.create)
            self.pg_admin = self.cluster.admin_dsn
            print(f"chaos: private PostgreSQL cluster {self.cluster.version}/{self.cluster.name} "
                  f"on 127.0.0.1:{self.cluster.port}, created and started in "
                  f"{self.cluster.created_s:.1f} s", flush=True)
            pg_port = self.cluster.port
        else:
            self.pg_proxy = CuttableProxy("127.0.0.1", 5432)
            pg_port = self.pg_proxy.port
        self.pg_port = pg_port
        await self._admin_sql(f'CREATE DATABASE "{self.db}"')
        self.db_created = True
        subprocess.run(["rabbitmqctl", "-q", "add_vhost", self.vhost], check=True, timeout=120)  # noqa: ASYNC221
        self.vhost_created = True
        subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", self.vhost, "guest",  # noqa: ASYNC221
                        ".*", ".*", ".*"], check=True, timeout=120)
        self.amqp_proxy = CuttableProxy("127.0.0.1", 5672) if self.rabbit == "proxy" else None
        amqp_port = self.amqp_proxy.port if self.amqp_proxy else 5672
        self.trusted = Path(tempfile.mkdtemp(prefix="mailexec-chaos-trusted-", dir="/tmp"))
        os.chmod(self.trusted, 0o755)
        self.smtp = Controller(self.sink, hostname="127.0.0.1", port=free_port())
        self.smtp.start()
        env = dict(os.environ)
        env.update({
            "MAILEXEC_DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:{pg_port}/{self.db}",
            "MAILEXEC_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{amqp_port}/{self.vhost}",
            "MAILEXEC_ADMIN_TOKEN": self.tokens["admin"],
            "MAILEXEC_INGEST_TOKEN": self.tokens["mta"],
            "MAILEXEC_SERVICE_TOKEN": self.tokens["service"],
            "MAILEXEC_TRUSTED_DIR": str(self.trusted),
            "MAILEXEC_REPORTING_MTA": "mx.chaos.example",
            "MAILEXEC_LOG_LEVEL": "warning",
            "MAILEXEC_SMTP_URL": f"smtp://127.0.0.1:{self.smtp.port}",
            "MAILEXEC_INGEST_PORT": str(free_port()),
            "MAILEXEC_POLICY_PORT": str(free_port()),
            "MAILEXEC_NOTIFIER_PORT": str(free_port()),
            "MAILEXEC_EXECUTOR_RETRY_DELAYS_S": "1,1,2",
            "MAILEXEC_EXECUTOR_HELD_RECHECK_S": "1",
            "MAILEXEC_NOTIFIER_RETRY_BASE_S": "1",
            "MAILEXEC_NOTIFIER_RETRY_MAX_S": "5",
            "MAILEXEC_DSN_AGGREGATE_WINDOW_S": "0.5",
        })
        env["MAILEXEC_POLICY_URL"] = f"http://127.0.0.1:{env['MAILEXEC_POLICY_PORT']}"
        self.env = env
        migrate_url = self._db_dsn().replace("postgresql://", "postgresql+asyncpg://", 1)
        subprocess.run([sys.executable, "-m", "mailexec", "migrate"], env={  # noqa: ASYNC221
            **env, "MAILEXEC_DATABASE_URL": migrate_url},
            cwd=ROOT, check=True, capture_output=True, timeout=120)
        for name in ("policy", "ingest", "notifier"):
            await self.start(name)
        for i in range(self.n_executors):
            await self.start("executor", key=f"executor{i}")
        self.policy = httpx.AsyncClient(base_url=env["MAILEXEC_POLICY_URL"], timeout=30,
                                        headers={"Authorization": f"Bearer {self.tokens['admin']}"})
        prog = self.log_dir / "chaosprog"
        subprocess.run(["cc", "-O2", "-o", str(prog), str(HERE / "chaosprog.c")], check=True)  # noqa: ASYNC221
        for name in ACCOUNTS:
            r = await self.policy.put(f"/v1/programs/{name}", content=prog.read_bytes(),
                                      headers={"Content-Type": "application/octet-stream"})
            assert r.status_code in (200, 201), r.text
        r = await self.policy.patch("/v1/settings", json={"program_timeout_s": 20})
        assert r.status_code == 200, r.text
        for i, name in enumerate(ACCOUNTS):
            uid = 64900 + i
            home = self.base / name
            home.mkdir(mode=0o700)
            os.chown(home, uid, uid)
            self.homes[name] = home
            r = await self.policy.put(f"/v1/accounts/{name}@chaos.example", json={
                "owner": {"name": name, "uid": uid, "gid": uid, "home": str(home),
                          "shell": "/bin/sh"},
                "program_delivery": {"enabled": True, "programs": [name]},
                "mailbox_delivery": False})
            assert r.status_code in (200, 201), r.text
        self.ingest = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{env['MAILEXEC_INGEST_PORT']}", timeout=30,
            headers={"Authorization": f"Bearer {self.tokens['mta']}",
                     "Content-Type": "message/rfc822"})

    async def start(self, name: str, key: str | None = None) -> ServiceProcess:
        env = dict(self.env)
        self._n_started += 1
        if name == "executor":
            env["MAILEXEC_EXECUTOR_METRICS_PORT"] = str(free_port())
            root = Path(f"/sys/fs/cgroup/unified/mailexec-chaos-{self.run_id}-{self._n_started}")
            env["MAILEXEC_SANDBOX_CGROUP_ROOT"] = str(root)
            self._cgroups.append(root)
            env["MAILEXEC_EXECUTOR_CONCURRENCY"] = "16"
            env["MAILEXEC_EXECUTOR_PREFETCH"] = "32"
        sp = ServiceProcess(name, env, self.log_dir / f"{key or name}-{self._n_started}.log")
        await asyncio.to_thread(sp.start, True, 60.0)
        self.procs[key or name] = sp
        return sp

    async def teardown(self) -> None:
        """Safe after a setup that failed half-way; the private cluster is dropped whatever
        else fails."""
        try:
            for sp in self.procs.values():
                await asyncio.to_thread(sp.stop)
            for root in self._cgroups:
                for child in sorted(root.glob("**/"), key=lambda p: -len(p.parts)):
                    try:
                        child.rmdir()
                    except OSError:
                        pass
            if self.smtp is not None:
                self.smtp.stop()
            for proxy in (self.pg_proxy, self.amqp_proxy):
                if proxy is not None:
                    proxy.close()
            for c in ("policy", "ingest"):
                client = getattr(self, c, None)
                if client is not None:
                    await client.aclose()
            if self.cluster is None and getattr(self, "db_created", False):
                await self._admin_sql(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')
            if self.vhost_created:
                subprocess.run(["rabbitmqctl", "-q", "delete_vhost", self.vhost], timeout=120)  # noqa: ASYNC221
        finally:
            if self.cluster is not None:
                await asyncio.to_thread(self.cluster.drop, self.log_dir)
            shutil.rmtree(self.base, ignore_errors=True)
            if self.trusted is not None:
                shutil.rmtree(self.trusted, ignore_errors=True)

    # --- load ----------------------------------------------------------------------------

    async def submit(self, seq: int, account: str) -> str:
        body = (f"From: load@example.net\nTo: {account}@chaos.example\nSubject: chaos {seq}\n"
                f"Message-ID: <{seq}.{self.run_id}@example.net>\n\nmessage {seq}\n").encode()
        params = {"from": "load@example.net", "to": f"{account}@chaos.example",
                  "notify": "SUCCESS,FAILURE"}
        first = True
        while True:
            if not first:
                self.ledger.post_retries += 1
                await asyncio.sleep(0.2)
            first = False
            try:
                r = await self.ingest.post("/v1/messages", params=params, content=body,
                                           headers={"Idempotency-Key": f"{self.run_id}-{seq}"})
            except httpx.HTTPError:
                continue
            if r.status_code == 202:
                mid = str(r.json()["id"])
                self.ids[seq] = mid
                return mid
            if r.status_code < 500:
                raise AssertionError(f"message {seq}: {r.status_code} {r.text}")

    async def load(self, seqs: range) -> None:
        sem = asyncio.Semaphore(16)
        start = time.monotonic()

        async def one(seq: int) -> None:
            async with sem:
                await self.submit(seq, ACCOUNTS[seq % 3])

        tasks = []
        for seq in seqs:
            delay = start + (seq - seqs.start) / self.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(seq)))
        await asyncio.gather(*tasks)

    # --- faults --------------------------------------------------------------------------

    async def running_jobs(self) -> int:
        conn = await asyncpg.connect(self._db_dsn())
        try:
            return int(await conn.fetchval(
                "SELECT count(*) FROM mail.recipients WHERE state = 'running'"))
        finally:
            await conn.close()

    async def probe(self, fault: Fault, t0: float, seq: int) -> None:
        """Recovery = fault start → a message submitted now is delivered end to end and
        its success DSN has reached the SMTP sink."""
        mid = await self.submit(seq, "succ")
        conn = await asyncpg.connect(self._db_dsn())
        try:
            while True:
                state = await conn.fetchval(
                    "SELECT state FROM mail.recipients WHERE message_id = $1", uuid.UUID(mid))
                if state == "delivered" and mid in self.dsns():
                    fault.recovered_s = time.monotonic() - fault.started_mono
                    return
                await asyncio.sleep(0.1)
        finally:
            await conn.close()

    async def inject(self, fault: Fault, t0: float, probe_seq: int) -> None:
        fault.started = time.monotonic() - t0
        fault.started_mono = time.monotonic()  # type: ignore[attr-defined]
        name = fault.name
        probe: asyncio.Task[None] | None = None
        if name.startswith("kill -9 executor"):
            key = name.split()[-1]
            sp = self.procs[key]
            fault.in_flight = await self.running_jobs()
            self.in_flight_bound += fault.in_flight + 32  # running + prefetched, worst case
            assert sp.proc is not None
            sp.proc.kill()
            sp.proc.wait()
            await asyncio.sleep(1)
            await self.start("executor", key=key)
        elif name in ("kill -9 notifier", "kill -9 ingest"):
            key = name.split()[-1]
            sp = self.procs[key]
            assert sp.proc is not None
            sp.proc.kill()
            sp.proc.wait()
            await self.start(key)
        elif name == "restart rabbitmq":
            if self.amqp_proxy:
                self.amqp_proxy.cut()
                await asyncio.sleep(3)
                self.amqp_proxy.restore()
            else:
                await asyncio.to_thread(subprocess.run, ["rabbitmqctl", "stop_app"], check=True,
                                        capture_output=True, timeout=120)
                await asyncio.sleep(2)
                await asyncio.to_thread(subprocess.run, ["rabbitmqctl", "start_app"], check=True,
                                        capture_output=True, timeout=300)
        elif name == "restart postgresql":
            deliveries = {k: await self.deliveries(k) for k in self.procs if k.startswith("executor")}
            if self.cluster is not None:
                probe = await self.restart_cluster(fault, t0, probe_seq)
            else:
                assert self.pg_proxy is not None
                self.pg_proxy.cut()
                await asyncio.sleep(PG_DOWN_S)
                self.pg_proxy.restore()
                fault.detail = (f"simulated: TCP proxy to the shared server cut for {PG_DOWN_S:.0f} s "
                                "(the server itself keeps running)")
            print(f"chaos: {name}: {fault.detail}", flush=True)
        try:
            await asyncio.wait_for(probe or self.probe(fault, t0, probe_seq), timeout=180)
        except TimeoutError:  # reported as NOT RECOVERED in the ledger; keep going
            print(f"chaos: no recovery within 180 s after {name!r}", flush=True)
        else:
            print(f"chaos: recovered {fault.recovered_s:.1f} s after {name!r}", flush=True)
        if name == "restart postgresql":
            await self.check_reconnected(fault, deliveries)
            for line in fault.reconnected:
                print(f"chaos: reconnected: {line}", flush=True)
            for line in fault.not_reconnected:
                print(f"chaos: NOT RECONNECTED: {line}", flush=True)

    async def restart_cluster(self, fault: Fault, t0: float, probe_seq: int) -> asyncio.Task[None]:
        """Stop the private cluster (fast: every backend terminated), keep it down for
        ``PG_DOWN_S``, start it; what happened goes to ``fault.detail``. The probe starts
        as soon as the server is down (its POSTs are retried until ingest accepts one),
        so the recovery time is the services' and not ``pg_ctl``'s wait for the start."""
        c = self.cluster
        assert c is not None
        conns = await self.db_connections()
        before = c.postmaster_pid()
        t = time.monotonic()
        await asyncio.to_thread(c.stop)
        stop_s = time.monotonic() - t
        probe = asyncio.create_task(self.probe(fault, t0, probe_seq))
        await asyncio.sleep(PG_DOWN_S)
        t = time.monotonic()
        await asyncio.to_thread(c.start)
        start_s = time.monotonic() - t
        fault.detail = (
            f"real restart of cluster {c.version}/{c.name}: pg_ctlcluster stop -m fast "
            f"({stop_s:.1f} s, {conns} client connection(s) terminated), {PG_DOWN_S:.0f} s down, "
            f"start ({start_s:.1f} s, until pg_ctl saw it ready); postmaster pid {before} -> "
            f"{c.postmaster_pid()}")
        return probe

    async def db_connections(self) -> int:
        conn = await asyncpg.connect(self._db_dsn())
        try:
            return int(await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 "
                "AND pid <> pg_backend_pid()", self.db))
        finally:
            await conn.close()

    async def deliveries(self, key: str) -> float:
        """An executor's ``mailexec_deliveries_total``, all outcomes (0 when unreachable)."""
        try:
            async with httpx.AsyncClient(timeout=5) as client:
                r = await client.get(f"{self.procs[key].url}/metrics")
        except httpx.HTTPError:
            return 0.0
        return sum(float(line.rsplit(" ", 1)[1]) for line in r.text.splitlines()
                   if line.startswith("mailexec_deliveries_total"))

    def pg_sockets(self, key: str) -> int:
        """ESTABLISHED TCP connections from a service's process to PostgreSQL (or to the
        proxy in front of it), from ``/proc``: after a restart, every one of them is new."""
        sp = self.procs[key]
        if sp.proc is None:
            return 0
        inodes = set()
        try:
            for fd in Path(f"/proc/{sp.proc.pid}/fd").iterdir():
                try:
                    link = os.readlink(fd)
                except OSError:
                    continue
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except OSError:
            return 0
        n = 0
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            f = line.split()
            if (int(f[2].rsplit(":", 1)[1], 16) == self.pg_port and f[3] == "01"
                    and f[9] in inodes):
                n += 1
        return n

    async def check_reconnected(self, fault: Fault, deliveries_before: dict[str, float]) -> None:
        """Every service is back on the database after the restart: ``/readyz`` 200 (each
        service's database check runs through the pool its work uses, so a pool that kept
        dead connections fails it), and policy answers an account read from the database
        (policy is otherwise idle: the executors cache its answers). Also recorded, as
        evidence: each process's connections to PostgreSQL now, and the deliveries each
        executor made since the fault."""
        async def one(key: str) -> None:
            sp = self.procs[key]
            deadline = time.monotonic() + RECONNECT_TIMEOUT_S
            last = ""
            async with httpx.AsyncClient(timeout=5) as client:
                while True:
                    try:
                        r = await client.get(f"{sp.url}/readyz")
                        ok, last = r.status_code == 200, f"/readyz {r.status_code} {r.text[:200]}"
                        if ok and key == "policy":
                            r = await self.policy.get("/v1/accounts/succ@chaos.example")
                            ok, last = r.status_code == 200, f"account read {r.status_code} {r.text[:200]}"
                    except httpx.HTTPError as exc:
                        ok, last = False, f"{type(exc).__name__}: {exc}"
                    if ok:
                        break
                    if time.monotonic() > deadline:
                        fault.not_reconnected.append(
                            f"{key}: not back within {RECONNECT_TIMEOUT_S:.0f} s after the probe "
                            f"({last}; {self.pg_sockets(key)} connection(s) to PostgreSQL)")
                        return
                    await asyncio.sleep(0.5)
            extra = ""
            if key in deliveries_before:
                extra = f", {await self.deliveries(key) - deliveries_before[key]:.0f} deliveries since"
            fault.reconnected.append(f"{key} ({self.pg_sockets(key)} conn{extra})")

        await asyncio.gather(*(one(k) for k in sorted(self.procs)))

    def schedule(self) -> list[Fault]:
        names = []
        for i in range(self.executor_kills):
            names.append(f"kill -9 executor executor{i % self.n_executors}")
            if i == 0:
                names += ["kill -9 notifier", "kill -9 ingest", "restart rabbitmq"]
            if i == 1 or self.executor_kills == 1:
                names.append("restart postgresql")
        duration = self.n / self.rate
        return [Fault(name, at=duration * (i + 1) / (len(names) + 1))
                for i, name in enumerate(names)]

    async def run(self, settle_timeout: float = 300) -> Ledger:
        t0 = time.monotonic()
        faults = self.schedule()
        self.ledger.faults = faults
        load = asyncio.create_task(self.load(range(self.n)))
        probe_seq = 10_000_000
        for f in faults:
            delay = t0 + f.at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            probe_seq += 1
            await self.inject(f, t0, probe_seq)
        await load
        await self.settle(settle_timeout)
        self.ledger.elapsed_s = time.monotonic() - t0
        await self.check()
        return self.ledger

    # --- ledger --------------------------------------------------------------------------

    def dsns(self, by_message_id: bool = False) -> dict[str, list[str]]:
        """message id -> [action, ...] of every DSN the sink received (one entry per
        DSN Message-ID with ``by_message_id``: a re-send of the same DSN counts once)."""
        out: dict[str, list[str]] = defaultdict(list)
        seen: set[str] = set()
        for raw in self.sink.messages:
            msg = email.message_from_bytes(raw, policy=email.policy.default)
            dsn_id = str(msg.get("Message-ID", ""))
            if by_message_id:
                if dsn_id in seen:
                    continue
                seen.add(dsn_id)
            for part in msg.walk():
                if part.get_content_type() == "message/delivery-status":
                    blocks = part.get_payload()
                    mid = str(blocks[0].get("X-Mailexec-Message-ID", "")).strip()
                    for b in blocks[1:]:
                        out[mid].append(str(b["Action"]).strip())
        return out

    async def settle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        conn = await asyncpg.connect(self._db_dsn())
        try:
            while time.monotonic() < deadline:
                open_ = await conn.fetchval(
                    "SELECT count(*) FROM mail.recipients WHERE state NOT IN ('delivered','bounced')")
                if open_ == 0 and len(self.dsns()) >= len(self.ids):
                    await asyncio.sleep(3)  # late duplicates would show up now
                    return
                await asyncio.sleep(0.5)
        finally:
            await conn.close()

    async def check(self) -> None:
        lg = self.ledger
        lg.submitted = self.n + len(lg.faults)
        lg.accepted = len(self.ids)
        conn = await asyncpg.connect(self._db_dsn())
        try:
            rows = await conn.fetch(
                "SELECT message_id::text AS mid, state FROM mail.recipients")
        finally:
            await conn.close()
        state = {r["mid"]: r["state"] for r in rows}
        for mid in self.ids.values():
            s = state.get(mid)
            if s is None:
                lg.lost += 1
                lg.details.append(f"message {mid}: accepted (202) but not in the database")
            elif s == "delivered":
                lg.delivered += 1
            elif s == "bounced":
                lg.bounced += 1
            else:
                lg.not_final += 1
        everything = self.dsns()
        dsns = self.dsns(by_message_id=True)
        lg.dsn_total = sum(len(v) for v in everything.values())
        lg.dsn_resent = lg.dsn_total - sum(len(v) for v in dsns.values())
        lg.dsn_resend_bound = RESENDS_PER_FAULT * sum(
            1 for f in lg.faults if f.name in ("kill -9 notifier", "restart postgresql"))
        if lg.dsn_resent:
            lg.details.append(f"{lg.dsn_resent} DSN(s) re-sent with the same Message-ID")
        for mid in self.ids.values():
            got = dsns.get(mid, [])
            if not got:
                lg.dsn_missing += 1
            elif len(got) > 1:
                lg.dsn_duplicated += len(got) - 1
                lg.details.append(f"message {mid}: {len(got)} DSNs {got}")
        runs: Counter[tuple[str, str]] = Counter()
        for home in self.homes.values():
            log = home / "runs.log"
            for line in (log.read_text().splitlines() if log.exists() else []):
                prog, seq, _ = line.split()
                runs[(prog, seq)] += 1
        for seq in self.ids:
            prog = "succ" if seq >= 10_000_000 else ACCOUNTS[seq % 3]
            expected = 2 if prog == "defer" else 1
            got_runs = runs.get((prog, str(seq)), 0)
            if got_runs < expected:
                lg.runs_missing += 1
                lg.details.append(f"seq {seq} ({prog}): {got_runs} run(s), expected {expected}")
            elif got_runs > expected:
                lg.details.append(f"seq {seq} ({prog}): {got_runs} runs, expected {expected}")
            lg.runs_duplicated += max(0, got_runs - expected)
        lg.runs_duplicate_bound = self.in_flight_bound


async def main(n: int, rate: float, rabbit: str, executor_kills: int,
               pg: str | None = None) -> Ledger:
    chaos = Chaos(n, rate, rabbit=rabbit, executor_kills=executor_kills, pg=pg)
    print(f"chaos: {n} messages at {rate}/s, broker fault via {rabbit}, database fault via "
          f"{chaos.pg}, logs in {chaos.log_dir}", flush=True)
    try:
        await chaos.setup()
        ledger = await chaos.run()
    finally:
        await chaos.teardown()
    print(ledger.report(), flush=True)
    return ledger
