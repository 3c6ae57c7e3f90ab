"""`mailexec serve notifier`: the HTTP API, the event consumer and the sender loop in
one uvicorn (uvloop, httptools) process (``shared.service``: exit statuses).

It refuses to start (78) when ``MAILEXEC_SMTP_URL`` doesn't parse; RabbitMQ or
PostgreSQL down at start is not a reason to exit (``runtime.py``).
"""

from __future__ import annotations

from services.notifier.app import create_app
from services.notifier.smtp import SmtpUrlError, parse_smtp_url
from shared.service import StartupError, run_service, serve_http
from shared.settings import Settings
from shared.sysexits import EX_CONFIG


def _serve(settings: Settings) -> int:
    try:
        parse_smtp_url(settings.smtp_url)
    except SmtpUrlError as exc:
        raise StartupError(str(exc), EX_CONFIG) from exc
    return serve_http("notifier", create_app(settings), host=settings.bind_host,
                      port=settings.notifier_port, setting="MAILEXEC_NOTIFIER_PORT",
                      timeout_graceful_shutdown=15)


def run() -> int:
    return run_service("notifier", _serve)
