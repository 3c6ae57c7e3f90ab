"""MAILEXEC_INGEST_BODY_MEMORY_BYTES: ingest holds at most that many bytes of bodies being
received and stored; further senders wait unread (TCP holds them back), nothing is
refused for it, and a body larger than the whole budget is received alone."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.conftest import db_conn

BUDGET = 300_000
SIZE = 100_000


def _gauge(text: str, name: str) -> float:
    return next(float(line.split()[-1]) for line in text.splitlines()
                if line.startswith(name + " "))


async def _held(url: str) -> tuple[float, float]:
    async with httpx.AsyncClient() as c:
        text = (await c.get(url + "/metrics", timeout=5)).text
    return _gauge(text, "mailexec_ingest_body_bytes"), _gauge(text, "mailexec_ingest_body_bytes_peak")


async def test_senders_beyond_the_body_budget_wait_unread_and_are_all_accepted(
    services: Any, clean_db: None, mta_headers: dict[str, str], jobs_queue: str
) -> None:
    ingest = services("ingest", extra_env={"MAILEXEC_INGEST_BODY_MEMORY_BYTES": str(BUDGET),
                                           "MAILEXEC_MAX_MESSAGE_BYTES": "1000000"})
    body = b"Subject: big\r\n\r\n" + b"z" * (SIZE - 16)
    head = (
        "POST /v1/messages?from=a%40example.net&to=b%40example.org HTTP/1.1\r\nHost: ingest\r\n"
        f"Authorization: {mta_headers['Authorization']}\r\nContent-Type: message/rfc822\r\n"
        f"Content-Length: {SIZE}\r\n\r\n"
    ).encode()
    conns = [await asyncio.open_connection("127.0.0.1", ingest.port) for _ in range(6)]
    try:
        # six senders each send half their message and pause: three fit the budget and
        # are being read; the other three wait, unread
        for _, w in conns:
            w.write(head + body[: SIZE // 2])
            await w.drain()
        await asyncio.sleep(1.0)
        held, peak = await _held(ingest.url)
        assert held == BUDGET and peak == BUDGET
        for _, w in conns:
            w.write(body[SIZE // 2:])
            await w.drain()
        answers = [await asyncio.wait_for(r.read(4096), 20) for r, _ in conns]
    finally:
        for _, w in conns:
            w.close()
    assert all(a.startswith(b"HTTP/1.1 202") for a in answers), answers
    # a message larger than the whole budget: received alone, not refused
    async with httpx.AsyncClient(base_url=ingest.url, headers=mta_headers, timeout=20) as c:
        r = await c.post("/v1/messages", params={"from": "", "to": "b@example.org"},
                         content=b"Subject: huge\r\n\r\n" + b"h" * 400_000,
                         headers={"Content-Type": "message/rfc822"})
    assert r.status_code == 202, r.text
    held, peak = await _held(ingest.url)
    assert held == 0 and peak == 400_017
    conn = await db_conn()
    try:
        sizes = sorted(await conn.fetch("SELECT size FROM mail.messages"), key=lambda x: x[0])
    finally:
        await conn.close()
    assert [s[0] for s in sizes] == [SIZE] * 6 + [400_017]
