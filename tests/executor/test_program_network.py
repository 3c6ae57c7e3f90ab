"""An executor sees a program's network change without a restart (SPEC §3 rule 6).

A real policy process and RabbitMQ: the executor's PolicyClient caches the program
entry (TTL 30 s, far longer than this test), the admin PATCHes ``network``, and the
``policy.changed`` broadcast, received the way the executor receives it, makes the
next lookup return the new value. The reverse (egress withdrawn) too: a revoked grant
must not linger in a cache.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.amqp import Broker
from shared.policy_client import PolicyClient
from tests.conftest import ADMIN_TOKEN, SERVICE_TOKEN, ServiceProcess, free_port

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def policy_url(mx_env: dict[str, str], clean_db: None, tmp_path: Path) -> Iterator[str]:
    env = {**os.environ, **mx_env, "MAILEXEC_POLICY_PORT": str(free_port())}
    proc = ServiceProcess("policy", env, tmp_path / "policy.log").start()
    try:
        yield proc.url
    finally:
        proc.stop()


async def test_network_change_reaches_a_running_executor(
    policy_url: str, mx_env: dict[str, str]
) -> None:
    async with httpx.AsyncClient(base_url=policy_url, headers=ADMIN) as admin:
        r = await admin.put("/v1/programs/fetcher", content=b"#!/bin/true\n",
                            headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 201, r.text

        client = PolicyClient(policy_url, SERVICE_TOKEN)
        broker = Broker(mx_env["MAILEXEC_AMQP_URL"])
        heard: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        try:
            await broker.connect(declare=True, timeout=10)

            def on_policy_changed(body: dict[str, Any]) -> None:  # as services/executor/main.py
                client.invalidate(body.get("what"), body.get("key"))
                heard.put_nowait(body)

            await broker.on_policy_changed("executor-test", on_policy_changed)
            meta = await client.program("fetcher")
            assert meta is not None and meta.network == "none"

            for network in ("egress", "none"):
                r = await admin.patch("/v1/programs/fetcher", json={"network": network})
                assert r.status_code == 200, r.text
                while (await asyncio.wait_for(heard.get(), 10)).get("action") != "patch":
                    pass
                meta = await client.program("fetcher")
                assert meta is not None and meta.network == network
        finally:
            await broker.close()
            await client.close()
