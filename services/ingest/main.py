"""`mailexec serve ingest`: uvicorn (uvloop + httptools, no access log), JSON logs."""

from __future__ import annotations

import uvicorn

from shared.logging import configure
from shared.settings import get_settings


def run() -> int:
    settings = get_settings()
    configure(settings.log_level, service="ingest")
    from .app import build_app

    config = uvicorn.Config(
        build_app(settings),
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
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1
