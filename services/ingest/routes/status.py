"""``GET /v1/status`` (admin): the console dashboard's numbers, from ingest's own reads
of schema ``mail`` and the broker.

- ``recipients``: recipients not yet final, by state; every waiting state of SPEC §2 is
  present (``on_hold`` counts 0 until queue hold exists).
- ``last_hour``: messages received, recipients delivered and bounced in the last hour.
- ``oldest_waiting_s``: age of the oldest recipient not yet final (None: none waits).
- ``queues``: messages ready in each queue of ``shared.topology.MONITORED_QUEUES`` (a
  passive declare over ingest's broker connection; a missing queue is None). When the
  broker can't be asked, ``queues`` is None and ``queues_error`` says why: the rest is
  still answered from the database, and only a database outage makes this a 503.
- ``latest_failures``: the 10 most recent bounced or deferred recipients with the
  program runs of their last attempt.

Every query reads an index of migration 0005 (``repo.Database.dashboard``).
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from shared.errors import Unavailable
from shared.states import NOT_FINAL_STATES
from shared.topology import MONITORED_QUEUES

from ..deps import AdminDep, RuntimeDep
from .messages import _iso, _json

router = APIRouter(prefix="/v1", tags=["status"])

WAITING_STATES = NOT_FINAL_STATES
WINDOW_S = 3600.0
LATEST_FAILURES = 10


def _runs_of_last_attempt(runs: list[Any]) -> dict[uuid.UUID, list[dict[str, Any]]]:
    last: dict[uuid.UUID, int] = {}
    for run in runs:
        last[run["recipient_id"]] = max(last.get(run["recipient_id"], 0), run["attempt"])
    out: dict[uuid.UUID, list[dict[str, Any]]] = {}
    for run in runs:
        if run["attempt"] != last[run["recipient_id"]]:
            continue
        out.setdefault(run["recipient_id"], []).append({
            "program": run["program"], "position": run["position"], "attempt": run["attempt"],
            "exit_status": run["exit_status"], "signal": run["signal"],
            "timed_out": run["timed_out"], "output_excerpt": run["output_excerpt"],
            "duration_ms": run["duration_ms"], "started_at": _iso(run["started_at"]),
        })
    return out


@router.get("/status", summary="Dashboard numbers: queue, last hour, latest failures (admin)")
async def get_status(principal: AdminDep, runtime: RuntimeDep) -> Response:
    numbers = await runtime.db.dashboard(window_s=WINDOW_S, failures=LATEST_FAILURES)
    queues: dict[str, int | None] | None
    queues_error: str | None = None
    try:
        queues = await runtime.broker.message_counts(MONITORED_QUEUES)
    except Unavailable as exc:
        queues, queues_error = None, exc.message
    runs = _runs_of_last_attempt(numbers.runs)
    return _json({
        "recipients": {state: numbers.waiting.get(state, 0) for state in WAITING_STATES},
        "last_hour": {"received": numbers.received, "delivered": numbers.delivered,
                      "bounced": numbers.bounced},
        "oldest_waiting_s": numbers.oldest_waiting_s,
        "queues": queues,
        "queues_error": queues_error,
        "latest_failures": [
            {"message_id": str(f["message_id"]), "recipient": f["address"],
             "account": f["account"], "state": f["state"], "at": _iso(f["at"]),
             "status": f["status"], "diagnostic": f["diagnostic"], "attempts": f["attempts"],
             "programs": runs.get(f["id"], [])}
            for f in numbers.failures
        ],
    })
