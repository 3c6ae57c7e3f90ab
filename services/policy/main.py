"""`mailexec serve policy`: the policy API under uvicorn (``shared.service``: exit statuses).

PostgreSQL or RabbitMQ down at start is not a reason to exit: policy serves, answers
``/readyz`` 503 and reconnects when they come back (the broker in the background, the
database per request).
"""

from __future__ import annotations

from services.policy.app import create_policy_app
from shared.service import run_service, serve_http
from shared.settings import Settings


def _serve(settings: Settings) -> int:
    return serve_http("policy", create_policy_app(), host=settings.bind_host,
                      port=settings.policy_port, setting="MAILEXEC_POLICY_PORT")


def run() -> int:
    return run_service("policy", _serve)
