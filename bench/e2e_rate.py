"""Quick end-to-end rate: N 1 KiB messages through ingest → RabbitMQ → executor → a C program.

    sudo .venv/bin/python bench/e2e_rate.py [--n 2000] [--concurrency 64] [--keep]

Creates a throwaway database and vhost, runs the migrations, starts `mailexec serve
policy|ingest|executor`, registers a trivial C program (reads stdin to EOF, exits 0),
creates one account owned by uid 64999, POSTs N messages concurrently and waits until
every recipient is `delivered`. Prints deliveries/s (first POST → last delivery) and the
accept→delivered latency percentiles. Everything is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import httpx

from bench.common import free_port, wait_ready

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("MAILEXEC_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
PROGRAM_C = b"#include <unistd.h>\nint main(void){char b[65536];while(read(0,b,sizeof b)>0);return 0;}\n"


async def pg(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def run(args: argparse.Namespace) -> None:
    run_id = uuid.uuid4().hex[:8]
    db, vhost = f"mailexec_bench_{run_id}", f"mailexec_bench_{run_id}"
    work = Path(tempfile.mkdtemp(prefix="mailexec-bench-"))
    os.chmod(work, 0o755)
    await pg(f'CREATE DATABASE "{db}"')
    await asyncio.to_thread(subprocess.run, ["rabbitmqctl", "-q", "add_vhost", vhost], check=True)
    await asyncio.to_thread(subprocess.run, ["rabbitmqctl", "-q", "set_permissions", "-p", vhost,
                                             "guest", ".*", ".*", ".*"], check=True)
    admin, mta, service = (f"bench-{k}-{uuid.uuid4().hex}" for k in ("admin", "mta", "svc"))
    trusted = work / "trusted"
    ports = {k: free_port() for k in ("INGEST", "POLICY", "NOTIFIER", "EXECUTOR_METRICS")}
    env = dict(os.environ)
    env.update({
        "MAILEXEC_DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{db}",
        "MAILEXEC_AMQP_URL": f"amqp://guest:guest@127.0.0.1:5672/{vhost}",
        "MAILEXEC_ADMIN_TOKEN": admin, "MAILEXEC_INGEST_TOKEN": mta, "MAILEXEC_SERVICE_TOKEN": service,
        "MAILEXEC_TRUSTED_DIR": str(trusted), "MAILEXEC_LOG_LEVEL": args.log_level,
        "MAILEXEC_POLICY_URL": f"http://127.0.0.1:{ports['POLICY']}",
        "MAILEXEC_SANDBOX_CGROUP_ROOT": f"/sys/fs/cgroup/unified/mailexec-bench-{run_id}",
        **{f"MAILEXEC_{k}_PORT": str(v) for k, v in ports.items()},
    })
    procs: list[subprocess.Popen[bytes]] = []
    try:
        await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "mailexec", "migrate"],
                                env=env, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)

        def start(name: str, port: str) -> None:
            log = open(work / f"{name}.log", "wb")  # noqa: SIM115
            cmd = [sys.executable, "-m", "mailexec", "serve", name]
            pyspy = os.environ.get("E2E_PYSPY")  # profile the executor: path of py-spy
            if pyspy and name == "executor":
                cmd = [pyspy, "record", "-r", "200", "-f", "speedscope", "-o",
                       str(work / "executor.prof.json"), "--"] + cmd
            p = subprocess.Popen(cmd, env=env,
                                 stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
            procs.append(p)
            wait_ready(f"http://127.0.0.1:{ports[port]}", p)

        start("policy", "POLICY")
        start("ingest", "INGEST")
        if not args.executor_only:
            start("executor", "EXECUTOR_METRICS")
        (work / "prog.c").write_bytes(PROGRAM_C)
        await asyncio.to_thread(subprocess.run, ["cc", "-O2", "-o", str(work / "prog"),
                                                 str(work / "prog.c")], check=True)
        home = work / "home"
        home.mkdir(mode=0o700)
        os.chown(home, 64999, 64999)
        pol = httpx.AsyncClient(base_url=env["MAILEXEC_POLICY_URL"],
                                headers={"Authorization": f"Bearer {admin}"})
        r = await pol.put("/v1/programs/benchprog", content=(work / "prog").read_bytes(),
                          headers={"Content-Type": "application/octet-stream"})
        r.raise_for_status()
        r = await pol.put("/v1/accounts/bench@bench.example", json={
            "owner": {"name": "bench", "uid": 64999, "gid": 64999, "home": str(home),
                      "shell": "/bin/sh"},
            "program_delivery": {"enabled": True, "programs": ["benchprog"]},
            "mailbox_delivery": False})
        r.raise_for_status()
        await pol.aclose()
        body = (b"From: a@bench.example\nTo: bench@bench.example\nSubject: bench\n\n"
                + b"x" * 1000 + b"\n")[:1024]
        ing = httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports['INGEST']}",
                                headers={"Authorization": f"Bearer {mta}",
                                         "Content-Type": "message/rfc822"},
                                limits=httpx.Limits(max_connections=args.concurrency))
        conn = await asyncpg.connect(env["MAILEXEC_DATABASE_URL"].replace("+asyncpg", ""))
        sem = asyncio.Semaphore(args.concurrency)

        async def post(i: int) -> None:
            async with sem:
                r = await ing.post("/v1/messages", content=body,
                                   params={"from": "a@bench.example", "to": "bench@bench.example"})
                if r.status_code != 202:
                    raise SystemExit(f"ingest answered {r.status_code}: {r.text}")

        if args.executor_only:
            await asyncio.gather(*(post(i) for i in range(args.n)))
            print(f"queued {args.n} jobs; starting the executor")
            start("executor", "EXECUTOR_METRICS")
        print(f"posting {args.n} messages of {len(body)} bytes, concurrency {args.concurrency}")
        t0 = time.monotonic()
        posting = asyncio.gather(*(post(i) for i in range(0 if args.executor_only else args.n)))
        done = 0
        while done < args.n:
            await asyncio.sleep(0.2)
            done = await conn.fetchval("SELECT count(*) FROM mail.recipients WHERE state = 'delivered'")
            if time.monotonic() - t0 > args.timeout:
                raise SystemExit(f"timeout: {done}/{args.n} delivered")
        await posting
        elapsed = time.monotonic() - t0
        lat = await conn.fetch(
            "SELECT extract(epoch from (r.final_at - m.received_at)) AS s FROM mail.recipients r "
            "JOIN mail.messages m ON m.id = r.message_id ORDER BY s")
        await conn.close()
        await ing.aclose()
        secs = [row["s"] for row in lat]

        def pct(p: float) -> float:
            return float(secs[min(len(secs) - 1, int(len(secs) * p))]) * 1000

        print(f"delivered {args.n} in {elapsed:.2f} s: {args.n / elapsed:.0f} deliveries/s "
              f"(accept→delivered p50 {pct(.5):.0f} ms, p99 {pct(.99):.0f} ms)")
    finally:
        for p in reversed(procs):
            p.send_signal(2)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        if not args.keep:
            await pg(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            await asyncio.to_thread(subprocess.run, ["rabbitmqctl", "-q", "delete_vhost", vhost],
                                    check=False)
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept: db {db}, vhost {vhost}, logs in {work}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--log-level", default="warning")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--executor-only", action="store_true",
                    help="queue every job first, then time the executor alone draining them")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (the executor drops to the bench uid)")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
