"""Retention end to end (issue 17): real policy, ingest, executor (and notifier) processes,
ingest's purge running every 0.3 s — as eagerly as it can.

- a delivered message keeps its records, not its body (``body_held``), and the metrics
  say so;
- a RET=FULL bounce whose body a purge could take between the executor's commit and
  the notifier's rendering (no notifier runs then; it starts later) returns the whole
  original, and only then the body goes;
- ``queue delete`` removes the body at once, a dead letter's too; nothing can be
  requeued once it is gone;
- a copy of a job whose body is gone is acked without running, failing or bouncing.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest

from services.ingest.publish_outbox import job_body
from shared import topology
from tests.cli.helpers import mx
from tests.conftest import db_conn
from tests.executor.helpers import ADMIN, MTA, Homes, Pipeline, message
from tests.notifier.conftest import SmtpSink

PURGE = {"MAILEXEC_RETENTION_INTERVAL_S": "0.3", "MAILEXEC_INLINE_BODY_BYTES": "100"}


@pytest.fixture(scope="module")
async def pipe(mx_env: dict[str, str], tprog: bytes, tmp_path_factory: pytest.TempPathFactory
               ) -> AsyncIterator[Pipeline]:
    """This module's pipeline: ingest purges every 0.3 s; bodies never travel in the job."""
    p = Pipeline(mx_env, tmp_path_factory.mktemp("logs"))
    try:
        p.start("policy")
        p.start("ingest", extra_env=PURGE)
        p.start("executor", extra_env=PURGE)
        await p.settings(mode="secure", suspended=False, safe_user=None,
                         delay_warning_after_s=14400, max_queue_lifetime_s=432000,
                         program_timeout_s=60, dsn_include_output=True)
        for name in ("probe", "exit1"):
            await p.register(name, tprog)
        yield p
    finally:
        p.stop_all()


async def account(pipe: Pipeline, homes: Homes, prefix: str, programs: list[str]
                  ) -> tuple[str, Path]:
    uid, gid, home = homes.make()
    address = f"{prefix}{uid}@example.org"
    await pipe.account(address, uid, gid, home, programs)
    return address, home


