"""End to end: crashes, broker outages, duplicates, hostile programs, poison and corrupt jobs."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aio_pika
import httpx
import orjson

from testing.mailrows import BODY_OF_M
from tests.conftest import db_conn, free_port
from tests.executor.helpers import EventTap, Homes, Pipeline, message
from tests.helpers import TcpProxy


def ran(home: Path) -> list[str]:
    log = home / "order.log"
    return log.read_text().split() if log.exists() else []


async def job_json(mid: str) -> bytes:
    conn = await db_conn()
    try:
        r = await conn.fetchrow(
            f"SELECT r.id, r.address, m.sender, m.notify, m.received_at, m.size, {BODY_OF_M} AS body "
            "FROM mail.recipients r JOIN mail.messages m ON m.id = r.message_id "
            "WHERE m.id = $1", uuid.UUID(mid))
    finally:
        await conn.close()
    import base64

    return orjson.dumps({
        "v": 1, "job_id": str(r["id"]), "message_id": mid, "recipient": r["address"],
        "attempt": 0, "next_program": 0, "sender": r["sender"], "notify": list(r["notify"]),
        "arrival": r["received_at"].isoformat(), "size": r["size"],
        "body_b64": base64.b64encode(r["body"]).decode(),
    })


async def publish(amqp_url: str, exchange: str, routing_key: str, body: bytes,
                  headers: dict | None = None) -> None:
    conn = await aio_pika.connect(amqp_url)
    try:
        ch = await conn.channel(publisher_confirms=True)
        ex = await ch.get_exchange(exchange) if exchange else ch.default_exchange
        await ex.publish(aio_pika.Message(body, headers=headers or {},
                                          delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                         routing_key=routing_key)
    finally:
        await conn.close()


async def metric(pipe: Pipeline, name: str, label: str) -> float:
    async with httpx.AsyncClient() as c:
        text = (await c.get(pipe.procs["executor"].url + "/metrics", timeout=5)).text
    for line in text.splitlines():
        if line.startswith(f'{name}{{outcome="{label}"}}'):
            return float(line.split()[-1])
    return 0.0


async def test_duplicate_job_of_a_recorded_outcome_does_not_run_again(
    pipe: Pipeline, homes: Homes
) -> None:
    uid, gid, home = homes.make()
    address = f"dup{uid}@example.org"
    await pipe.account(address, uid, gid, home, ["probe"])
    mid = await pipe.submit(address, message())
    assert (await pipe.wait_state(mid))["state"] == "delivered"
    before = await metric(pipe, "mailexec_deliveries_total", "skipped")
    body = await job_json(mid)
    await publish(pipe.env["MAILEXEC_AMQP_URL"], "deliveries", "deliveries", body)
    await publish(pipe.env["MAILEXEC_AMQP_URL"], "deliveries", "deliveries", body)
    for _ in range(50):
        if await metric(pipe, "mailexec_deliveries_total", "skipped") >= before + 2:
            break
        await asyncio.sleep(0.1)
    assert await metric(pipe, "mailexec_deliveries_total", "skipped") >= before + 2
    assert ran(home) == ["probe"]
    rcpt = (await pipe.message(mid))["recipients"][0]
    assert (rcpt["state"], rcpt["attempts"]) == ("delivered", 1)


async def test_worker_killed_mid_run_runs_the_job_again_on_restart(
    pipe: Pipeline, homes: Homes
) -> None:
    uid, gid, home = homes.make()
    address = f"crash{uid}@example.org"
    await pipe.account(address, uid, gid, home, ["probe", "slowonce"])
    mid = await pipe.submit(address, message())
    for _ in range(100):
        if (home / "slowonce.once").exists():
            break
        await asyncio.sleep(0.1)
    assert (home / "slowonce.once").exists(), "slowonce never started"
    assert (await pipe.message(mid))["recipients"][0]["state"] == "running"
    pipe.procs["executor"].kill()  # SIGKILL, mid-run
    await asyncio.to_thread(subprocess.run, ["pkill", "-KILL", "-u", str(uid)], check=False)
    pipe.start("executor")
    rcpt = await pipe.wait_state(mid, timeout=20)
    assert rcpt["state"] == "delivered", rcpt
    assert ran(home) == ["probe", "slowonce", "probe", "slowonce"]  # at-least-once


async def test_broker_connection_cut_during_a_run_recovers(
    pipe: Pipeline, homes: Homes, tap: EventTap
) -> None:
    proxy = TcpProxy(5672)
    await proxy.start()
    url = pipe.env["MAILEXEC_AMQP_URL"].replace(":5672/", f":{proxy.port}/")
    # aio-pika's reconnect back-off is 5 s; 1 s here exercises the same recovery, sooner
    url += ("&" if "?" in url else "?") + "reconnect_interval=1"
    pipe.procs["executor"].stop()
    await pipe.astart("executor", {"MAILEXEC_AMQP_URL": url})
    try:
        uid, gid, home = homes.make()
        address = f"cut{uid}@example.org"
        await pipe.account(address, uid, gid, home, ["nap", "probe"])
        mid = await pipe.submit(address, message(), notify="SUCCESS")
        for _ in range(100):
            if ran(home) == ["nap"]:
                break
            await asyncio.sleep(0.05)
        assert ran(home) == ["nap"]
        await proxy.cut()
        await asyncio.sleep(3)  # the chain finishes and records while the broker is away
        await proxy.restore()
        rcpt = await pipe.wait_state(mid, timeout=30)
        assert rcpt["state"] == "delivered"
        assert ran(home) == ["nap", "probe"]  # exactly once: redelivery saw the recorded outcome
        await tap.event(mid, "delivered", timeout=30)  # re-announced after the reconnect
        mid2 = await pipe.submit(address, message())
        assert (await pipe.wait_state(mid2, timeout=30))["state"] == "delivered"
        # and it stops when told to while the broker does not answer at all: stopped from
        # this thread, which also runs the proxy, so nothing it sends is forwarded (a
        # partition). Its consumer's cancel used to wait for ever: SIGKILL 15 s later.
        executor = pipe.procs["executor"]
        started = time.monotonic()
        executor.stop()
        assert executor.proc is not None and executor.proc.returncode == 0, \
            executor.log_tail()
        assert time.monotonic() - started < 8, executor.log_tail()
    finally:
        pipe.procs["executor"].stop()
        await proxy.cut()
        pipe.start("executor")


async def test_event_publish_failing_on_a_live_channel_requeues_the_job(
    pipe: Pipeline, tap: EventTap
) -> None:
    """The outcome is recorded but its event can't be published while the job's own
    channel stays up (here the `events` exchange is gone: the broker closes only the
    publishing channel). The job must be handed back and its bounce announced once
    publishing works again — not left unacked on a live channel, where it never comes
    back (found by the chaos run: DSNs missing, deferrals stuck)."""
    from shared import topology

    conn = await aio_pika.connect(pipe.env["MAILEXEC_AMQP_URL"])
    try:
        await (await conn.channel()).exchange_delete(topology.EVENTS_EXCHANGE)
        mid = await pipe.submit(f"gone{uuid.uuid4().hex[:8]}@example.org", message())
        rcpt = await pipe.wait_state(mid)  # recorded; its publish has just failed
        assert (rcpt["state"], rcpt["status"]) == ("bounced", "5.1.1")
    finally:
        # The exchange and its bindings back, the tap's too, while the job waits the
        # executor's pause before it is requeued and announced again.
        await topology.declare(await conn.channel())
        await tap.rebind()
        await conn.close()
    ev = await tap.event(mid, "bounce", timeout=30)
    assert ev["recipients"][0]["status"] == "5.1.1"
    mid2 = await pipe.submit(f"gone{uuid.uuid4().hex[:8]}@example.org", message())
    await tap.event(mid2, "bounce", timeout=30)


async def test_hostile_program_leaves_the_worker_healthy(
    pipe: Pipeline, homes: Homes, tap: EventTap
) -> None:
    uid, gid, home = homes.make()
    address = f"hostile{uid}@example.org"
    await pipe.account(address, uid, gid, home, ["hostile"])
    await pipe.settings(program_timeout_s=3)
    try:
        mid = await pipe.submit(address, message())
        rcpt = await pipe.wait_state(mid, timeout=30)
    finally:
        await pipe.settings(program_timeout_s=60)
    assert rcpt["state"] == "bounced"
    run = rcpt["programs"][0]
    assert run["timed_out"] is True
    rc, euid = (home / "hostile.setuid").read_text().split()
    assert rc == "-1" and euid == str(uid)
    notice = await tap.event(mid, "admin_notice")
    assert len(notice["recipients"][0]["output_excerpt"]) <= 65536
    left: list[str] = []
    for _ in range(50):  # killing and reaping 255 processes takes a moment
        pgrep = await asyncio.to_thread(subprocess.run, ["pgrep", "-u", str(uid)],
                                        capture_output=True, text=True)
        left = pgrep.stdout.split()
        if not left:
            break
        await asyncio.sleep(0.2)
    assert left == [], f"processes of uid {uid} survived: {left}"
    async with httpx.AsyncClient() as c:
        assert (await c.get(pipe.procs["executor"].url + "/healthz")).status_code == 200
    uid2, gid2, home2 = homes.make()
    await pipe.account(f"after{uid2}@example.org", uid2, gid2, home2, ["probe"])
    mid2 = await pipe.submit(f"after{uid2}@example.org", message())
    assert (await pipe.wait_state(mid2))["state"] == "delivered"


async def test_corrupt_job_becomes_an_admin_notice(pipe: Pipeline, tap: EventTap) -> None:
    marker = uuid.uuid4().hex
    await publish(pipe.env["MAILEXEC_AMQP_URL"], "deliveries", "deliveries",
                  b'{"v": 1, "garbage": "' + marker.encode() + b'"}')
    ev = await tap.wait_for(lambda e: e["kind"] == "admin_notice"
                            and e["notice"]["reason"] == "corrupt"
                            and marker in e["notice"]["detail"])
    assert ev["message_id"] is None


async def test_poison_job_is_bounced_with_admin_notice(
    pipe: Pipeline, homes: Homes, tap: EventTap
) -> None:
    uid, gid, home = homes.make()
    address = f"poison{uid}@example.org"
    await pipe.account(address, uid, gid, home, ["probe"])
    await pipe.settings(suspended=True)
    try:
        mid = await pipe.submit(address, message())
        await pipe.wait_state(mid, ("suspended",))
        await publish(pipe.env["MAILEXEC_AMQP_URL"], "deliveries.dlx", "", await job_json(mid),
                      headers={"x-death": [{"reason": "delivery_limit", "queue": "deliveries",
                                            "count": 5}]})
        rcpt = await pipe.wait_state(mid, ("bounced",))
    finally:
        await pipe.settings(suspended=False)
    assert rcpt["status"] == "5.3.0"
    await tap.event(mid, "bounce")
    notice = await tap.event(mid, "admin_notice")
    assert notice["notice"]["reason"] == "poison"
    await asyncio.sleep(1.5)  # the held copy comes back and is skipped
    assert ran(home) == []
    assert (await pipe.message(mid))["recipients"][0]["state"] == "bounced"


async def test_dead_lettered_job_of_a_recorded_bounce_announces_it_again(
    pipe: Pipeline, tap: EventTap
) -> None:
    """A worker that recorded a bounce but lost the broker before publishing, until the
    job ran out of redeliveries: the dead-letter handler must announce the recorded
    outcome (same event id), not drop it because the row is already final."""
    mid = await pipe.submit(f"gone{uuid.uuid4().hex[:8]}@example.org", message())
    rcpt = await pipe.wait_state(mid)
    assert (rcpt["state"], rcpt["status"]) == ("bounced", "5.1.1")
    first = await tap.event(mid, "bounce")
    await publish(pipe.env["MAILEXEC_AMQP_URL"], "deliveries.dlx", "", await job_json(mid),
                  headers={"x-death": [{"reason": "delivery_limit", "queue": "deliveries",
                                        "count": 5}]})
    again = await tap.wait_for(lambda e: e.get("message_id") == mid and e["kind"] == "bounce"
                               and e is not first)
    assert again["event_id"] == first["event_id"]  # the notifier drops it if it had gone out
    assert again["recipients"][0]["status"] == "5.1.1"
    assert tap.matching(mid, "admin_notice") == []  # no poison notice: nothing was poisoned
    rows = (await pipe.message(mid))["recipients"]
    assert (rows[0]["state"], rows[0]["status"]) == ("bounced", "5.1.1")


async def test_refuses_to_start_on_unsafe_trusted_dir(pipe: Pipeline, tmp_path: Path) -> None:
    unsafe = tmp_path / "trusted"
    unsafe.mkdir()
    os.chmod(unsafe, 0o777)
    env = dict(pipe.env, MAILEXEC_TRUSTED_DIR=str(unsafe))
    proc = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "mailexec", "serve", "executor"], env=env,
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 78
    assert "refusing to start" in proc.stderr and "writable" in proc.stderr




async def test_a_dead_spawner_stops_the_dropped_executor_for_a_restart(
    pipe: Pipeline, homes: Homes
) -> None:
    """After the drop to the service user nobody can start another spawner: an executor
    whose spawner died exits at its next run (to be restarted whole) instead of deferring
    every delivery forever; the job goes back and the next executor delivers it."""
    main = pipe.procs["executor"]
    await asyncio.to_thread(main.stop)
    try:
        sp = await pipe.astart("executor", key="spawner-loss",
                               extra_env={"MAILEXEC_EXECUTOR_METRICS_PORT": str(free_port())})
        assert sp.proc is not None
        spawners = _spawners_of(sp.proc.pid)
        assert len(spawners) == 1, spawners
        os.kill(spawners[0], 9)
        uid, gid, home = homes.make()
        address = f"lost{uid}@example.org"
        await pipe.account(address, uid, gid, home, ["probe"])
        mid = await pipe.submit(address, message())
        for _ in range(300):
            if sp.proc.poll() is not None:
                break
            await asyncio.sleep(0.05)
        assert sp.proc.poll() is not None, "the executor kept running without a spawner"
        assert "can't start another one" in sp.log_tail()
        pipe.procs.pop("spawner-loss", None)
    finally:
        await asyncio.to_thread(main.start)
    assert (await pipe.wait_state(mid, timeout=30))["state"] == "delivered"
    assert ran(home) == ["probe"]


def _spawners_of(executor: int) -> list[int]:
    return [int(pid) for pid in os.listdir("/proc") if pid.isdigit()
            and _parent_of(int(pid)) == executor
            and os.path.realpath(f"/proc/{pid}/exe").endswith("mailexec-spawner")]


def _parent_of(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    return int(stat.rsplit(")", 1)[1].split()[1])
