"""`mailexec serve ingest`: uvicorn (uvloop + httptools, no access log), JSON logs.

``MAILEXEC_INGEST_WORKERS`` > 1 runs that many worker processes on one port (uvicorn's
supervisor): the outbox is safe across processes (unique Idempotency-Key index, relay
with ``FOR UPDATE SKIP LOCKED``), so a multi-core box can spend more than one core on
HTTP parsing.
"""

from __future__ import annotations

from typing import Any

import uvicorn
from fastapi import FastAPI

from shared.logging import configure
from shared.settings import get_settings


def worker_app() -> FastAPI:
    """The app factory each worker process calls (logging is per process)."""
    settings = get_settings()
    configure(settings.log_level, service="ingest")
    from .app import build_app

    return build_app(settings)


def run() -> int:
    settings = get_settings()
    configure(settings.log_level, service="ingest")
    options: dict[str, Any] = dict(
        host=settings.bind_host,
        port=settings.ingest_port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        lifespan="on",
        backlog=2048,
        timeout_keep_alive=30,
        server_header=False,
    )
    if settings.ingest_workers > 1:
        uvicorn.run("services.ingest.main:worker_app", factory=True,
                    workers=settings.ingest_workers, **options)
        return 0
    server = uvicorn.Server(uvicorn.Config(worker_app(), **options))
    server.run()
    return 0 if server.started else 1
