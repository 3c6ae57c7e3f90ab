"""The ingest FastAPI application: the submit fast path, the routes, and the runtime
started by the lifespan."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from shared.db import dispose_engine
from shared.httpapp import create_app
from shared.settings import Settings, get_settings

from . import fastpath
from .routes import messages, status
from .runtime import Runtime


def build_app(settings: Settings | None = None, lmtp_socket: socket.socket | None = None) -> FastAPI:
    """``lmtp_socket``: the LMTP Unix socket when the worker supervisor bound it (main.py)."""
    runtime = Runtime(settings or get_settings(), lmtp_socket)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()
            await dispose_engine()  # the shared engine shared.auth uses for user tokens

    app = create_app(
        title="mailexec ingest",
        routers=[messages.router, status.router],
        ready_check=runtime.ready,
        lifespan=lifespan,
        inner_middleware=[(fastpath.SubmitFastPath, {"runtime": runtime})],
        # the message itself: streamed and limited by MAILEXEC_MAX_MESSAGE_BYTES
        raw_bodies=[("POST", fastpath.PATH)],
    )
    fastpath.document(app)
    app.state.runtime = runtime
    return app
