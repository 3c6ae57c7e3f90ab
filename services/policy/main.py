"""`mailexec serve policy`: the policy API under uvicorn (uvloop, httptools, JSON logs)."""

from __future__ import annotations

import uvicorn

from services.policy.app import create_policy_app
from shared.logging import configure
from shared.settings import get_settings


def run() -> int:
    s = get_settings()
    configure(s.log_level, service="policy")
    uvicorn.run(
        create_policy_app(),
        host=s.bind_host,
        port=s.policy_port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        log_level=s.log_level.lower(),
        lifespan="on",
    )
    return 0
