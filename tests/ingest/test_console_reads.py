"""What the console reads of ingest (issue 15), against a real ingest process:
the message listing for a user's own account and by sender, and the admin's dashboard
numbers (``GET /v1/status``) after real submissions."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from shared.auth import hash_token
from shared.topology import DELIVERIES_QUEUE, MONITORED_QUEUES
from tests.conftest import db_conn
from tests.ingest.conftest import drain_jobs
from tests.ingest.test_outages import wait_ready
from tests.ingest.test_submit import MSG, RFC822

BOB, CAROL, DAVE = "bob@example.org", "carol@example.org", "dave@example.org"
TOKENS = {BOB: "tok-console-bob", CAROL: "tok-console-carol", DAVE: "tok-console-dave"}


def as_user(account: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[account]}"}


@pytest.fixture
async def users(clean_db: None) -> None:
    conn = await db_conn()
    try:
        for account, token in TOKENS.items():
            await conn.execute(
                "INSERT INTO policy.tokens (id, token_hash, role, account, created_by) "
                "VALUES ($1, $2, 'user', $3, 'test')", uuid.uuid4(), hash_token(token), account)
    finally:
        await conn.close()


@pytest.fixture
async def c(ingest: Any, users: None, jobs_queue: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=ingest.url, timeout=20) as client:
        yield client


async def submit(c: httpx.AsyncClient, mta: dict[str, str], sender: str, *to: str) -> str:
    r = await c.post("/v1/messages", params=[("from", sender), *(("to", t) for t in to)],
                     content=MSG, headers={**mta, **RFC822})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


async def sql(statement: str, *args: Any) -> None:
    conn = await db_conn()
    try:
        await conn.execute(statement, *args)
    finally:
        await conn.close()


async def listing(c: httpx.AsyncClient, headers: dict[str, str], **params: Any) -> list[Any]:
    r = await c.get("/v1/messages", params=params, headers=headers)
    assert r.status_code == 200, r.text
    return list(r.json()["messages"])


async def test_a_user_lists_only_its_own_messages_and_recipients(
    c: httpx.AsyncClient, mta_headers: dict[str, str], admin_headers: dict[str, str]
) -> None:
    both = await submit(c, mta_headers, "a@example.net", "Bob@example.org", CAROL)
    only_carol = await submit(c, mta_headers, "a@example.net", CAROL)
    bob_alone = await submit(c, mta_headers, "", BOB)

    mine = await listing(c, as_user(BOB))
    assert [m["id"] for m in mine] == [bob_alone, both]  # newest first, carol's alone absent
    for m in mine:
        assert [r["account"] for r in m["recipients"]] == [BOB]  # never carol's recipient
        assert set(m) >= {"id", "sender", "received_at", "size", "recipients"}
        (rcpt,) = m["recipients"]
        assert rcpt["state"] == "queued" and rcpt["attempts"] == 0
        assert rcpt["created_at"] and rcpt["updated_at"] and rcpt["final_at"] is None
    assert mine[1]["recipients"][0]["address"] == "Bob@example.org"
    assert mine[0]["sender"] == "" and mine[1]["sender"] == "a@example.net"
    # recipient= naming its own account, in any spelling, is the same listing
    assert await listing(c, as_user(BOB), recipient="BOB@Example.ORG") == mine
    # another account's listing is refused, whatever the spelling
    for other in (CAROL, "Carol@Example.org", "nobody@example.org"):
        r = await c.get("/v1/messages", params={"recipient": other}, headers=as_user(BOB))
        assert r.status_code == 403 and r.json()["error"]["code"] == "wrong_account", r.text
    assert await listing(c, as_user(DAVE)) == []
    assert [m["id"] for m in await listing(c, as_user(CAROL))] == [only_carol, both]

    # the admin sees every recipient of every message
    everything = await listing(c, admin_headers)
    assert [m["id"] for m in everything] == [bob_alone, only_carol, both]
    assert [r["account"] for r in everything[2]["recipients"]] == [BOB, CAROL]
    # state= applies to the same recipient as the account filter
    await sql("UPDATE mail.recipients SET state = 'bounced', final_at = now() "
              "WHERE message_id = $1 AND account = $2", uuid.UUID(both), CAROL)
    assert await listing(c, as_user(BOB), state="bounced") == []
    assert [m["id"] for m in await listing(c, as_user(CAROL), state="bounced")] == [both]
    assert [m["id"] for m in await listing(c, admin_headers, recipient=BOB,
                                           state="bounced")] == []


async def test_sender_filter_and_paging(
    c: httpx.AsyncClient, mta_headers: dict[str, str], admin_headers: dict[str, str]
) -> None:
    ids = [await submit(c, mta_headers, "Alice@Example.NET", BOB) for _ in range(3)]
    other = await submit(c, mta_headers, "zed@example.net", BOB)
    null = await submit(c, mta_headers, "", BOB)
    # the domain's case does not matter, the local part's does (RFC 5321)
    assert [m["id"] for m in await listing(c, admin_headers, sender="Alice@example.net")] == \
        ids[::-1]
    assert await listing(c, admin_headers, sender="alice@example.net") == []
    assert [m["id"] for m in await listing(c, admin_headers, sender="")] == [null]
    assert [m["id"] for m in await listing(c, admin_headers, sender="<>")] == [null]
    assert [m["id"] for m in await listing(c, admin_headers, sender="zed@EXAMPLE.net")] == [other]
    r = await c.get("/v1/messages", params={"sender": "not an address"}, headers=admin_headers)
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_sender"
    # paging through the sender's messages
    r = await c.get("/v1/messages", params={"sender": "Alice@example.net", "limit": 2},
                    headers=admin_headers)
    first = r.json()
    assert [m["id"] for m in first["messages"]] == ids[:0:-1] and first["next_cursor"]
    r = await c.get("/v1/messages", params={"sender": "Alice@example.net", "limit": 2,
                                            "cursor": first["next_cursor"]},
                    headers=admin_headers)
    assert [m["id"] for m in r.json()["messages"]] == ids[:1]
    # a user may page and filter its own listing the same way
    assert [m["id"] for m in await listing(c, as_user(BOB), sender="")] == [null]


async def test_listing_roles(
    c: httpx.AsyncClient, mta_headers: dict[str, str], service_headers: dict[str, str]
) -> None:
    for headers in (mta_headers, service_headers):
        r = await c.get("/v1/messages", headers=headers)
        assert r.status_code == 403 and r.json()["error"]["code"] == "wrong_role"
    r = await c.get("/v1/messages")
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_token"
    r = await c.get("/v1/messages", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401


async def test_status_numbers_after_real_submissions(
    c: httpx.AsyncClient, mta_headers: dict[str, str], admin_headers: dict[str, str]
) -> None:
    empty = (await c.get("/v1/status", headers=admin_headers)).json()
    assert empty["recipients"] == {"queued": 0, "running": 0, "suspended": 0, "deferred": 0,
                                   "on_hold": 0}
    assert empty["last_hour"] == {"received": 0, "delivered": 0, "bounced": 0}
    assert empty["oldest_waiting_s"] is None and empty["latest_failures"] == []
    assert empty["queues_error"] is None
    assert set(empty["queues"]) == set(MONITORED_QUEUES)
    assert empty["queues"][DELIVERIES_QUEUE] == 0

    ids = [await submit(c, mta_headers, "a@example.net", BOB, CAROL) for _ in range(4)]
    old = await submit(c, mta_headers, "a@example.net", DAVE)
    # what the executor would have recorded: delivered, bounced (with its run), deferred,
    # running; one message received two hours ago and still waiting
    await sql("UPDATE mail.recipients SET state = 'delivered', attempts = 1, final_at = now(), "
              "updated_at = now() WHERE message_id = $1", uuid.UUID(ids[0]))
    await sql("UPDATE mail.recipients SET state = 'bounced', attempts = 1, status = '5.3.0', "
              "diagnostic = 'program mymail exited with status 1', final_at = now(), "
              "updated_at = now() WHERE message_id = $1 AND account = $2",
              uuid.UUID(ids[1]), BOB)
    await sql("UPDATE mail.recipients SET state = 'deferred', attempts = 2, status = '4.3.0', "
              "updated_at = now() - interval '1 minute' WHERE message_id = $1 AND account = $2",
              uuid.UUID(ids[2]), CAROL)
    await sql("UPDATE mail.recipients SET state = 'running' WHERE message_id = $1",
              uuid.UUID(ids[3]))
    await sql("UPDATE mail.messages SET received_at = now() - interval '2 hours' WHERE id = $1",
              uuid.UUID(old))
    await sql("UPDATE mail.recipients SET created_at = now() - interval '2 hours' "
              "WHERE message_id = $1", uuid.UUID(old))
    conn = await db_conn()
    try:
        bob_bounced = await conn.fetchval(
            "SELECT id FROM mail.recipients WHERE message_id = $1 AND account = $2",
            uuid.UUID(ids[1]), BOB)
        carol_deferred = await conn.fetchval(
            "SELECT id FROM mail.recipients WHERE message_id = $1 AND account = $2",
            uuid.UUID(ids[2]), CAROL)
        for attempt, exit_status, output in ((1, 75, "try later"), (2, 75, "still later")):
            await conn.execute(
                "INSERT INTO mail.program_runs (recipient_id, attempt, program, position, "
                "exit_status, timed_out, output_excerpt, duration_ms, started_at) "
                "VALUES ($1, $2, 'mymail', 0, $3, false, $4, 7, now())",
                carol_deferred, attempt, exit_status, output)
        await conn.execute(
            "INSERT INTO mail.program_runs (recipient_id, attempt, program, position, "
            "exit_status, signal, timed_out, output_excerpt, duration_ms, started_at) "
            "VALUES ($1, 1, 'mymail', 0, 1, NULL, false, 'boom', 12, now())", bob_bounced)
    finally:
        await conn.close()

    r = await c.get("/v1/status", headers=admin_headers)
    assert r.status_code == 200, r.text
    status = r.json()
    assert status["recipients"] == {"queued": 3, "running": 2, "suspended": 0, "deferred": 1,
                                    "on_hold": 0}
    assert status["last_hour"] == {"received": 4, "delivered": 2, "bounced": 1}
    assert 7190 < status["oldest_waiting_s"] < 7400
    assert status["queues"][DELIVERIES_QUEUE] == 9  # one job per recipient, none consumed
    bounced, deferred = status["latest_failures"]
    assert (bounced["message_id"], bounced["recipient"], bounced["state"], bounced["status"]) \
        == (ids[1], BOB, "bounced", "5.3.0")
    assert bounced["at"]
    assert [(p["program"], p["exit_status"], p["signal"], p["output_excerpt"], p["duration_ms"])
            for p in bounced["programs"]] == [("mymail", 1, None, "boom", 12)]
    assert (deferred["recipient"], deferred["state"], deferred["attempts"]) == \
        (CAROL, "deferred", 2)
    # the runs of the last attempt only
    assert [p["output_excerpt"] for p in deferred["programs"]] == ["still later"]


async def test_status_is_for_admins_only(
    c: httpx.AsyncClient, mta_headers: dict[str, str], service_headers: dict[str, str]
) -> None:
    for headers in (mta_headers, service_headers, as_user(BOB)):
        r = await c.get("/v1/status", headers=headers)
        assert r.status_code == 403 and r.json()["error"]["code"] == "wrong_role", r.text
    assert (await c.get("/v1/status")).status_code == 401
    assert (await c.get("/v1/status", headers={"Authorization": "Bearer nope"})).status_code == 401


async def test_status_without_the_broker_still_answers_from_the_database(
    services: Any, proxy_factory: Any, mx_env: dict[str, str], mta_headers: dict[str, str],
    admin_headers: dict[str, str], clean_db: None, jobs_queue: str,
) -> None:
    amqp = make_url(mx_env["MAILEXEC_AMQP_URL"])
    proxy = proxy_factory(amqp.port or 5672)
    proxied = mx_env["MAILEXEC_AMQP_URL"].replace(f":{amqp.port}/", f":{proxy.port}/")
    ingest = services("ingest", extra_env={"MAILEXEC_AMQP_URL": proxied})
    async with httpx.AsyncClient(base_url=ingest.url, timeout=20) as c:
        await submit(c, mta_headers, "a@example.net", BOB)
        proxy.cut()
        await wait_ready(ingest.url, 503)
        r = await c.get("/v1/status", headers=admin_headers)
        assert r.status_code == 200, r.text
        status = r.json()
        assert status["queues"] is None and "RabbitMQ" in status["queues_error"]
        assert status["recipients"]["queued"] == 1 and status["last_hour"]["received"] == 1
        proxy.restore()
        await wait_ready(ingest.url, 200)
        status = (await c.get("/v1/status", headers=admin_headers)).json()
        assert status["queues_error"] is None and status["queues"][DELIVERIES_QUEUE] == 1
    await drain_jobs(jobs_queue, expect=1)
