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
from tests.helpers import processes_of

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


async def wait_no_processes(uid: int, timeout: float = 10.0) -> list[int]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        left = processes_of(uid, zombies=True)
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


HERE = Path(__file__).resolve().parent
HOSTILE_SOURCE = HERE / "hostile.c"
# Tight limits so every attack ends in seconds; the defaults are documented in README.
HOSTILE_EXECUTOR_ENV = {
    "MAILEXEC_RLIMIT_CPU_S": "2",
    "MAILEXEC_RLIMIT_AS_BYTES": str(256 * 1024 * 1024),
    "MAILEXEC_RLIMIT_NPROC": "64",
}


def build_hostile(out_dir: Path, trusted_dir: str, homes_base: Path) -> bytes:
    out = out_dir / "hostile"
    import subprocess

    subprocess.run(["cc", "-O2", "-Wall", f'-DTRUSTED_DIR="{trusted_dir}"',
                    f'-DHOMES_BASE="{homes_base}"', "-o", str(out), str(HOSTILE_SOURCE)],
                   check=True)
    return out.read_bytes()


@pytest.fixture(scope="module")
async def executor(stack: Pipeline, homes: Homes, tmp_path_factory: pytest.TempPathFactory,
                   mx_env: dict[str, str]) -> AsyncIterator[Any]:
    """An executor for this module (stopped at its end) plus the hostile programs, all
    registered as trusted under the names hostile.c switches on."""
    if os.geteuid() != 0:
        pytest.skip("the executor must run as root")
    # A trusted directory the attackers can see into (root-owned, 0755, under the sticky
    # /var/tmp): the run's default one sits below a 0700 directory, which would hide the
    # files instead of showing that their ownership protects them. Not /tmp: each run
    # has a private one, where the directory would not even exist.
    import tempfile

    trusted = Path(tempfile.mkdtemp(prefix="mailexec-trusted-", dir="/var/tmp"))
    os.chmod(trusted, 0o755)
    binary = build_hostile(tmp_path_factory.mktemp("hostile"), str(trusted), homes.base)
    proc = stack.start("executor", extra_env={**HOSTILE_EXECUTOR_ENV,
                                              "MAILEXEC_TRUSTED_DIR": str(trusted)},
                       key="executor")
    proc.trusted_dir = trusted  # type: ignore[attr-defined]
    await stack.settings(mode="secure", suspended=False, safe_user=None, program_timeout_s=4,
                         dsn_include_output=True, max_output_bytes=65536)
    for name in HOSTILE_NAMES:
        await stack.register(name, binary)
    try:
        yield proc
    finally:
        proc.stop()
        stack.procs.pop("executor", None)
        stack.remove_cgroups()
        await stack.settings(program_timeout_s=60)
        import shutil

        shutil.rmtree(trusted, ignore_errors=True)


HOSTILE_NAMES = ("ok", "copy", "privesc", "procspy", "escape", "netcat", "forkbomb", "memhog",
                 "spin", "sleeper", "escapee", "flood", "earlyclose", "replace")
