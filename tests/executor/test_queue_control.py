"""`mailexec queue` end to end (issue 16): real policy, ingest and executor processes.

The retry ladder is slowed to 4 s here, so the copy of a deferred job that waits in a
retry queue comes back *during* the test, after the operator's action: it must be
dropped as stale (``mailexec_stale_jobs_total``) and the program must run exactly once
after retry-now and after hold/release. Programs append their name to ``order.log`` in
the account's home, which is how runs are counted.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest

from services.ingest.publish_outbox import job_body
from tests.cli.helpers import mx
from tests.conftest import db_conn
from tests.executor.conftest import PROGRAM_NAMES
from tests.executor.helpers import ADMIN, MTA, EventTap, Homes, Pipeline, message

RETRY_S = "4"


@pytest.fixture(scope="module")
async def pipe(mx_env: dict[str, str], tprog: bytes, tmp_path_factory: pytest.TempPathFactory
               ) -> AsyncIterator[Pipeline]:
    """This module's own pipeline: the executor (and ingest's next-try) use 4 s retries."""
    p = Pipeline(mx_env, tmp_path_factory.mktemp("logs"))
    slow = {"MAILEXEC_EXECUTOR_RETRY_DELAYS_S": RETRY_S}
    try:
        p.start("policy")
        p.start("ingest", extra_env=slow)
        p.start("executor", extra_env=slow)
        await p.settings(mode="secure", suspended=False, safe_user=None,
                         delay_warning_after_s=14400, max_queue_lifetime_s=432000,
                         program_timeout_s=60, dsn_include_output=True)
        for name in PROGRAM_NAMES:
            await p.register(name, tprog)
        yield p
    finally:
        p.stop_all()


def ran(home: Path) -> list[str]:
    log = home / "order.log"
    return log.read_text().split() if log.exists() else []


async def queue(pipe: Pipeline, mid: str, action: str, *, headers: dict[str, str] = ADMIN,
                expect: int = 200, **params: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=pipe.ingest_url, headers=headers, timeout=10) as c:
        r = await c.post(f"/v1/queue/{mid}/{action}", params=params)
    assert r.status_code == expect, r.text
    return r.json()  # type: ignore[no-any-return]


async def stale(pipe: Pipeline) -> float:
    port = pipe.env["MAILEXEC_EXECUTOR_METRICS_PORT"]
    async with httpx.AsyncClient(timeout=5) as c:
        text = (await c.get(f"http://127.0.0.1:{port}/metrics")).text
    m = re.search(r"^mailexec_stale_jobs_total (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


async def wait_stale(pipe: Pipeline, above: float, timeout: float = 12.0) -> None:
    deadline = time.monotonic() + timeout
    while await stale(pipe) <= above:
        assert time.monotonic() < deadline, "the superseded copy never came back as stale"
        await asyncio.sleep(0.2)


async def account(pipe: Pipeline, homes: Homes, prefix: str, programs: list[str]
                  ) -> tuple[str, Path]:
    uid, gid, home = homes.make()
    address = f"{prefix}{uid}@example.org"
    await pipe.account(address, uid, gid, home, programs)
    return address, home


async def test_retry_now_runs_once_and_the_waiting_copy_is_dropped_as_stale(
    pipe: Pipeline, homes: Homes
) -> None:
    address, home = await account(pipe, homes, "retry", ["flaky", "probe"])
    mid = await pipe.submit(address, message())
    rcpt = await pipe.wait_state(mid, ("deferred",))
    assert rcpt["attempts"] == 1 and ran(home) == ["flaky"]
    before = await stale(pipe)
    done = await queue(pipe, mid, "retry")
    assert [(r["result"], r["from"], r["state"]) for r in done["recipients"]] == [
        ("changed", "deferred", "queued")]
    rcpt = await pipe.wait_state(mid, timeout=3)  # now, not after the 4 s retry delay
    assert rcpt["state"] == "delivered" and rcpt["attempts"] == 2
    await wait_stale(pipe, before)  # the copy in deliveries.retry.5s came back: dropped
    assert ran(home) == ["flaky", "flaky", "probe"]
    await queue(pipe, mid, "retry", expect=409)  # final now


async def test_hold_then_release_runs_once(pipe: Pipeline, homes: Homes) -> None:
    address, home = await account(pipe, homes, "hold", ["flaky", "probe"])
    mid = await pipe.submit(address, message())
    await pipe.wait_state(mid, ("deferred",))
    before = await stale(pipe)
    done = await queue(pipe, mid, "hold")
    assert done["recipients"][0]["state"] == "on_hold" and done["changed"] == 1
    again = await queue(pipe, mid, "hold")  # idempotent
    assert again["changed"] == 0 and again["recipients"][0]["result"] == "unchanged"
    await queue(pipe, mid, "retry", expect=409)  # held means held
    await wait_stale(pipe, before)  # its retry copy arrived while held: dropped
    assert (await pipe.message(mid))["recipients"][0]["state"] == "on_hold"
    assert ran(home) == ["flaky"]
    await queue(pipe, mid, "release")
    rcpt = await pipe.wait_state(mid, timeout=5)
    assert rcpt["state"] == "delivered"
    assert ran(home) == ["flaky", "flaky", "probe"]
    await queue(pipe, mid, "release", expect=409)


async def test_mixed_queue_listing_held_ignores_resume_and_deletes(
    pipe: Pipeline, homes: Homes, tap: EventTap
) -> None:
    sender = f"ops{time.monotonic_ns() % 10**8}@example.net"
    a_ok, h_ok = await account(pipe, homes, "done", ["probe"])
    a_def, h_def = await account(pipe, homes, "later", ["exit75"])
    a_sus, h_sus = await account(pipe, homes, "parked", ["probe"])
    a_held, h_held = await account(pipe, homes, "held", ["probe"])
    m_ok = await pipe.submit(a_ok, message(), sender=sender)
    m_def = await pipe.submit(a_def, message(), sender=sender)
    await pipe.wait_state(m_ok)
    await pipe.wait_state(m_def, ("deferred",))
    flushed = mx(pipe.env, "queue", "retry", "--all", "--json")  # postqueue -f
    assert flushed.returncode == 0, flushed.stderr
    assert {"address": a_def, "result": "changed", "from": "deferred"}.items() <= next(
        r for r in json.loads(flushed.stdout)["recipients"] if r["address"] == a_def).items()
    deadline = time.monotonic() + 5
    while (await pipe.message(m_def))["recipients"][0]["attempts"] < 2:
        assert time.monotonic() < deadline, "retry --all did not run the deferred one now"
        await asyncio.sleep(0.1)
    await pipe.wait_state(m_def, ("deferred",))
    await pipe.settings(suspended=True)
    try:
        m_sus = await pipe.submit(a_sus, message(), sender=sender)
        m_held = await pipe.submit(a_held, message(), sender=sender)
        await pipe.wait_state(m_sus, ("suspended",))
        await pipe.wait_state(m_held, ("suspended",))
        await queue(pipe, m_held, "hold", recipient=a_held.upper())  # any spelling
        # releasing a recipient that is not held changes nothing (200)
        assert (await queue(pipe, m_sus, "release"))["changed"] == 0

        listing = mx(pipe.env, "queue", "list", "--sender", sender, "--state", "delivered",
                     "--state", "deferred", "--state", "suspended", "--state", "on_hold")
        assert listing.returncode == 0, listing.stderr
        (pipe.log_dir / "queue-list.txt").write_text(listing.stdout)
        print("\n$ mailexec queue list --sender ... (4 states)\n" + listing.stdout)
        lines = listing.stdout.splitlines()
        for mid, state in ((m_ok, "delivered"), (m_def, "deferred"), (m_sus, "suspended"),
                           (m_held, "on_hold")):
            assert any(mid in ln and state in ln for ln in lines), (mid, state, listing.stdout)
        assert "4.3.0" in listing.stdout  # the deferred one's last status
        as_json = mx(pipe.env, "queue", "list", "--sender", sender, "--json")
        states = {r["message_id"]: r["state"] for r in json.loads(as_json.stdout)["recipients"]}
        assert states == {m_def: "deferred", m_sus: "suspended", m_held: "on_hold"}

        # delete silently: no more runs, no DSN
        deleted = mx(pipe.env, "queue", "delete", m_def)
        assert deleted.returncode == 0 and "deferred -> deleted" in deleted.stdout
        assert mx(pipe.env, "queue", "retry", m_def).returncode == 65  # 409: final
    finally:
        await pipe.settings(suspended=False)
    await pipe.wait_state(m_sus, timeout=5)  # resume runs the parked one
    await asyncio.sleep(1.5)  # the held queue's recheck (1 s) has passed
    assert (await pipe.message(m_held))["recipients"][0]["state"] == "on_hold"
    assert ran(h_held) == [] and ran(h_sus) == ["probe"]
    await queue(pipe, m_held, "release")
    assert (await pipe.wait_state(m_held, timeout=5))["state"] == "delivered"
    assert ran(h_held) == ["probe"]
    rcpt = (await pipe.message(m_def))["recipients"][0]
    assert rcpt["state"] == "deleted" and ran(h_def) == ["exit75", "exit75"]
    assert not tap.matching(m_def, "bounce")


async def test_delete_with_bounce_sends_the_sender_a_dsn_and_is_audited(
    pipe: Pipeline, homes: Homes, tap: EventTap
) -> None:
    address, home = await account(pipe, homes, "bye", ["exit75"])
    mid = await pipe.submit(address, message(), sender="carol@example.net")
    await pipe.wait_state(mid, ("deferred",))
    done = await queue(pipe, mid, "delete", bounce="true")
    assert done["recipients"][0]["state"] == "bounced" and done["published"]
    ev = await tap.event(mid, "bounce", timeout=5)
    assert ev["envelope"]["sender"] == "carol@example.net"
    assert ev["recipients"][0]["status"] == "5.0.0"
    assert "administrator" in ev["recipients"][0]["diagnostic"]
    rcpt = (await pipe.message(mid))["recipients"][0]
    assert (rcpt["state"], rcpt["status"]) == ("bounced", "5.0.0")
    await queue(pipe, mid, "delete", expect=409)  # bounced is final
    await queue(pipe, mid, "hold", expect=409)
    async with httpx.AsyncClient(base_url=pipe.ingest_url, headers=ADMIN, timeout=10) as c:
        audit = (await c.get("/v1/queue/actions", params={"message_id": mid})).json()["actions"]
    assert [(a["action"], a["actor"], a["recipients"]) for a in audit] == [
        ("delete_bounce", "admin", [address])]
    async with httpx.AsyncClient(base_url=pipe.ingest_url, headers=ADMIN, timeout=10) as c:
        # a cursor outside bigint (found by schemathesis: it was a 500) is the client's error
        for bad in (-(2**90), 0, 2**63):
            r = await c.get("/v1/queue/actions", params={"before": bad})
            assert r.status_code in (400, 422) and "error" in r.json(), (bad, r.text)
    assert audit[0]["detail"]["results"][0]["from"] == "deferred"
    assert audit[0]["bounce_events"] and not audit[0]["events_pending"]
    cli = mx(pipe.env, "queue", "actions", "--message", mid)
    assert cli.returncode == 0 and "delete_bounce" in cli.stdout
    assert ran(home) == ["exit75"]


async def test_queue_control_is_for_admins_and_names_what_is_missing(pipe: Pipeline) -> None:
    mid = "6f1c3c36-4b0e-4d39-9d0e-0d5b8f6f1a11"
    async with httpx.AsyncClient(base_url=pipe.ingest_url, headers=MTA, timeout=10) as c:
        assert (await c.get("/v1/queue")).status_code == 403
        assert (await c.get("/v1/queue/actions")).status_code == 403
        assert (await c.get("/v1/queue/dead")).status_code == 403
        for path in (f"{mid}/hold", f"{mid}/retry", "retry-all", f"dead/{mid}/requeue"):
            assert (await c.post(f"/v1/queue/{path}")).status_code == 403, path
    async with httpx.AsyncClient(base_url=pipe.ingest_url, timeout=10) as c:
        assert (await c.post(f"/v1/queue/{mid}/hold")).status_code == 401
    await queue(pipe, mid, "hold", expect=404)
    await queue(pipe, mid, "explode", expect=404)
    async with httpx.AsyncClient(base_url=pipe.ingest_url, headers=ADMIN, timeout=10) as c:
        assert (await c.get("/v1/queue", params={"state": "lost"})).status_code == 400
        assert (await c.get("/v1/queue", params={"older_than": "soon"})).status_code == 400
    assert mx(pipe.env, "queue", "hold", mid).returncode == 66
    assert mx(pipe.env, "queue", "list", extra_env={"MAILEXEC_ADMIN_TOKEN": "nope"}
              ).returncode == 77


async def test_dead_letters_listed_shown_and_requeued_once(pipe: Pipeline, homes: Homes) -> None:
    """A job dead-lettered (here: published to ``deliveries.dlx`` by hand, as the quorum
    queue does at its delivery limit) is bounced by the executor's dead-letter handler
    and marked; ``dead requeue`` queues it again at a new generation: it runs once."""
    address, home = await account(pipe, homes, "dead", ["flaky", "probe"])
    mid = await pipe.submit(address, message())
    await pipe.wait_state(mid, ("deferred",))
    conn = await db_conn()
    try:
        row = await conn.fetchrow(
            "SELECT r.id, r.attempts, m.sender, m.received_at, m.size FROM mail.recipients r "
            "JOIN mail.messages m ON m.id = r.message_id WHERE r.message_id = $1::uuid", mid)
    finally:
        await conn.close()
    body = job_body(job_id=row["id"], message_id=uuid.UUID(mid), recipient=address,
                    sender=row["sender"], envid=None, ret=None, notify=["FAILURE", "DELAY"],
                    arrival=row["received_at"], size=row["size"], body=None, inline_limit=0,
                    attempt=row["attempts"])
    amqp = await aio_pika.connect(pipe.env["MAILEXEC_AMQP_URL"])
    try:
        ch = await amqp.channel()
        dlx = await ch.get_exchange("deliveries.dlx")
        await dlx.publish(aio_pika.Message(body, content_type="application/json"), "")
    finally:
        await amqp.close()
    rcpt = await pipe.wait_state(mid, ("bounced",), timeout=5)
    assert rcpt["status"] == "5.3.0"

    dead = mx(pipe.env, "queue", "dead", "list", "--json")
    assert dead.returncode == 0, dead.stderr
    assert mid in {r["message_id"] for r in json.loads(dead.stdout)["recipients"]}
    shown = mx(pipe.env, "queue", "dead", "show", mid)
    assert shown.returncode == 0 and "dead-lettered" in shown.stdout
    before = await stale(pipe)
    requeued = mx(pipe.env, "queue", "dead", "requeue", mid)
    assert requeued.returncode == 0 and "bounced -> queued" in requeued.stdout, requeued.stdout
    assert (await pipe.wait_state(mid, timeout=5))["state"] == "delivered"
    await wait_stale(pipe, before)  # the deferral's copy in the retry queue: dropped
    assert ran(home) == ["flaky", "flaky", "probe"]
    assert mx(pipe.env, "queue", "dead", "requeue", mid).returncode == 65  # delivered now
    assert mx(pipe.env, "queue", "dead", "show", mid).returncode == 66  # not dead any more
