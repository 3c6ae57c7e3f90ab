"""POST /v1/messages against a real ingest process, PostgreSQL and RabbitMQ."""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from shared.auth import hash_token
from shared.bodies import CHUNK as BODY_CHUNK
from testing.mailrows import BODY_OF_M, store_body
from tests.conftest import db_conn
from tests.ingest.conftest import MAX_BYTES, drain_jobs

MSG = b"From: alice@example.net\r\nTo: bob@example.org\r\nSubject: hi\r\n\r\nhello\r\n"
RFC822 = {"Content-Type": "message/rfc822"}


@pytest.fixture
async def client(ingest: Any, mta_headers: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=ingest.url, headers=mta_headers, timeout=20) as c:
        yield c


async def post(client: httpx.AsyncClient, params: Any, body: bytes = MSG, **kw: Any) -> httpx.Response:
    headers = {**RFC822, **kw.pop("headers", {})}
    return await client.post("/v1/messages", params=params, content=body, headers=headers, **kw)


async def counts() -> tuple[int, int]:
    conn = await db_conn()
    try:
        m = await conn.fetchval("SELECT count(*) FROM mail.messages")
        r = await conn.fetchval("SELECT count(*) FROM mail.recipients")
        return int(m), int(r)
    finally:
        await conn.close()


async def test_accepted_message_is_stored_and_one_job_per_recipient_is_queued(
    client: httpx.AsyncClient, clean_db: None, jobs_queue: str
) -> None:
    r = await post(client, [("from", "Alice@Example.NET"), ("to", "Bob@example.org"),
                            ("to", "bob@EXAMPLE.org"), ("to", "carol@example.org"),
                            ("envid", "QQ+2B1"), ("ret", "hdrs"), ("notify", "success,failure")])
    assert r.status_code == 202, r.text
    body = r.json()
    mid = body["id"]
    assert body["recipients"] == [
        {"address": "Bob@example.org", "status": "queued"},  # duplicates collapse by account
        {"address": "carol@example.org", "status": "queued"},
    ]
    conn = await db_conn()
    try:
        msg = await conn.fetchrow(f"SELECT *, {BODY_OF_M} AS body FROM mail.messages m "
                                  "WHERE id = $1", uuid.UUID(mid))
        rcpts = await conn.fetch(
            "SELECT * FROM mail.recipients WHERE message_id = $1 ORDER BY address", uuid.UUID(mid)
        )
    finally:
        await conn.close()
    assert msg["sender"] == "Alice@example.net"
    assert (msg["envid"], msg["ret"], list(msg["notify"])) == ("QQ+2B1", "HDRS", ["SUCCESS", "FAILURE"])
    assert bytes(msg["body"]) == MSG and msg["size"] == len(MSG)
    assert [(x["address"], x["account"], x["state"]) for x in rcpts] == [
        ("Bob@example.org", "bob@example.org", "queued"),
        ("carol@example.org", "carol@example.org", "queued"),
    ]
    jobs = await drain_jobs(jobs_queue, expect=2)
    assert len(jobs) == 2
    by_rcpt = {j["recipient"]: j for j in jobs}
    job = by_rcpt["Bob@example.org"]
    assert job["_props"] == {"delivery_mode": 2, "content_type": "application/json"}
    assert job["job_id"] == str(next(x["id"] for x in rcpts if x["address"] == "Bob@example.org"))
    assert job["message_id"] == mid
    assert job["v"] == 1 and job["attempt"] == 0 and job["next_program"] == 0
    assert job["sender"] == "Alice@example.net" and job["orcpt"] is None
    assert job["notify"] == ["SUCCESS", "FAILURE"] and job["ret"] == "HDRS" and job["envid"] == "QQ+2B1"
    assert job["size"] == len(MSG) and base64.b64decode(job["body_b64"]) == MSG
    assert job["arrival"].startswith(msg["received_at"].isoformat()[:19])
    # published flag set shortly after the confirms
    for _ in range(50):
        conn = await db_conn()
        try:
            left = await conn.fetchval("SELECT count(*) FROM mail.recipients WHERE NOT published")
        finally:
            await conn.close()
        if left == 0:
            break
        await asyncio.sleep(0.05)
    assert left == 0


