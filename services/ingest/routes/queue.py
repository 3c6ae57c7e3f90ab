"""``/v1/queue`` (admin): look at the queue per recipient and work it — retry now, hold,
release, delete (silently or with a bounce), requeue dead letters; the audit of every
action. The decisions are ``queue_rules.py``, the SQL and publishing ``queue_control.py``.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query
from fastapi.responses import Response

from shared import topology
from shared.errors import BadRequest, NotFound

from ..deps import AdminDep, RuntimeDep
from ..envelope import account_filter
from ..queue_control import Done
from ..queue_rules import STATES, Action
from .messages import sender_filter

router = APIRouter(prefix="/v1/queue", tags=["queue"])

ACTION_PATHS: dict[str, Action] = {"retry": "retry", "hold": "hold", "release": "release",
                                   "delete": "delete"}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}

RecipientQ = Annotated[str | None, Query(
    description="act on this recipient (account address) only; default: every recipient")]


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def parse_duration(text: str) -> float:
    """``600``, ``10m``, ``2h``, ``1d`` → seconds."""
    m = _DURATION.match(text.strip())
    if not m:
        raise BadRequest("older_than: a duration such as 90, 10m, 2h or 1d",
                         code="bad_duration")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def _message_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise NotFound(f"no message {raw!r}", code="message_not_found") from None


def next_try(state: str, attempts: int, updated_at: datetime, delays: tuple[float, ...],
             held_recheck_s: float) -> datetime | None:
    """When the executor next looks at the recipient, as far as ingest can tell: a
    deferred one when its retry queue gives the job back, a suspended one at the held
    queue's recheck; None when that is not a time (queued: now; on hold: never)."""
    if state == "deferred":
        return updated_at + timedelta(seconds=topology.retry_delay_s(attempts, delays))
    if state == "suspended":
        recheck = min(held_recheck_s, topology.HELD_RECHECK_MS / 1000)
        return updated_at + timedelta(seconds=recheck)
    return None


