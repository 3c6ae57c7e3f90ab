"""Fixtures of the security tests: real service processes, user tokens, cleanup.

``Stack`` starts ``mailexec serve X`` processes on free ports against the run's database
and vhost (the executor through :class:`tests.executor.helpers.Pipeline`, which gives it
its own cgroup root). Everything here talks to the services over HTTP, as an attacker
would.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, MTA_TOKEN, SERVICE_TOKEN, _truncate
from tests.executor.helpers import Homes, Pipeline

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
MTA = {"Authorization": f"Bearer {MTA_TOKEN}"}
SERVICE = {"Authorization": f"Bearer {SERVICE_TOKEN}"}

# Queues that submissions fill while no executor/notifier of this module consumes them.
PURGE_QUEUES = ("deliveries", "deliveries.held", "deliveries.dead", "notifier.events",
                "notifier.dead")


async def purge_queues(amqp_url: str) -> None:
    """Drop jobs and events this module left behind, so later modules' executors don't
    spend time bouncing fuzzed submissions."""
    conn = await aio_pika.connect(amqp_url)
    try:
        ch = await conn.channel()
        for name in PURGE_QUEUES:
            try:
                q = await ch.get_queue(name, ensure=True)
                await q.purge()
            except Exception:  # noqa: BLE001 - a queue nobody declared yet is fine
                ch = await conn.channel()
    finally:
        await conn.close()


async def issue_user_token(policy_url: str, address: str, uid: int = 64001,
                           home: str = "/nonexistent") -> str:
    """Create ``address`` (if needed) and return a fresh user token for it."""
    async with httpx.AsyncClient(base_url=policy_url, headers=ADMIN, timeout=10) as c:
        r = await c.put(f"/v1/accounts/{address}", json={
            "owner": {"name": address.split("@")[0][:30], "uid": uid, "gid": uid,
                      "home": home, "shell": "/bin/sh"},
            "program_delivery": {"enabled": True, "programs": ["cat"]},
            "mailbox_delivery": False})
        assert r.status_code in (200, 201), r.text
        r = await c.post(f"/v1/accounts/{address}/tokens", json={"label": "security-test"})
        assert r.status_code == 201, r.text
        return str(r.json()["token"])


@pytest.fixture(scope="package")
async def stack(mx_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
                ) -> AsyncIterator[Pipeline]:
    """policy, ingest and notifier (no executor) on free ports, clean tables; shared by the
    package (starting three services costs 10-30 s) and stopped when it ends."""
    await _truncate()
    p = Pipeline(mx_env, tmp_path_factory.mktemp("security-logs"))
    p.env["MAILEXEC_SMTP_URL"] = "smtp://127.0.0.1:9"  # the notifier must not send anywhere
    try:
        p.start("policy")
        p.start("ingest")
        p.start("notifier")
        yield p
    finally:
        p.stop_all()
        await purge_queues(mx_env["MAILEXEC_AMQP_URL"])
        await _truncate()


def service_url(p: Pipeline, name: str) -> str:
    return p.procs[name].url


def own_processes(uid: int) -> list[int]:
    """PIDs whose real, effective or saved uid is ``uid``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("Uid:"):
                if str(uid) in line.split()[1:4]:
                    out.append(int(entry))
                break
    return out


async def wait_no_processes(uid: int, timeout: float = 10.0) -> list[int]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        left = own_processes(uid)
        if not left or asyncio.get_running_loop().time() > deadline:
            return left
        await asyncio.sleep(0.1)


@pytest.fixture(scope="module", name="homes")
def homes_fixture() -> Iterator[Homes]:
    h = Homes()
    yield h
    h.cleanup()


def any_json(r: httpx.Response) -> Any:
    try:
        return r.json()
    except ValueError:
        return None