async def test_large_body_is_not_inlined_and_null_sender_defaults(
    client: httpx.AsyncClient, clean_db: None, jobs_queue: str
) -> None:
    big = MSG + b"x" * 5000  # the module's ingest inlines <= 1000 bytes
    r = await post(client, {"from": "", "to": "bob@example.org"}, big)
    assert r.status_code == 202, r.text
    (job,) = await drain_jobs(jobs_queue, expect=1)
    assert "body_b64" not in job and job["size"] == len(big)
    assert job["sender"] == "" and job["notify"] == ["FAILURE", "DELAY"] and job["ret"] is None


@pytest.mark.parametrize(
    "params, code",
    [
        ({"to": "bob@example.org"}, "bad_sender"),  # from missing
        ({"from": "a b@example.net", "to": "bob@example.org"}, "bad_sender"),
        ({"from": "a@example.net"}, "no_recipients"),
        ({"from": "a@example.net", "to": ""}, "bad_recipient"),
        ({"from": "a@example.net", "to": "bob"}, "bad_recipient"),
        ({"from": "a@example.net", "to": "bob@example.org\r\nX: y"}, "bad_recipient"),
        ({"from": "a@example.net", "to": "bob@example.org", "notify": "NEVER,FAILURE"}, "bad_notify"),
        ({"from": "a@example.net", "to": "bob@example.org", "notify": "SOMETIMES"}, "bad_notify"),
        ({"from": "a@example.net", "to": "bob@example.org", "ret": "ALL"}, "bad_ret"),
        ({"from": "a@example.net", "to": "bob@example.org", "envid": "a b"}, "bad_envid"),
        ({"from": "a@example.net", "to": "bob@example.org", "envid": "x" * 101}, "bad_envid"),
    ],
)
async def test_bad_envelope_is_400_and_stores_nothing(
    client: httpx.AsyncClient, clean_db: None, params: dict[str, str], code: str
) -> None:
    r = await post(client, params)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == code
    assert await counts() == (0, 0)


async def test_too_many_recipients_is_400(client: httpx.AsyncClient, clean_db: None) -> None:
    params = [("from", "a@example.net")] + [("to", f"u{i}@example.org") for i in range(1001)]
    r = await post(client, params)
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_recipients"