@router.get("", summary="The queue, one row per recipient (mailq); admin")
async def list_queue(
    principal: AdminDep,
    runtime: RuntimeDep,
    state: Annotated[list[str] | None, Query(
        description="recipient state(s); default: every state not final")] = None,
    recipient: Annotated[str | None, Query(description="account address")] = None,
    sender: Annotated[str | None, Query(description="envelope sender; empty: <>")] = None,
    older_than: Annotated[str | None, Query(
        description="received longer ago than this (90, 10m, 2h, 1d)")] = None,
    message_id: Annotated[str | None, Query(description="one message")] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> Response:
    for s in state or []:
        if s not in STATES:
            raise BadRequest(f"state: one of {', '.join(STATES)}", code="bad_state")
    settings = runtime.settings
    delays = topology.parse_delays(settings.executor_retry_delays_s)
    rows = await runtime.queue.listing(
        states=state or None, account=account_filter(recipient), sender=sender_filter(sender),
        older_than_s=parse_duration(older_than) if older_than else None,
        message_id=_message_id(message_id) if message_id else None, limit=limit)
    items = [_queue_item(r, delays, settings.executor_held_recheck_s) for r in rows]
    return _json({"recipients": items, "count": len(items), "truncated": len(items) == limit})


def _queue_item(r: Any, delays: tuple[float, ...], held_recheck_s: float) -> dict[str, Any]:
    return {
        "message_id": str(r["message_id"]), "address": r["address"], "account": r["account"],
        "sender": r["sender"], "size": r["size"], "state": r["state"],
        "attempts": r["attempts"], "generation": r["generation"],
        "received_at": _iso(r["received_at"]), "age_s": round(float(r["age_s"]), 1),
        "updated_at": _iso(r["updated_at"]), "final_at": _iso(r["final_at"]),
        "next_try": _iso(next_try(r["state"], r["attempts"], r["updated_at"], delays,
                                  held_recheck_s)),
        "status": r["status"], "diagnostic": r["diagnostic"],
        "dead_lettered_at": _iso(r["dead_lettered_at"]),
    }


@router.get("/actions", summary="The audit of queue actions, newest first; admin")
async def list_actions(
    principal: AdminDep,
    runtime: RuntimeDep,
    message_id: Annotated[str | None, Query()] = None,
    # an action's id (bigserial): anything outside int8 is a client's mistake, not a 500
    before: Annotated[int | None, Query(ge=1, le=2**63 - 1,
                                        description="id: the next page")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> Response:
    rows = await runtime.queue.actions(
        message_id=_message_id(message_id) if message_id else None, before=before, limit=limit)
    return _json({"actions": [
        {"id": r["id"], "at": _iso(r["at"]), "actor": r["actor"], "action": r["action"],
         "message_id": str(r["message_id"]) if r["message_id"] else None,
         "recipients": list(r["recipients"]), "detail": orjson.loads(r["detail"]),
         "bounce_events": r["has_events"], "events_pending": r["events_pending"]}
        for r in rows]})


@router.post("/retry-all", summary="Retry every deferred recipient now (postqueue -f); admin")
async def retry_all(principal: AdminDep, runtime: RuntimeDep) -> Response:
    return _done(await runtime.queue.act_all(principal.name, "retry"))


@router.get("/dead", summary="Dead letters: recipients the dead-letter handler ended; admin")
async def list_dead(principal: AdminDep, runtime: RuntimeDep,
                    limit: Annotated[int, Query(ge=1, le=5000)] = 500) -> Response:
    return await _dead(runtime, None, limit)


@router.get("/dead/{message_id}", summary="The dead letters of one message; admin")
async def show_dead(message_id: str, principal: AdminDep, runtime: RuntimeDep) -> Response:
    resp = await _dead(runtime, _message_id(message_id), 5000)
    if not orjson.loads(resp.body)["recipients"]:
        raise NotFound(f"message {message_id} has no dead letter", code="not_dead")
    return resp


async def _dead(runtime: Any, mid: uuid.UUID | None, limit: int) -> Response:
    settings = runtime.settings
    rows = await runtime.queue.listing(states=["bounced"], account=None, sender=None,
                                       older_than_s=None, dead=True, message_id=mid, limit=limit)
    delays = topology.parse_delays(settings.executor_retry_delays_s)
    return _json({"recipients": [_queue_item(r, delays, settings.executor_held_recheck_s)
                                 for r in rows],
                  # jobs in deliveries.dead not yet handled (an executor drains it at once)
                  "in_dead_letter_queue": await runtime.queue.dead_in_queue()})


@router.post("/dead/requeue-all", summary="Requeue every dead letter; admin")
async def requeue_all(principal: AdminDep, runtime: RuntimeDep) -> Response:
    return _done(await runtime.queue.act_all(principal.name, "requeue"))


@router.post("/dead/{message_id}/requeue", summary="Requeue a message's dead letters; admin")
async def requeue(message_id: str, principal: AdminDep, runtime: RuntimeDep,
                  recipient: RecipientQ = None) -> Response:
    return _done(await runtime.queue.act(principal.name, "requeue", _message_id(message_id),
                                         account_filter(recipient)))


@router.post("/{message_id}/{action}",
             summary="retry | hold | release | delete (bounce=true: with a DSN); admin")
async def act(
    message_id: str, action: str, principal: AdminDep, runtime: RuntimeDep,
    recipient: RecipientQ = None,
    bounce: Annotated[bool, Query(description="delete: bounce to the sender (a DSN)")] = False,
) -> Response:
    if action not in ACTION_PATHS:
        raise NotFound(f"no queue action {action!r}; one of {', '.join(ACTION_PATHS)}",
                       code="no_such_action")
    if bounce and action != "delete":
        raise BadRequest("bounce: only with delete", code="bad_option")
    which: Action = "delete_bounce" if bounce else ACTION_PATHS[action]
    return _done(await runtime.queue.act(principal.name, which, _message_id(message_id),
                                         account_filter(recipient)))


def _done(done: Done) -> Response:
    return _json({**done.as_json(), "at": datetime.now(UTC).isoformat()})