async def wait_body(pipe: Pipeline, mid: str, held: bool, timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        msg = await pipe.message(mid)
        if msg["body_held"] is held:
            return msg
        assert time.monotonic() < deadline, f"body_held still {msg['body_held']}: {msg}"
        await asyncio.sleep(0.1)


async def metric(url: str, name: str, labels: str = "") -> float:
    async with httpx.AsyncClient(timeout=5) as c:
        text = (await c.get(url + "/metrics")).text
    m = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


async def test_a_delivered_message_keeps_its_records_not_its_body(
        pipe: Pipeline, homes: Homes) -> None:
    address, home = await account(pipe, homes, "kept", ["probe"])
    ingest = pipe.procs["ingest"].url
    before = await metric(ingest, "mailexec_retention_purged_total", '{kind="body"}')
    body = message("retention", body="z" * 500 + "\n")
    mid = await pipe.submit(address, body)
    assert (await pipe.message(mid))["body_held"] in (True, False)
    rcpt = await pipe.wait_state(mid)
    assert rcpt["state"] == "delivered"
    msg = await wait_body(pipe, mid, held=False)
    assert msg["size"] == len(body) and msg["recipients"][0]["programs"][0]["exit_status"] == 0
    shown = mx(pipe.env, "messages", "show", mid)
    assert shown.returncode == 0 and re.search(r"body\s+.*deleted", shown.stdout), shown.stdout
    assert await metric(ingest, "mailexec_retention_purged_total", '{kind="body"}') > before
    async with httpx.AsyncClient(timeout=5) as c:
        assert re.search(r"^mailexec_bodies_held \S+$", (await c.get(ingest + "/metrics")).text,
                         re.M)

    # a copy of its job comes back (a duplicate publish), the body long gone: acked,
    # nothing runs, nothing is recorded or announced
    conn = await db_conn()
    try:
        row = await conn.fetchrow("SELECT id, attempts, updated_at FROM mail.recipients "
                                  "WHERE message_id = $1", uuid.UUID(mid))
    finally:
        await conn.close()
    copy = job_body(job_id=row["id"], message_id=uuid.UUID(mid), recipient=address,
                    sender="alice@example.net", envid=None, ret=None,
                    notify=["FAILURE", "DELAY"], arrival=datetime.fromisoformat(msg["received_at"]),
                    size=len(body), body=None, inline_limit=100)
    skipped = await metric(pipe.procs["executor"].url, "mailexec_deliveries_total",
                           '{outcome="skipped"}')
    connection = await aio_pika.connect(pipe.env["MAILEXEC_AMQP_URL"])
    try:
        channel = await connection.channel()
        exchange = await channel.get_exchange(topology.DELIVERIES_EXCHANGE)
        await exchange.publish(aio_pika.Message(copy, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                               routing_key=topology.DELIVERIES_ROUTING_KEY)
    finally:
        await connection.close()
    deadline = time.monotonic() + 5
    while await metric(pipe.procs["executor"].url, "mailexec_deliveries_total",
                       '{outcome="skipped"}') <= skipped:
        assert time.monotonic() < deadline, "the copy was not skipped"
        await asyncio.sleep(0.1)
    after = (await pipe.message(mid))["recipients"][0]
    assert (after["state"], after["attempts"], after["updated_at"]) == (
        "delivered", row["attempts"], row["updated_at"].isoformat())
    assert (home / "order.log").read_text().split() == ["probe"]


async def test_a_ret_full_bounce_returns_the_message_though_purges_ran_before_the_notifier(
        pipe: Pipeline, homes: Homes) -> None:
    address, _ = await account(pipe, homes, "bounced", ["exit1"])
    # events of earlier modules (no notifier ran there) must not flood this one's
    connection = await aio_pika.connect(pipe.env["MAILEXEC_AMQP_URL"])
    try:
        channel = await connection.channel()
        await (await channel.get_queue(topology.NOTIFIER_QUEUE)).purge()
    finally:
        await connection.close()
    original = message("RET=FULL please", body="MARKER-OF-THE-WHOLE-BODY\n" + "b" * 300 + "\n")
    async with httpx.AsyncClient(base_url=pipe.ingest_url, headers=MTA, timeout=10) as c:
        r = await c.post("/v1/messages", params=[("from", "alice@example.net"), ("to", address),
                                                 ("ret", "FULL")],
                         content=original, headers={"Content-Type": "message/rfc822"})
    assert r.status_code == 202, r.text
    mid = r.json()["id"]
    assert (await pipe.wait_state(mid))["state"] == "bounced"
    await asyncio.sleep(1.0)  # three purge passes and more, before any notifier runs
    assert (await pipe.message(mid))["body_held"] is True

    sink = await SmtpSink().start()
    notifier = await pipe.astart("notifier", {"MAILEXEC_SMTP_URL": sink.url,
                                              "MAILEXEC_DSN_AGGREGATE_WINDOW_S": "0.2"})
    try:
        deadline = time.monotonic() + 15
        while not [m for m in sink.to("alice@example.net") if mid.encode() in m.data]:
            assert time.monotonic() < deadline, "no bounce reached the sink"
            await asyncio.sleep(0.1)
        (dsn,) = [m for m in sink.to("alice@example.net") if mid.encode() in m.data]
        assert b"MARKER-OF-THE-WHOLE-BODY" in dsn.data and b"b" * 300 in dsn.data
        await wait_body(pipe, mid, held=False)  # rendered: now it goes
    finally:
        notifier.kill()  # its graceful stop waits seconds for nothing this test needs
        await sink.stop()


async def test_queue_delete_removes_the_body_at_once_and_nothing_is_requeued_without_it(
        pipe: Pipeline, homes: Homes) -> None:
    address, home = await account(pipe, homes, "deleted", ["probe"])
    await pipe.settings(suspended=True)  # the recipients wait (the held copies go stale)
    try:
        await delete_while_suspended(pipe, address)
    finally:
        await pipe.settings(suspended=False)
    assert not (home / "order.log").exists()


async def delete_while_suspended(pipe: Pipeline, address: str) -> None:
    waiting = await pipe.submit(address, message("to delete", body="d" * 300 + "\n"))
    dead = await pipe.submit(address, message("dead letter", body="e" * 300 + "\n"))
    for mid in (waiting, dead):
        await pipe.wait_state(mid, ("suspended",))
    async with httpx.AsyncClient(base_url=pipe.ingest_url, headers=ADMIN, timeout=10) as c:
        r = await c.post(f"/v1/queue/{waiting}/delete")
        assert r.status_code == 200, r.text
        assert r.json()["body_held"] is False
        assert (await pipe.message(waiting))["body_held"] is False

        # a dead letter keeps its body (it could be requeued) until it is deleted
        conn = await db_conn()
        try:
            await conn.execute(
                "UPDATE mail.recipients SET state = 'bounced', final_at = now(), "
                "dead_lettered_at = now(), generation = generation + 1 WHERE message_id = $1",
                uuid.UUID(dead))
        finally:
            await conn.close()
        await asyncio.sleep(1.0)
        assert (await pipe.message(dead))["body_held"] is True
        cli = mx(pipe.env, "queue", "delete", dead)
        assert cli.returncode == 0 and "body: deleted" in cli.stdout, cli.stdout
        audit = (await c.get("/v1/queue/actions", params={"message_id": dead})).json()
        assert audit["actions"][0]["detail"]["body_held"] is False
        r = await c.post(f"/v1/queue/dead/{dead}/requeue")
        assert r.status_code == 409 and "body has been deleted" in r.text
        r = await c.post(f"/v1/queue/{dead}/delete")
        assert r.status_code == 409  # nothing left to delete