async def test_auth_401_and_403(ingest: Any, clean_db: None, service_headers: dict[str, str]) -> None:
    params = {"from": "a@example.net", "to": "bob@example.org"}
    async with httpx.AsyncClient(base_url=ingest.url) as c:
        r = await c.post("/v1/messages", params=params, content=MSG, headers=RFC822)
        assert r.status_code == 401
        r = await c.post("/v1/messages", params=params, content=MSG,
                         headers={**RFC822, "Authorization": "Bearer nope"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"
        r = await c.post("/v1/messages", params=params, content=MSG,
                         headers={**RFC822, **service_headers})
        assert r.status_code == 403 and r.json()["error"]["code"] == "wrong_role"
    assert await counts() == (0, 0)


async def test_submit_fast_path_answers_like_every_other_route(
    ingest: Any, client: httpx.AsyncClient, clean_db: None, jobs_queue: str
) -> None:
    """POST /v1/messages is served by services/ingest/fastpath.py, the rest by FastAPI:
    the same NUL check, the same error shape, the same headers, and the endpoint still
    documented in the OpenAPI schema."""
    r = await client.post("/v1/messages?from=a%00b@example.net&to=bob@example.org",
                          content=MSG, headers=RFC822)
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_nul_byte"
    async with httpx.AsyncClient(base_url=ingest.url) as anonymous:
        r = await anonymous.post("/v1/messages", params={"to": "bob@example.org"}, content=MSG,
                                 headers=RFC822)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert set(r.json()) == {"error"} and r.json()["error"]["code"] == "missing_token"
    # the last `from` wins, every `to` counts, as FastAPI reads repeated parameters
    params = [("from", "x@example.net"), ("from", "a@example.net"),
              ("to", "bob@example.org"), ("to", "carol@example.org")]
    r = await post(client, params)
    assert r.status_code == 202, r.text
    assert [x["address"] for x in r.json()["recipients"]] == ["bob@example.org", "carol@example.org"]
    conn = await db_conn()
    try:
        sender = await conn.fetchval("SELECT sender FROM mail.messages WHERE id = $1",
                                     uuid.UUID(r.json()["id"]))
    finally:
        await conn.close()
    assert sender == "a@example.net"
    assert len(await drain_jobs(jobs_queue, expect=2)) == 2
    # methods other than POST still reach FastAPI
    r = await client.delete("/v1/messages")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    schema = (await client.get("/openapi.json")).json()
    assert "post" in schema["paths"]["/v1/messages"]


async def test_wrong_content_type_is_415(client: httpx.AsyncClient, clean_db: None) -> None:
    r = await client.post("/v1/messages", params={"from": "", "to": "b@example.org"}, content=MSG,
                          headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and "message/rfc822" in r.json()["error"]["message"]


async def _raw(port: int, request: bytes, body_chunks: list[bytes] | None = None) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        for chunk in body_chunks or []:
            if reader.at_eof():
                break
            try:
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
            except ConnectionError:
                break
        return await asyncio.wait_for(reader.read(65536), 10)
    finally:
        writer.close()


def _head(mta_headers: dict[str, str], extra: str = "") -> bytes:
    return (
        "POST /v1/messages?from=a%40example.net&to=b%40example.org HTTP/1.1\r\nHost: ingest\r\n"
        f"Authorization: {mta_headers['Authorization']}\r\nContent-Type: message/rfc822\r\n"
        f"{extra}\r\n"
    ).encode()


async def test_no_length_is_411(ingest: Any, clean_db: None, mta_headers: dict[str, str]) -> None:
    resp = await _raw(ingest.port, _head(mta_headers))
    assert resp.startswith(b"HTTP/1.1 411"), resp[:200]
    assert await counts() == (0, 0)


async def test_declared_oversize_is_413(client: httpx.AsyncClient, clean_db: None) -> None:
    r = await post(client, {"from": "", "to": "b@example.org"}, b"x" * (MAX_BYTES + 1))
    assert r.status_code == 413
    assert r.json()["error"]["message"].startswith("5.2.3")
    assert r.json()["error"]["details"]["status"] == "5.2.3"
    assert await counts() == (0, 0)


async def test_chunked_oversize_is_cut_off_while_streaming(
    ingest: Any, clean_db: None, mta_headers: dict[str, str]
) -> None:
    # 16 MiB offered in 64 KiB chunks against a 200 kB limit: the answer comes early
    chunks = [b"x" * 65536] * 256
    resp = await _raw(ingest.port, _head(mta_headers, "Transfer-Encoding: chunked\r\n"), chunks)
    assert resp.startswith(b"HTTP/1.1 413"), resp[:200]
    assert b"5.2.3" in resp
    assert await counts() == (0, 0)


async def test_chunked_body_within_limit_is_accepted(
    client: httpx.AsyncClient, clean_db: None, jobs_queue: str
) -> None:
    """A chunked body of uneven pieces is stored byte for byte as mail.bodies rows of at
    most BODY_CHUNK bytes at contiguous offsets (the pieces are cut, never joined)."""
    pieces = [MSG, os.urandom(20_000), b"y" * 7_999, MSG]
    sent = b"".join(pieces)

    async def gen() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    r = await client.post("/v1/messages", params={"from": "", "to": "b@example.org"},
                          content=gen(), headers=RFC822)
    assert r.status_code == 202, r.text
    conn = await db_conn()
    try:
        size = await conn.fetchval("SELECT size FROM mail.messages")
        rows = await conn.fetch("SELECT off, chunk FROM mail.bodies ORDER BY off")
    finally:
        await conn.close()
    assert size == len(sent)
    assert b"".join(r["chunk"] for r in rows) == sent
    assert all(len(r["chunk"]) <= BODY_CHUNK for r in rows) and len(rows) >= 4
    assert [r["off"] for r in rows] == [sum(len(x["chunk"]) for x in rows[:i])
                                        for i in range(len(rows))]


async def test_idempotency_key_gives_same_id_and_queues_once(
    client: httpx.AsyncClient, clean_db: None, jobs_queue: str
) -> None:
    params = [("from", "a@example.net"), ("to", "b@example.org"), ("to", "c@example.org")]
    key = {"Idempotency-Key": "mta-queue-id-4711"}
    first = await post(client, params, headers=key)
    assert first.status_code == 202
    again = await post(client, params, headers=key)
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    # concurrent duplicates of a fresh key: one message, one job per recipient
    key2 = {"Idempotency-Key": "mta-queue-id-4712"}
    rs = await asyncio.gather(*(post(client, params, headers=key2) for _ in range(8)))
    assert {r.status_code for r in rs} == {202}
    assert len({r.json()["id"] for r in rs}) == 1
    assert await counts() == (2, 4)
    jobs = await drain_jobs(jobs_queue, expect=4, timeout=3)
    assert len(jobs) == 4
    assert len({j["job_id"] for j in jobs}) == 4


async def test_get_message_for_mta_admin_and_user(
    client: httpx.AsyncClient, ingest: Any, clean_db: None, admin_headers: dict[str, str]
) -> None:
    r = await post(
        client, [("from", "a@example.net"), ("to", "Bob@example.org"), ("to", "carol@example.org")]
    )
    mid = r.json()["id"]
    conn = await db_conn()
    try:
        bob_id = await conn.fetchval(
            "SELECT id FROM mail.recipients WHERE account = 'bob@example.org'"
        )
        await conn.execute(
            "UPDATE mail.recipients SET state = 'bounced', attempts = 1, status = '5.3.0', "
            "diagnostic = 'program mymail exited with status 1', final_at = now() WHERE id = $1",
            bob_id,
        )
        await conn.execute(
            "INSERT INTO mail.program_runs (recipient_id, attempt, program, position, exit_status, "
            "timed_out, output_excerpt, duration_ms, started_at) "
            "VALUES ($1, 1, 'mymail', 0, 1, false, 'boom', 12, now())",
            bob_id,
        )
        for account, token in (("bob@example.org", "tok-bob"), ("dave@example.org", "tok-dave")):
            await conn.execute(
                "INSERT INTO policy.tokens (id, token_hash, role, account, created_by) "
                "VALUES ($1, $2, 'user', $3, 'test')",
                uuid.uuid4(), hash_token(token), account,
            )
    finally:
        await conn.close()

    r = await client.get(f"/v1/messages/{mid}")
    assert r.status_code == 200
    full = r.json()
    assert full["envelope"] == {"from": "a@example.net", "to": ["Bob@example.org", "carol@example.org"],
                                "envid": None, "ret": None, "notify": ["FAILURE", "DELAY"]}
    assert full["size"] == len(MSG) and full["received_at"]
    bob = full["recipients"][0]
    assert (bob["state"], bob["attempts"], bob["status"]) == ("bounced", 1, "5.3.0")
    assert bob["final_at"] and bob["updated_at"]
    (run,) = bob["programs"]
    assert (run["program"], run["exit_status"], run["signal"], run["output_excerpt"], run["duration_ms"]) == (
        "mymail", 1, None, "boom", 12)
    assert full["recipients"][1]["state"] == "queued" and full["recipients"][1]["programs"] == []

    async with httpx.AsyncClient(base_url=ingest.url) as c:
        r = await c.get(f"/v1/messages/{mid}", headers=admin_headers)
        assert r.status_code == 200 and r.json() == full
        r = await c.get(f"/v1/messages/{mid}", headers={"Authorization": "Bearer tok-bob"})
        assert r.status_code == 200
        mine = r.json()
        assert mine["envelope"]["to"] == ["Bob@example.org"]  # other recipients stay hidden
        assert [x["address"] for x in mine["recipients"]] == ["Bob@example.org"]
        r = await c.get(f"/v1/messages/{mid}", headers={"Authorization": "Bearer tok-dave"})
        assert r.status_code == 404
        r = await c.post("/v1/messages", params={"from": "", "to": "x@example.org"}, content=MSG,
                         headers={**RFC822, "Authorization": "Bearer tok-bob"})
        assert r.status_code == 403
        r = await c.get(f"/v1/messages/{uuid.uuid4()}", headers=admin_headers)
        assert r.status_code == 404
        r = await c.get("/v1/messages", params={"recipient": "bob@example.org"}, headers=admin_headers)
        assert r.status_code == 200 and [m["id"] for m in r.json()["messages"]] == [mid]
        # a user lists its own account's messages (tests/ingest/test_console_reads.py)
        r = await c.get("/v1/messages", headers={"Authorization": "Bearer tok-bob"})
        assert r.status_code == 200 and [m["id"] for m in r.json()["messages"]] == [mid]
        r = await c.get("/v1/messages", params={"recipient": "carol@example.org"},
                        headers={"Authorization": "Bearer tok-bob"})
        assert r.status_code == 403


async def test_relay_publishes_rows_left_unpublished(
    ingest: Any, clean_db: None, jobs_queue: str
) -> None:
    mid, rid = uuid.uuid4(), uuid.uuid4()
    conn = await db_conn()
    try:
        await conn.execute(
            "INSERT INTO mail.messages (id, sender, notify, size, received_at) "
            "VALUES ($1, 'a@example.net', '{FAILURE,DELAY}', $2, now() - interval '1 minute')",
            mid, len(MSG),
        )
        await store_body(conn, mid, MSG)
        await conn.execute(
            "INSERT INTO mail.recipients (id, message_id, address, account, created_at) "
            "VALUES ($1, $2, 'Zed@example.org', 'zed@example.org', now() - interval '1 minute')",
            rid, mid,
        )
        jobs = await drain_jobs(jobs_queue, expect=1, timeout=8)
        assert [j["job_id"] for j in jobs] == [str(rid)]
        assert jobs[0]["recipient"] == "Zed@example.org" and jobs[0]["message_id"] == str(mid)
        assert base64.b64decode(jobs[0]["body_b64"]) == MSG
        # marked in the relay's transaction, which commits just after the broker confirmed
        for _ in range(40):
            if await conn.fetchval("SELECT published FROM mail.recipients WHERE id = $1", rid):
                break
            await asyncio.sleep(0.05)
        assert await conn.fetchval("SELECT published FROM mail.recipients WHERE id = $1", rid)
        assert await drain_jobs(jobs_queue, timeout=2.5) == []  # once, not on every pass
    finally:
        await conn.close()


async def test_marking_jobs_published_never_waits_for_a_claim_and_the_claim_marks_it(
    clean_db: None, mx_env: dict[str, str]
) -> None:
    """Ingest marks a batch of jobs published while the executor claims some of them in
    another order: the two must not deadlock (the soak saw PostgreSQL end one of them —
    when that was the executor's record, the job came back and its program ran twice).
    The marking skips the row the claim holds, at once; the claim marks it itself."""
    from services.executor.repo import Repo
    from services.ingest.repo import Database

    mids = [uuid.uuid4() for _ in range(3)]
    rids = [uuid.uuid4() for _ in range(3)]
    conn = await db_conn()
    db = Database(mx_env["MAILEXEC_DATABASE_URL"], max_size=2)
    repo = Repo(mx_env["MAILEXEC_DATABASE_URL"], pool_size=2)
    await db.start()
    await repo.start()
    try:
        for mid, rid in zip(mids, rids, strict=True):
            await conn.execute("INSERT INTO mail.messages (id, sender, notify, size) "
                               "VALUES ($1, 'a@example.net', '{FAILURE}', 1)", mid)
            await conn.execute("INSERT INTO mail.recipients (id, message_id, address, account) "
                               "VALUES ($1, $2, 'b@example.org', 'b@example.org')", rid, mid)
        async with conn.transaction():  # a claim in flight holds the middle row
            await conn.execute("SELECT 1 FROM mail.recipients WHERE id = $1 FOR UPDATE", rids[1])
            await asyncio.wait_for(db.mark_published(rids), 2)
        rows = dict(await conn.fetch("SELECT id, published FROM mail.recipients"))
        assert [rows[r] for r in rids] == [True, False, True]
        assert (await repo.claim(rids[1], 0, False)).claimed
        assert await conn.fetchval("SELECT published FROM mail.recipients WHERE id = $1", rids[1])
    finally:
        await repo.close()
        await db.close()
        await conn.close()


async def test_metrics_are_exported(client: httpx.AsyncClient) -> None:
    text = (await client.get("/metrics")).text
    for name in ("mailexec_messages_accepted_total", "mailexec_messages_rejected_total",
                 "mailexec_ingest_publish_seconds", "mailexec_outbox_unpublished"):
        assert name in text
