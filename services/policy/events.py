"""The policy-changed broadcast (docs/internals.md): sent after every committed change.

A publish failure is logged and counted, never undone: the change is committed and
executors also expire their caches on a timer.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Literal

from services.policy.metrics import CHANGES, EVENTS
from shared.amqp import Broker
from shared.errors import Unavailable
from shared.topology import POLICY_EXCHANGE

log = logging.getLogger("mailexec.policy.events")

What = Literal["program", "settings", "account", "token"]
Action = Literal["put", "patch", "delete"]
PUBLISH_TIMEOUT_S = 5.0


async def announce(
    broker: Broker, *, what: What, key: str | None, action: Action, suspended: bool
) -> None:
    CHANGES.labels(what=what, action=action).inc()
    body = {
        "v": 1,
        "what": what,
        "key": key,
        "action": action,
        "at": datetime.now(UTC).isoformat(),
        "suspended": suspended,
    }
    try:
        await broker.publish(
            POLICY_EXCHANGE, "", body, message_id=str(uuid.uuid4()),
            timeout=PUBLISH_TIMEOUT_S, mandatory=False,
        )
    except Unavailable as exc:
        EVENTS.labels(result="failed").inc()
        log.warning("policy-changed event not published", extra={"what": what, "key": key,
                                                                  "error": exc.message})
        return
    EVENTS.labels(result="published").inc()
