"""How many DSN-producing events per second the notifier sustains (bounce storms).

    .venv/bin/python -m bench.notifier_rate [--n 5000] [--variants single,ten] [--rate R]
        [--reps K] [--log-level info] [--profile DIR] [--json FILE] [--verbose] [--keep]

Creates its own database and vhost (``mailexec_nrate_<id>``, migrations by ``mailexec
migrate``), starts an aiosmtpd sink (its own process, counting what arrives) and the
real notifier (``python -m mailexec serve notifier``, default settings: aggregation
window 2 s, log level info; no policy service, so policy defaults apply), then per
variant:

- ``single``: N ``bounce`` events, one recipient each, N distinct messages;
- ``ten``:    N/10 messages whose 10 recipients fail together: 10 events per message,
  published back to back; aggregation must give exactly one DSN per message listing
  all 10 recipients.

The ``mail.messages`` rows (~1 KiB, returned in full) are inserted first. Events are
published to the ``events`` exchange as fast as publisher confirms allow (``--rate R``:
paced at R events/s instead, to see whether the backlog levels off). The clock runs
from the first publish until every expected DSN has reached the sink. Printed:
events/s, notifier CPU per event (utime+stime from /proc/PID/stat, before/after), the
sink's CPU per DSN, the peak backlog (``notifier.events`` ready messages; outbox rows
not yet sent), the notifier's peak RSS, the load average, and whether every message got
exactly one DSN with the right recipients. The database and vhost are dropped at the
end. ``--profile DIR`` records the notifier with py-spy (``.venv/bin/pip install
py-spy``; numbers are then a little lower).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import orjson

from bench.common import (
    CLK_TCK,
    ROOT,
    FileTail,
    free_port,
    loadavg,
    self_cpu_s,
    vm_hwm_kib,
    wait_ready,
)
from shared import bodies as body_rows

PG_ADMIN = os.environ.get("MAILEXEC_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
RCPT_DOMAIN = "rcpt.bench.example"
ORIGINAL = (
    b"From: Sender <sender@bench.example>\r\nTo: user@rcpt.bench.example\r\n"
    b"Subject: bench\r\nMessage-ID: <bench@bench.example>\r\n"
    b"Date: Wed, 25 Nov 2026 20:00:00 +0000\r\n\r\n" + (b"x" * 76 + b"\r\n") * 12
)  # ~1.1 KiB, returned in full (RET defaults to FULL for bounces)


def say(msg: str) -> None:
    print(f"notifier_rate: {msg}", flush=True)


def rabbitmqctl(*args: str, check: bool = True) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=check, capture_output=True, timeout=180)


async def pg_admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


# ---------------------------------------------------------------- the SMTP sink (own process)


def run_sink(port: int, out: str) -> None:
    """aiosmtpd on 127.0.0.1:port; one line per accepted DSN appended to ``out``:
    ``<X-Mailexec-Message-ID> <number of Final-Recipient fields> <rcpt>``."""
    import uvloop
    from aiosmtpd.smtp import SMTP

    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            data: bytes = envelope.original_content or b""
            mid = b"-"
            at = data.find(b"X-Mailexec-Message-ID: ")
            if at >= 0:
                end = data.find(b"\r\n", at)
                mid = data[at + 23 : end]
            n = data.count(b"\r\nFinal-Recipient: ")
            rcpt = ",".join(envelope.rcpt_tos).encode()
            os.write(fd, mid + b" " + str(n).encode() + b" " + rcpt + b"\n")
            return "250 2.0.0 OK queued"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        handler = Handler()
        server = await loop.create_server(
            lambda: SMTP(handler, hostname="sink.bench", loop=loop), "127.0.0.1", port
        )
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        server.close()

    uvloop.run(main())


# ---------------------------------------------------------------- the run


@dataclass
class Env:
    db: str
    vhost: str
    env: dict[str, str]
    workdir: Path

    @property
    def db_url(self) -> str:
        return PG_ADMIN.rsplit("/", 1)[0] + f"/{self.db}"

    @property
    def amqp_url(self) -> str:
        return self.env["MAILEXEC_AMQP_URL"]


def make_env(log_level: str) -> Env:
    run_id = secrets.token_hex(5)
    name = f"mailexec_nrate_{run_id}"
    workdir = Path(tempfile.mkdtemp(prefix="nrate."))
    env = dict(os.environ)
    env.update(
        {
            "MAILEXEC_DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}",
            "MAILEXEC_AMQP_URL": f"amqp://guest:guest@127.0.0.1:5672/{name}",
            "MAILEXEC_SMTP_URL": f"smtp://127.0.0.1:{free_port()}",
            "MAILEXEC_POLICY_URL": f"http://127.0.0.1:{free_port()}",  # none: defaults apply
            "MAILEXEC_NOTIFIER_PORT": str(free_port()),
            "MAILEXEC_REPORTING_MTA": "bench.localdomain",
            "MAILEXEC_ADMIN_TOKEN": "nrate-admin-" + secrets.token_hex(8),
            "MAILEXEC_INGEST_TOKEN": "nrate-mta-" + secrets.token_hex(8),
            "MAILEXEC_SERVICE_TOKEN": "nrate-service-" + secrets.token_hex(8),
            "MAILEXEC_LOG_LEVEL": log_level,
        }
    )
    return Env(name, name, env, workdir)


def event_body(mid: uuid.UUID, sender: str, address: str, now: datetime) -> bytes:
    return orjson.dumps(
        {
            "v": 1,
            "kind": "bounce",
            "event_id": str(uuid.uuid4()),
            "message_id": str(mid),
            "occurred_at": now.isoformat(),
            "envelope": {
                "sender": sender,
                "envid": None,
                "ret": None,
                "notify": ["FAILURE", "DELAY"],
                "arrival_date": (now - timedelta(minutes=1)).isoformat(),
            },
            "recipients": [
                {
                    "address": address,
                    "orcpt": None,
                    "action": "failed",
                    "status": "5.3.0",
                    "diagnostic": "program mymail exited with status 1: cannot open spool",
                    "last_attempt": now.isoformat(),
                    "will_retry_until": None,
                    "program": "mymail",
                    "exit_status": 1,
                    "signal": None,
                    "timed_out": False,
                    "output_excerpt": "cannot open spool\n",
                }
            ],
            "notice": None,
        }
    )


class SinkLog(FileTail):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.lines: list[bytes] = []

    def poll(self) -> int:
        self.lines.extend(self.new_lines().splitlines())
        return len(self.lines)

    def reset(self) -> None:
        self.poll()
        self.lines = []


def cpu_s(pid: int) -> float:
    return self_cpu_s(pid)


async def queue_depth(conn: aio_pika.abc.AbstractRobustConnection) -> int:
    channel = await conn.channel()
    try:
        q = await channel.declare_queue("notifier.events", passive=True)
        return int(q.declaration_result.message_count or 0)
    finally:
        await channel.close()


async def run_variant(
    e: Env, notifier_pid: int, sink_pid: int, sink: SinkLog, *, n: int, per_message: int, rate: float
) -> dict[str, Any]:
    messages = max(1, n // per_message)
    n = messages * per_message
    now = datetime.now(UTC)
    mids = [uuid.uuid4() for _ in range(messages)]
    senders = [f"s{i}@bench.example" for i in range(messages)]
    conn = await asyncpg.connect(e.db_url)
    try:
        await conn.execute("TRUNCATE mail.messages, mail.bodies, notifier.notifications, "
                           "notifier.seen_events CASCADE")
        await conn.copy_records_to_table(
            "messages",
            schema_name="mail",
            columns=["id", "sender", "notify", "size"],
            records=[
                (m, s, ["FAILURE", "DELAY"], len(ORIGINAL))
                for m, s in zip(mids, senders, strict=True)
            ],
        )
        await body_rows.copy(conn, ((m, [ORIGINAL]) for m in mids))
    finally:
        await conn.close()
    bodies = [
        event_body(m, s, f"u{k}@{RCPT_DOMAIN}", now)
        for m, s in zip(mids, senders, strict=True)
        for k in range(per_message)
    ]
    sink.reset()

    amqp = await aio_pika.connect_robust(e.amqp_url)
    channel = await amqp.channel(publisher_confirms=True)
    exchange = await channel.get_exchange("events")
    peak_depth = peak_pending = 0
    depth_samples: list[tuple[float, int, int]] = []

    async def sample_depth(t0: float, stop: asyncio.Event) -> None:
        nonlocal peak_depth, peak_pending
        db = await asyncpg.connect(e.db_url)
        while not stop.is_set():
            try:
                d = await queue_depth(amqp)
                pending = int(await db.fetchval(
                    "SELECT count(*) FROM notifier.notifications WHERE state = 'pending'"))
            except Exception:  # noqa: BLE001 - sampling only
                d = pending = -1
            depth_samples.append((round(time.monotonic() - t0, 2), d, pending))
            peak_depth = max(peak_depth, d)
            peak_pending = max(peak_pending, pending)
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except TimeoutError:
                pass
        await db.close()

    async def publish_one(body: bytes) -> None:
        await exchange.publish(
            aio_pika.Message(body, content_type="application/json",
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key="bounce", mandatory=True, timeout=30,
        )

    load_before = loadavg()
    cpu0, sink0, self0 = cpu_s(notifier_pid), cpu_s(sink_pid), time.process_time()
    t0 = time.monotonic()
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_depth(t0, stop))
    window = 256
    if rate > 0:
        for i in range(0, n, 10):  # ticks of 10 events
            due = t0 + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await asyncio.gather(*(publish_one(b) for b in bodies[i : i + 10]))
    else:
        for i in range(0, n, window):
            await asyncio.gather(*(publish_one(b) for b in bodies[i : i + window]))
    t_published = time.monotonic()
    deadline = t_published + 600
    while sink.poll() < messages:
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.01)
    t_done = time.monotonic()
    cpu1, sink1, self1 = cpu_s(notifier_pid), cpu_s(sink_pid), time.process_time()
    await asyncio.sleep(max(0.0, 2.5))  # a second DSN for some message would show up now
    sink.poll()
    stop.set()
    await sampler
    await amqp.close()

    # exactly one DSN per message, listing all its recipients
    per_mid: dict[str, list[int]] = {}
    for line in sink.lines:
        mid, count, _ = line.decode().split(" ", 2)
        per_mid.setdefault(mid, []).append(int(count))
    expected = {str(m) for m in mids}
    missing = len(expected - per_mid.keys())
    extra_dsns = sum(len(v) - 1 for v in per_mid.values())
    wrong_rcpts = sum(1 for v in per_mid.values() if v != [per_message])
    elapsed = t_done - t0
    return {
        "variant": "single" if per_message == 1 else f"{per_message}_rcpts",
        "events": n,
        "messages": messages,
        "rate_target": rate or None,
        "publish_s": round(t_published - t0, 3),
        "elapsed_s": round(elapsed, 3),
        "events_per_s": round(n / elapsed, 1),
        "dsns_per_s": round(messages / elapsed, 1),
        "notifier_cpu_ms_per_event": round((cpu1 - cpu0) * 1000 / n, 3),
        "notifier_cpu_ms_per_dsn": round((cpu1 - cpu0) * 1000 / messages, 3),
        "notifier_cores": round((cpu1 - cpu0) / elapsed, 2),
        "sink_cpu_ms_per_dsn": round((sink1 - sink0) * 1000 / messages, 3),
        "bench_cpu_ms_per_event": round((self1 - self0) * 1000 / n, 3),
        "peak_queue_depth": peak_depth,
        "peak_outbox_pending": peak_pending,
        "final_queue_depth": depth_samples[-1][1] if depth_samples else None,
        "depth_samples": depth_samples,
        "notifier_peak_rss_mib": round((vm_hwm_kib(notifier_pid) or 0) / 1024, 1),
        "load_before": round(load_before, 2),
        "load_after": round(loadavg(), 2),
        "dsns_received": len(sink.lines),
        "missing": missing,
        "extra_dsns": extra_dsns,
        "wrong_recipient_count": wrong_rcpts,
        "ok": missing == 0 and extra_dsns == 0 and wrong_rcpts == 0,
    }


def stop_proc(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.notifier_rate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=int(os.environ.get("BENCH_N", 5000)), help="events per variant")
    ap.add_argument("--variants", default="single,ten", help="single, ten (10 recipients per message)")
    ap.add_argument("--rate", type=float, default=0.0,
                    help="pace publishing at this many events/s (0: flat out)")
    ap.add_argument("--reps", type=int, default=1, help="repetitions of each variant")
    ap.add_argument("--log-level", default="info", help="MAILEXEC_LOG_LEVEL of the notifier")
    ap.add_argument("--profile", metavar="DIR", help="py-spy the notifier into DIR (speedscope + raw)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (notifier log)")
    ap.add_argument("--verbose", action="store_true", help="print the backlog samples")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--sink", nargs=2, metavar=("PORT", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.sink:
        run_sink(int(args.sink[0]), args.sink[1])
        return

    e = make_env(args.log_level)
    sink_proc = notifier = spy = None
    results: list[dict[str, Any]] = []
    say(f"database and vhost {e.db}; work dir {e.workdir}; load average {loadavg():.2f}")
    try:
        asyncio.run(pg_admin(f'CREATE DATABASE "{e.db}"'))
        rabbitmqctl("add_vhost", e.vhost)
        rabbitmqctl("set_permissions", "-p", e.vhost, "guest", ".*", ".*", ".*")
        subprocess.run([sys.executable, "-m", "mailexec", "migrate"], env=e.env, cwd=ROOT,
                       check=True, capture_output=True)
        sink_out = e.workdir / "sink.log"
        sink_out.touch()
        port = e.env["MAILEXEC_SMTP_URL"].rsplit(":", 1)[1]
        sink_proc = subprocess.Popen(
            [sys.executable, "-m", "bench.notifier_rate", "--sink", port, str(sink_out)], cwd=ROOT
        )
        log = e.workdir / "notifier.log"
        with open(log, "ab") as lf:
            notifier = subprocess.Popen(
                [sys.executable, "-m", "mailexec", "serve", "notifier"],
                env=e.env, cwd=ROOT, stdout=lf, stderr=subprocess.STDOUT,
            )
        wait_ready(f"http://127.0.0.1:{e.env['MAILEXEC_NOTIFIER_PORT']}", notifier, log)
        if args.profile:
            out = Path(args.profile)
            out.mkdir(parents=True, exist_ok=True)
            spy = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(notifier.pid),
                 "-r", "250", "-f", "raw", "--nonblocking", "-o", str(out / "notifier.txt")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)
        sink = SinkLog(sink_out)
        per = {"single": 1, "ten": 10}
        for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
            for rep in range(args.reps):
                r = asyncio.run(
                    run_variant(e, notifier.pid, sink_proc.pid, sink, n=args.n, per_message=per[name],
                                rate=args.rate)
                )
                results.append(r)
                say(
                    f"{r['variant']:>9} rep {rep + 1}: {r['events_per_s']:7.1f} events/s "
                    f"({r['dsns_per_s']:.1f} DSNs/s), "
                    f"notifier CPU {r['notifier_cpu_ms_per_event']:.3f} ms/event "
                    f"({r['notifier_cpu_ms_per_dsn']:.3f} ms/DSN, {r['notifier_cores']} cores), "
                    f"sink {r['sink_cpu_ms_per_dsn']:.3f} ms/DSN, publish {r['publish_s']} s, "
                    f"peak backlog {r['peak_queue_depth']} queued/{r['peak_outbox_pending']} unsent, "
                    f"load {r['load_before']}->{r['load_after']}, "
                    f"notifier peak RSS {r['notifier_peak_rss_mib']} MiB, "
                    f"DSNs {r['dsns_received']} (missing {r['missing']}, extra {r['extra_dsns']}, "
                    f"wrong recipients {r['wrong_recipient_count']}) {'OK' if r['ok'] else 'NOT OK'}"
                )
                if args.rate or args.verbose:
                    samples = r["depth_samples"]
                    say("  backlog over time (s:queued/unsent): " + " ".join(
                        f"{t}:{d}/{p}" for t, d, p in samples[:: max(1, len(samples) // 25)]))
    finally:
        if spy is not None and spy.poll() is None:
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(60)
            except subprocess.TimeoutExpired:
                spy.kill()
        stop_proc(notifier)
        stop_proc(sink_proc)
        try:
            asyncio.run(pg_admin(f'DROP DATABASE IF EXISTS "{e.db}" WITH (FORCE)'))
        finally:
            rabbitmqctl("delete_vhost", e.vhost, check=False)
    if args.json:
        Path(args.json).write_text(json.dumps({"clk_tck": CLK_TCK, "results": results}, indent=1))
    if any(not r["ok"] for r in results):
        say(f"some variant lost or duplicated DSNs; notifier log kept in {e.workdir}")
    elif args.keep:
        say(f"notifier log kept in {e.workdir}")
    else:
        import shutil

        shutil.rmtree(e.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
