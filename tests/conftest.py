"""Test fixtures: a fresh PostgreSQL database and RabbitMQ vhost per test run.

Everything talks to the real PostgreSQL (MAILEXEC_TEST_PG_ADMIN, default
postgresql://postgres@127.0.0.1:5432/postgres) and the real RabbitMQ (vhost created with
rabbitmqctl). Both are dropped at the end of the run.

``tests/unit`` (``make test-unit``) overrides ``mx_env`` with a fixture that creates
nothing: its tests are pure and must pass with no server running.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from shared.settings import get_settings

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("MAILEXEC_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
RUN_ID = uuid.uuid4().hex[:10]
DB_NAME = f"mailexec_test_{RUN_ID}"
VHOST = f"mailexec_test_{RUN_ID}"

ADMIN_TOKEN = "test-admin-" + secrets.token_hex(8)
MTA_TOKEN = "test-mta-" + secrets.token_hex(8)
SERVICE_TOKEN = "test-service-" + secrets.token_hex(8)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


def _psql(sql: str) -> None:
    import asyncio

    async def go() -> None:
        conn = await asyncpg.connect(PG_ADMIN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(go())


@pytest.fixture(scope="session", autouse=True)
def mx_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Create the run's database and vhost, point every MAILEXEC_* variable at them."""
    _psql(f'CREATE DATABASE "{DB_NAME}"')
    _rabbitmqctl("add_vhost", VHOST)
    _rabbitmqctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
    trusted = tmp_path_factory.mktemp("trusted")
    os.chmod(trusted, 0o755)
    env = {
        "MAILEXEC_DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{DB_NAME}",
        "MAILEXEC_AMQP_URL": f"amqp://guest:guest@127.0.0.1:5672/{VHOST}",
        "MAILEXEC_ADMIN_TOKEN": ADMIN_TOKEN,
        "MAILEXEC_INGEST_TOKEN": MTA_TOKEN,
        "MAILEXEC_SERVICE_TOKEN": SERVICE_TOKEN,
        "MAILEXEC_TRUSTED_DIR": str(trusted),
        "MAILEXEC_REPORTING_MTA": "mx.test.example",
        "MAILEXEC_LOG_LEVEL": "warning",
        "MAILEXEC_LMTP_PORT": "0",  # tests that speak LMTP give their process a port
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    get_settings.cache_clear()
    from mailexec import migrate

    migrate.upgrade(env["MAILEXEC_DATABASE_URL"])
    try:
        yield env
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        get_settings.cache_clear()
        try:
            _psql(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        finally:
            _rabbitmqctl("delete_vhost", VHOST)


@pytest.fixture(scope="session")
def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="session")
def mta_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {MTA_TOKEN}"}


@pytest.fixture(scope="session")
def service_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {SERVICE_TOKEN}"}


async def _truncate() -> None:
    conn = await asyncpg.connect(PG_ADMIN.rsplit("/", 1)[0] + f"/{DB_NAME}")
    try:
        await conn.execute(
            "TRUNCATE policy.programs, policy.accounts, policy.tokens, policy.audit, "
            "mail.messages, mail.bodies, mail.recipients, mail.program_runs, mail.queue_actions, "
            "notifier.notifications, "
            "notifier.seen_events CASCADE; UPDATE policy.settings SET data = '{}'::jsonb; "
            "UPDATE mail.body_ring SET for_turn_at = '-infinity', emptied_at = NULL"
        )
    finally:
        await conn.close()


@pytest.fixture
async def clean_db() -> AsyncIterator[None]:
    """Empty every table (settings back to defaults) before the test."""
    from shared.auth import reset_rate_limit

    await _truncate()
    reset_rate_limit()
    yield


async def db_conn() -> asyncpg.Connection:
    return await asyncpg.connect(PG_ADMIN.rsplit("/", 1)[0] + f"/{DB_NAME}")


@pytest.fixture
async def conn(clean_db: None) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the test database, every table emptied first (clean_db)."""
    c = await db_conn()
    yield c
    await c.close()


class ServiceProcess:
    """One `mailexec serve NAME` child process with its own port and log file."""

    def __init__(self, name: str, env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        port_var = {
            "ingest": "MAILEXEC_INGEST_PORT",
            "policy": "MAILEXEC_POLICY_PORT",
            "notifier": "MAILEXEC_NOTIFIER_PORT",
            "executor": "MAILEXEC_EXECUTOR_METRICS_PORT",
            "console": "MAILEXEC_CONSOLE_PORT",
        }[name]
        self.port = int(env[port_var])
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True, timeout: float = 30.0) -> ServiceProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its life
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailexec", "serve", self.name],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        log.close()
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                r = httpx.get(self.url + "/readyz", timeout=1.0)
                if r.status_code == 200:
                    return
                last = r.text
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout}s: {last}\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def services(
    mx_env: dict[str, str], tmp_path: Path
) -> Iterator[Any]:
    """Factory: ``services("policy", "ingest", env={...})`` starts real service processes.

    Every service of one test shares one set of ports, so they find each other.
    """
    started: list[ServiceProcess] = []
    env = dict(os.environ)
    env.update(mx_env)
    env.update(
        {
            "MAILEXEC_INGEST_PORT": str(free_port()),
            "MAILEXEC_POLICY_PORT": str(free_port()),
            "MAILEXEC_NOTIFIER_PORT": str(free_port()),
            "MAILEXEC_EXECUTOR_METRICS_PORT": str(free_port()),
            "MAILEXEC_CONSOLE_PORT": str(free_port()),
            "MAILEXEC_CONSOLE_SECRET": "test-console-secret",
            "MAILEXEC_CONSOLE_COOKIE_SECURE": "never",
        }
    )
    for svc in ("policy", "ingest", "notifier"):
        env[f"MAILEXEC_{svc.upper()}_URL"] = f"http://127.0.0.1:{env[f'MAILEXEC_{svc.upper()}_PORT']}"

    def start(*names: str, extra_env: dict[str, str] | None = None, wait: bool = True) -> Any:
        if extra_env:
            env.update(extra_env)
        procs = []
        for name in names:
            sp = ServiceProcess(name, dict(env), tmp_path / f"{name}.log").start(wait_ready=wait)
            started.append(sp)
            procs.append(sp)
        return procs[0] if len(procs) == 1 else procs

    start.env = env  # type: ignore[attr-defined]
    yield start
    for sp in reversed(started):
        sp.stop()
