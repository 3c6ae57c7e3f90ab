"""Ingest test helpers: one shared ingest process, the `deliveries` queue, a cuttable proxy.

The shared ingest (module scope) keeps the suite fast; tests that need their own
process (DB or broker behind a proxy) use the `services` fixture of tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aio_pika
import orjson
import pytest

from shared import topology
from tests.conftest import ServiceProcess, free_port
from tests.helpers import splice

MAX_BYTES = 200_000


@pytest.fixture(scope="module")
def ingest(mx_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    env = dict(os.environ)
    env.update(mx_env)
    env["MAILEXEC_INGEST_PORT"] = str(free_port())
    env["MAILEXEC_MAX_MESSAGE_BYTES"] = str(MAX_BYTES)
    env["MAILEXEC_INLINE_BODY_BYTES"] = "1000"
    log = tmp_path_factory.mktemp("ingest") / "ingest.log"
    proc = ServiceProcess("ingest", env, log).start()
    yield proc
    proc.stop()


async def drain_jobs(amqp_url: str, *, expect: int = 0, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Take every job off `deliveries` (waiting until at least `expect` arrived)."""
    jobs: list[dict[str, Any]] = []
    conn = await aio_pika.connect(amqp_url)
    try:
        ch = await conn.channel()
        queue = await ch.get_queue(topology.DELIVERIES_QUEUE, ensure=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            msg = await queue.get(no_ack=True, fail=False)
            if msg is not None:
                job = orjson.loads(msg.body)
                job["_props"] = {"delivery_mode": msg.delivery_mode, "content_type": msg.content_type}
                jobs.append(job)
                continue
            if len(jobs) >= expect or loop.time() > deadline:
                return jobs
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


@pytest.fixture
async def jobs_queue(mx_env: dict[str, str]) -> AsyncIterator[str]:
    """Empty `deliveries` before the test; yields the AMQP URL to drain it with."""
    url = mx_env["MAILEXEC_AMQP_URL"]
    conn = await aio_pika.connect(url)
    try:
        await topology.declare(await conn.channel())  # the queue may not exist yet
    finally:
        await conn.close()
    await drain_jobs(url)
    yield url


class TcpProxy:
    """A TCP forwarder in its own thread whose link the test can cut and restore.

    Why a proxy: the tests must make PostgreSQL / RabbitMQ "go away" for one ingest
    process without touching the machine's shared servers.
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.up = True
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None

    def start(self) -> TcpProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(5)
        return self

    async def _serve(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.close()
            await writer.wait_closed()
            return
        await splice(reader, writer, self.target, self._writers)

    def cut(self) -> None:
        """Refuse new connections and reset the open ones."""

        def do() -> None:
            self.up = False
            for w in list(self._writers):
                sock = w.get_extra_info("socket")
                if sock is not None:
                    # RST rather than FIN: what a dead peer looks like
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                w.close()
            self._writers.clear()

        self._loop.call_soon_threadsafe(do)

    def restore(self) -> None:
        self._loop.call_soon_threadsafe(setattr, self, "up", True)

    async def _shutdown(self) -> None:
        self.up = False
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in others:
            t.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        await asyncio.sleep(0.05)  # let the transports finish closing

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


@pytest.fixture
def proxy_factory() -> Iterator[Any]:
    made: list[TcpProxy] = []

    def make(port: int) -> TcpProxy:
        p = TcpProxy(port).start()
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()
