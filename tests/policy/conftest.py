"""Fixtures for the policy tests: the app in-process (real DB and broker), an event tap."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import httpx
import pytest
from fastapi import FastAPI

from shared.topology import POLICY_EXCHANGE

SAMPLE_SCRIPT = b"#!/bin/sh\n# inspected: stores the message\ncat > /dev/null\n"
SAMPLE_ELF = b"\x7fELF\x02\x01\x01" + b"\x00" * 57 + b"a harmless filter" * 10


@pytest.fixture(scope="session")
async def policy_app(mx_env: dict[str, str]) -> AsyncIterator[FastAPI]:
    from services.policy.app import create_policy_app

    app = create_policy_app()
    async with app.router.lifespan_context(app):
        yield app


POLICY_TABLES = ("policy.programs", "policy.accounts", "policy.tokens", "policy.audit")


@pytest.fixture
async def clean_policy(mx_env: dict[str, str]) -> None:
    """``clean_db`` for schema policy, the only one these tests touch.

    DELETE on four small tables takes milliseconds where TRUNCATE of all nine tables
    takes ~0.4 s; over a hundred tests that is the difference that keeps this run short.
    """
    from shared.auth import reset_rate_limit
    from tests.conftest import db_conn

    conn = await db_conn()
    try:
        await conn.execute(
            "; ".join(f"DELETE FROM {t}" for t in POLICY_TABLES)
            + "; UPDATE policy.settings SET data = '{}'::jsonb"
        )
    finally:
        await conn.close()
    reset_rate_limit()


@pytest.fixture
async def client(policy_app: FastAPI, clean_policy: None) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=policy_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://policy") as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_error(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["code"], str) and body["error"]["code"]
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


def account_body(programs: list[str] | None = None, **owner: Any) -> dict[str, Any]:
    base = {"name": "Bob", "uid": 1000, "gid": 1000, "home": "/home/bob", "shell": "/bin/sh"}
    base.update(owner)
    return {
        "owner": base,
        "program_delivery": {"enabled": True, "programs": programs or []},
        "mailbox_delivery": True,
    }


async def make_account(
    client: httpx.AsyncClient, admin: dict[str, str], address: str, **kw: Any
) -> dict[str, Any]:
    r = await client.put(f"/v1/accounts/{address}", json=account_body(**kw), headers=admin)
    assert r.status_code in (200, 201), r.text
    return r.json()


async def user_token(client: httpx.AsyncClient, admin: dict[str, str], address: str) -> str:
    r = await client.post(f"/v1/accounts/{address}/tokens", headers=admin)
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


async def put_program(
    client: httpx.AsyncClient, admin: dict[str, str], name: str, content: bytes = SAMPLE_SCRIPT,
    **params: str,
) -> httpx.Response:
    return await client.put(
        f"/v1/programs/{name}", content=content, params=params,
        headers={**admin, "Content-Type": "application/octet-stream"},
    )


class EventTap:
    """An exclusive queue bound to the policy.changed fanout, as an executor would bind."""

    def __init__(self, queue: aio_pika.abc.AbstractQueue) -> None:
        self.queue = queue

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            msg = await self.queue.get(fail=False, no_ack=True)
            if msg is not None:
                return dict(json.loads(msg.body))
            await asyncio.sleep(0.02)
        raise AssertionError("no policy-changed event arrived")

    async def drain(self) -> None:
        while await self.queue.get(fail=False, no_ack=True) is not None:
            pass


@pytest.fixture
async def events(mx_env: dict[str, str]) -> AsyncIterator[EventTap]:
    conn = await aio_pika.connect_robust(mx_env["MAILEXEC_AMQP_URL"])
    try:
        ch = await conn.channel()
        exchange = await ch.declare_exchange(
            POLICY_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True
        )
        queue = await ch.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange)
        yield EventTap(queue)
    finally:
        await conn.close()
