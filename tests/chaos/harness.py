"""The chaos run: a bounded stream of messages through the whole pipeline while processes
are killed and dependencies cut, then a ledger checked against the database, the
programs' own side-effect files and an SMTP sink.

Topology: its own PostgreSQL database and RabbitMQ vhost (created and dropped here), the
services reach both through :class:`CuttableProxy` so a "restart" can be simulated without
touching the shared servers. With ``rabbit="real"`` (``make chaos`` only) the broker fault
is a real ``rabbitmqctl stop_app; start_app`` of the machine's broker.

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

from tests.chaos.proxy import CuttableProxy
from tests.conftest import ServiceProcess, free_port

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PG_ADMIN = os.environ.get("MAILEXEC_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
ACCOUNTS = ("succ", "fail", "defer")
# The notifier sends, then marks sent (services/notifier/outbox.py): a kill -9 or a lost
# database between the relay's 250 and the commit re-sends that DSN. Each fault that can
# hit that window may re-send at most one DSN per sender worker.
NOTIFIER_SEND_WORKERS = 4
STRICT_DSN = os.environ.get("CHAOS_STRICT_DSN", "") == "1"


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
                and all(f.recovered_s is not None for f in self.faults))

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
        lines += [f"  ! {d}" for d in self.details[:20]]
        lines.append("LEDGER " + ("OK" if self.ok() else "FAILED"))
        return "\n".join(lines)


class Chaos:
    def __init__(self, n: int, rate: float, rabbit: str = "proxy", executors: int = 2,
                 executor_kills: int = 1, log_dir: Path | None = None) -> None:
        self.n = n
        self.rate = rate
        self.rabbit = rabbit
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
        conn = await asyncpg.connect(PG_ADMIN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def _db_dsn(self) -> str:
        return PG_ADMIN.rsplit("/", 1)[0] + f"/{self.db}"

    async def setup(self) -> None:
        await self._admin_sql(f'CREATE DATABASE "{self.db}"')
        subprocess.run(["rabbitmqctl", "-q", "add_vhost", self.vhost], check=True, timeout=120)  # noqa: ASYNC221
        subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", self.vhost, "guest",  # noqa: ASYNC221
                        ".*", ".*", ".*"], check=True, timeout=120)
        self.pg_proxy = CuttableProxy("127.0.0.1", 5432)
        self.amqp_proxy = CuttableProxy("127.0.0.1", 5672) if self.rabbit == "proxy" else None
        amqp_port = self.amqp_proxy.port if self.amqp_proxy else 5672
        self.trusted = Path(tempfile.mkdtemp(prefix="mailexec-chaos-trusted-", dir="/tmp"))
        os.chmod(self.trusted, 0o755)
        self.smtp = Controller(self.sink, hostname="127.0.0.1", port=free_port())
        self.smtp.start()
        env = dict(os.environ)
        env.update({
            "MAILEXEC_DATABASE_URL":
                f"postgresql+asyncpg://postgres@127.0.0.1:{self.pg_proxy.port}/{self.db}",
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
        subprocess.run([sys.executable, "-m", "mailexec", "migrate"], env={  # noqa: ASYNC221
            **env, "MAILEXEC_DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{self.db}"},
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
        for sp in self.procs.values():
            await asyncio.to_thread(sp.stop)
        for root in self._cgroups:
            for child in sorted(root.glob("**/"), key=lambda p: -len(p.parts)):
                try:
                    child.rmdir()
                except OSError:
                    pass
        self.smtp.stop()
        self.pg_proxy.close()
        if self.amqp_proxy:
            self.amqp_proxy.close()
        for c in ("policy", "ingest"):
            client = getattr(self, c, None)
            if client is not None:
                await client.aclose()
        await self._admin_sql(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", self.vhost], timeout=120)  # noqa: ASYNC221
        shutil.rmtree(self.base, ignore_errors=True)
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
            self.pg_proxy.cut()
            await asyncio.sleep(3)
            self.pg_proxy.restore()
        try:
            await asyncio.wait_for(self.probe(fault, t0, probe_seq), timeout=180)
        except TimeoutError:  # reported as NOT RECOVERED in the ledger; keep going
            print(f"chaos: no recovery within 180 s after {name!r}", flush=True)
        else:
            print(f"chaos: recovered {fault.recovered_s:.1f} s after {name!r}", flush=True)

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
        lg.dsn_resend_bound = NOTIFIER_SEND_WORKERS * sum(
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


async def main(n: int, rate: float, rabbit: str, executor_kills: int) -> Ledger:
    chaos = Chaos(n, rate, rabbit=rabbit, executor_kills=executor_kills)
    print(f"chaos: {n} messages at {rate}/s, broker fault via {rabbit}, logs in {chaos.log_dir}",
          flush=True)
    try:
        await chaos.setup()
        ledger = await chaos.run()
    finally:
        await chaos.teardown()
    print(ledger.report(), flush=True)
    return ledger
