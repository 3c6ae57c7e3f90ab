"""`mailexec serve notifier`: the HTTP API, the event consumer and the sender loop in
one uvicorn (uvloop, httptools) process."""

from __future__ import annotations

import logging
import sys

import uvicorn

from services.notifier.app import create_app
from services.notifier.smtp import SmtpUrlError, parse_smtp_url
from shared import logging as mx_logging
from shared.settings import get_settings

EX_CONFIG = 78


def run() -> int:
    settings = get_settings()
    mx_logging.configure(settings.log_level, service="notifier")
    try:
        parse_smtp_url(settings.smtp_url)
    except SmtpUrlError as exc:
        logging.getLogger("mailexec.notifier").error(str(exc))
        print(f"notifier: {exc}", file=sys.stderr)
        return EX_CONFIG
    config = uvicorn.Config(
        create_app(settings),
        host=settings.bind_host,
        port=settings.notifier_port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=15,
    )
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1
