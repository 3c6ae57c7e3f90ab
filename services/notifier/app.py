"""The notifier's HTTP app: ops endpoints, ``/v1/notifications``, and the runtime
(consumer + sender) started and stopped with the app's lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.notifier.routes import notifications
from services.notifier.runtime import Runtime
from shared.db import ping
from shared.httpapp import create_app as create_base_app
from shared.settings import Settings, get_settings


def create_app(settings: Settings | None = None, *, run_background: bool = True) -> FastAPI:
    """``run_background=False`` serves the API only (tests drive a Runtime themselves)."""
    settings = settings or get_settings()
    runtime = Runtime(settings) if run_background else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if runtime is not None:
            await runtime.start()
        try:
            yield
        finally:
            if runtime is not None:
                await runtime.stop()

    async def ready_check() -> dict[str, bool]:
        if runtime is not None:
            return await runtime.ready()
        return {"database": await ping()}

    app = create_base_app(
        title="mailexec notifier",
        routers=[notifications.router],
        ready_check=ready_check,
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    return app
