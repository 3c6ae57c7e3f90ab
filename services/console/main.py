"""`mailexec serve console`: the web pages, one uvicorn (uvloop, httptools) process
(``shared.service``: exit statuses).

It refuses to start (78) without ``MAILEXEC_CONSOLE_SECRET``, the key of its cookies, or
with a ``MAILEXEC_CONSOLE_COOKIE_SECURE`` it does not know. Policy, ingest or notifier
down is not a reason to exit: /readyz says 503 until policy answers, pages say which
service is not answering.
"""

from __future__ import annotations

from shared.service import StartupError, run_service, serve_http
from shared.settings import Settings
from shared.sysexits import EX_CONFIG

COOKIE_SECURE_MODES = ("auto", "always", "never")


def check(settings: Settings) -> None:
    if not settings.console_secret:
        raise StartupError(
            "MAILEXEC_CONSOLE_SECRET is empty: the console needs a secret key for its session "
            "cookies; set it (or MAILEXEC_CONSOLE_SECRET_FILE, a file holding it) to a long "
            "random string, e.g. `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`",
            EX_CONFIG)
    if settings.console_cookie_secure not in COOKIE_SECURE_MODES:
        raise StartupError(
            f"MAILEXEC_CONSOLE_COOKIE_SECURE={settings.console_cookie_secure!r}: choose one of "
            + ", ".join(COOKIE_SECURE_MODES), EX_CONFIG)
    if settings.console_session_idle_s < 60:
        raise StartupError("MAILEXEC_CONSOLE_SESSION_IDLE_S must be at least 60 (seconds)",
                           EX_CONFIG)


def _serve(settings: Settings) -> int:
    check(settings)
    from services.console.app import create_app

    return serve_http("console", create_app(settings), host=settings.bind_host,
                      port=settings.console_port, setting="MAILEXEC_CONSOLE_PORT",
                      timeout_graceful_shutdown=10)


def run() -> int:
    return run_service("console", _serve)
