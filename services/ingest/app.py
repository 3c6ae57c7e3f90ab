"""The ingest FastAPI application: the submit fast path, the routes, and the runtime
started by the lifespan."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from shared.db import dispose_engine
from shared.httpapp import create_app
from shared.metrics import Exposition, multiprocess_dir
from shared.settings import Settings, get_settings

from . import fastpath
from .metrics import OldestJobAge
from .routes import messages, queue, status
from .runtime import Runtime


def build_app(settings: Settings | None = None, lmtp_socket: socket.socket | None = None) -> FastAPI:
    """``lmtp_socket``: the LMTP Unix socket when the worker supervisor bound it (main.py)."""
    settings = settings or get_settings()
    runtime = Runtime(settings, lmtp_socket)
    oldest = OldestJobAge(runtime.db.waiting)
    # several workers: main.py set PROMETHEUS_MULTIPROC_DIR before forking them
    multiprocess = settings.ingest_workers > 1 and multiprocess_dir() is not None

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
        routers=[messages.router, queue.router, status.router],
        ready_check=runtime.ready,
        lifespan=lifespan,
        inner_middleware=[(fastpath.SubmitFastPath, {"runtime": runtime})],
        # the message itself: streamed and limited by MAILEXEC_MAX_MESSAGE_BYTES
        raw_bodies=[("POST", fastpath.PATH)],
        metrics=Exposition("ingest", extra=[oldest], before_scrape=[oldest.refresh],
                           multiprocess=multiprocess),
        openapi_hooks=[fastpath.add_submit_operation],
    )
    app.state.runtime = runtime
    return app
