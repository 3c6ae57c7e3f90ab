"""Idempotency-Key bound to the envelope and body (SPEC §2 ingest), against a real ingest.

A reused key never hides another message: the same key with a different envelope or
body gets 409 and learns nothing of the message holding the key (no id, no
recipients); nothing more is stored or queued. The same key with the same message is
still the same id, queued once. Rows stored before the binding existed (hash NULL)
keep answering with their id.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.conftest import db_conn
from tests.ingest.conftest import drain_jobs

MSG = b"From: alice@example.net\r\nTo: bob@example.org\r\nSubject: hi\r\n\r\nhello\r\n"
OTHER = MSG.replace(b"hello", b"a different message")
PARAMS = [("from", "a@example.net"), ("to", "b@example.org"), ("to", "c@example.org")]


@pytest.fixture
async def client(ingest: Any, mta_headers: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=ingest.url, headers=mta_headers, timeout=20) as c:
        yield c


async def post(client: httpx.AsyncClient, key: str, params: Any = PARAMS, body: bytes = MSG
               ) -> httpx.Response:
    return await client.post("/v1/messages", params=params, content=body,
                             headers={"Content-Type": "message/rfc822", "Idempotency-Key": key})


async def stored() -> int:
    conn = await db_conn()
    try:
        return int(await conn.fetchval("SELECT count(*) FROM mail.messages"))
    finally:
        await conn.close()


def assert_conflict_reveals_nothing(r: httpx.Response, first: httpx.Response) -> None:
    assert r.status_code == 409, r.text
    assert set(r.json()) == {"error"}
    err = r.json()["error"]
    assert err["code"] == "idempotency_key_reused"
    assert "another message" in err["message"]
    assert first.json()["id"] not in r.text
    for address in ("b@example.org", "c@example.org"):
        assert address not in r.text


VARIANTS = {
    "body": (PARAMS, OTHER),
    "sender": ([("from", "mallory@example.net"), *PARAMS[1:]], MSG),
    "null sender": ([("from", ""), *PARAMS[1:]], MSG),
    "a recipient fewer": (PARAMS[:2], MSG),
    "a recipient more": ([*PARAMS, ("to", "d@example.org")], MSG),
    "notify": ([*PARAMS, ("notify", "NEVER")], MSG),
    "ret": ([*PARAMS, ("ret", "HDRS")], MSG),
    "envid": ([*PARAMS, ("envid", "Q1")], MSG),
}


@pytest.mark.parametrize("change", sorted(VARIANTS))
async def test_same_key_other_message_gets_409(
    client: httpx.AsyncClient, clean_db: None, jobs_queue: str, change: str
) -> None:
    first = await post(client, "queue-id-1")
    assert first.status_code == 202, first.text
    params, body = VARIANTS[change]
    r = await post(client, "queue-id-1", params, body)
    assert_conflict_reveals_nothing(r, first)
    assert await stored() == 1
    jobs = await drain_jobs(jobs_queue, expect=2, timeout=1)
    assert sorted(j["recipient"] for j in jobs) == ["b@example.org", "c@example.org"]
    # and the key still answers for its own message
    again = await post(client, "queue-id-1")
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]


async def test_same_message_same_key_is_one_message_in_any_recipient_order(
    client: httpx.AsyncClient, clean_db: None, jobs_queue: str
) -> None:
    first = await post(client, "queue-id-2")
    swapped = [PARAMS[0], PARAMS[2], PARAMS[1]]
    again = await post(client, "queue-id-2", swapped)
    assert again.status_code == 202, again.text
    assert again.json()["id"] == first.json()["id"]
    assert await stored() == 1
    assert len(await drain_jobs(jobs_queue, expect=2, timeout=1)) == 2


async def test_concurrent_different_messages_with_one_key(
    client: httpx.AsyncClient, clean_db: None, jobs_queue: str
) -> None:
    """In flight together (one batch): one message wins the key, the other gets 409."""
    rs = await asyncio.gather(*(post(client, "queue-id-3", body=MSG if i % 2 else OTHER)
                                for i in range(8)))
    codes = sorted(r.status_code for r in rs)
    assert codes == [202] * 4 + [409] * 4, [r.text for r in rs]
    winners = [r for r in rs if r.status_code == 202]
    assert len({r.json()["id"] for r in winners}) == 1
    for r in rs:
        if r.status_code == 409:
            assert_conflict_reveals_nothing(r, winners[0])
    assert await stored() == 1
    assert len(await drain_jobs(jobs_queue, expect=2, timeout=1)) == 2


async def test_keys_stored_without_a_hash_answer_as_before(
    client: httpx.AsyncClient, clean_db: None, jobs_queue: str
) -> None:
    """A message stored before migration 0003 has no hash: its key keeps its id."""
    first = await post(client, "queue-id-4")
    conn = await db_conn()
    try:
        await conn.execute("UPDATE mail.messages SET idempotency_hash = NULL WHERE id = $1",
                           uuid.UUID(first.json()["id"]))
    finally:
        await conn.close()
    r = await post(client, "queue-id-4", body=OTHER)
    assert r.status_code == 202 and r.json()["id"] == first.json()["id"]
    assert await stored() == 1
    await drain_jobs(jobs_queue, expect=2, timeout=1)


async def test_the_hash_is_stored_with_the_key(client: httpx.AsyncClient, clean_db: None,
                                               jobs_queue: str) -> None:
    from services.ingest.envelope import content_hash, parse_envelope

    r = await post(client, "queue-id-5")
    plain = await client.post("/v1/messages", params=PARAMS, content=MSG,
                              headers={"Content-Type": "message/rfc822"})
    conn = await db_conn()
    try:
        rows = dict(await conn.fetch("SELECT id::text, idempotency_hash FROM mail.messages"))
    finally:
        await conn.close()
    envelope = parse_envelope("a@example.net", ["b@example.org", "c@example.org"])
    assert rows[r.json()["id"]] == content_hash(envelope, [MSG])
    assert rows[plain.json()["id"]] is None  # no key, no hash to compute
    await drain_jobs(jobs_queue, expect=4, timeout=1)
