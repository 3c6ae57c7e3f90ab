"""The policy service's FastAPI application: routers, lifespan (database, broker), readiness."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator

from fastapi import FastAPI

from services.policy import interpreters, repo
from services.policy import tables as t
from services.policy.metrics import PROGRAMS
from services.policy.routes import accounts, audit, programs, sessions, settings, tokens
from shared.amqp import Broker, redact
from shared.db import dispose_engine, ping, session_scope
from shared.errors import Unavailable
from shared.httpapp import create_app
from shared.settings import get_settings

log = logging.getLogger("mailexec.policy")
BROKER_RETRY_S = 2.0


async def _connect_broker(broker: Broker) -> None:
    """Keep trying until RabbitMQ answers; /readyz reports 503 meanwhile."""
    while True:
        try:
            await broker.connect(timeout=BROKER_RETRY_S)
            log.info("connected to RabbitMQ", extra={"url": redact(broker.url)})
            return
        except Unavailable as exc:
            log.warning("RabbitMQ not reachable yet; retrying", extra={"error": exc.message})
            await broker.close()
            await asyncio.sleep(BROKER_RETRY_S)


async def _load_gauges() -> None:
    try:
        async with session_scope() as s:
            PROGRAMS.set(await repo.count(s, t.programs))
    except Unavailable as exc:
        log.warning("database not reachable at start", extra={"error": exc.message})


def create_policy_app() -> FastAPI:
    broker = Broker(get_settings().amqp_url)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        connecting = asyncio.create_task(_connect_broker(broker))
        await asyncio.to_thread(interpreters.host_interpreter_hashes)
        await _load_gauges()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(connecting), timeout=3)
        try:
            yield
        finally:
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await connecting
            await broker.close()
            await dispose_engine()

    async def ready() -> dict[str, bool]:
        return {"database": await ping(), "broker": broker.ready}

    app = create_app(
        title="mailexec policy",
        routers=[programs.router, settings.router, tokens.router, accounts.router, audit.router,
                 sessions.router],
        ready_check=ready,
        lifespan=lifespan,
        # a program's bytes: streamed and limited by MAILEXEC_MAX_PROGRAM_BYTES
        raw_bodies=[("PUT", re.escape(programs.router.prefix) + "/.+")],
        extra_responses={
            f"PUT {programs.router.prefix}/{{name}}": {
                413: "larger than MAILEXEC_MAX_PROGRAM_BYTES",
                415: "Content-Type is not application/octet-stream",
            },
        },
    )
    app.state.broker = broker
    return app
