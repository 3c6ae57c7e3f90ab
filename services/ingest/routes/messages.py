"""``/v1/messages``: read a message's delivery status (MTA, admin, user), list messages
(admin; a user for its own account, seeing only that account's recipients).

``POST /v1/messages`` (submit) is not a route here: ``services.ingest.fastpath`` answers
it before routing, and documents it in the OpenAPI schema.
"""

from __future__ import annotations

import base64
import uuid
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query
from fastapi.responses import Response

from shared.auth import Principal
from shared.errors import BadRequest, Forbidden, NotFound
from shared.states import STATES as RECIPIENT_STATES

from ..deps import ListerDep, ReaderDep, RuntimeDep
from ..envelope import account_filter, parse_sender

router = APIRouter(prefix="/v1/messages", tags=["messages"])

# the states a listing may filter on: a recipient's states
STATES = RECIPIENT_STATES


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@router.get("/{message_id}", summary="Envelope and per-recipient delivery status")
async def get_message(message_id: str, principal: ReaderDep, runtime: RuntimeDep) -> Response:
    try:
        mid = uuid.UUID(message_id)
    except ValueError:
        raise NotFound(f"no message {message_id!r}", code="message_not_found") from None
    account = principal.account if principal.role == "user" else None
    if principal.role == "user" and not account:
        raise NotFound(f"no message {message_id}", code="message_not_found")
    msg, rcpts, runs = await runtime.db.get_message(mid, account)
    if msg is None or (principal.role == "user" and not rcpts):
        raise NotFound(f"no message {message_id}", code="message_not_found")
    by_rcpt: dict[uuid.UUID, list[dict[str, Any]]] = {}
    for run in runs:
        by_rcpt.setdefault(run["recipient_id"], []).append(
            {
                "program": run["program"],
                "position": run["position"],
                "attempt": run["attempt"],
                "exit_status": run["exit_status"],
                "signal": run["signal"],
                "timed_out": run["timed_out"],
                "output_excerpt": run["output_excerpt"],
                "duration_ms": run["duration_ms"],
                "started_at": _iso(run["started_at"]),
            }
        )
    return _json(
        {
            "id": str(msg["id"]),
            "envelope": {
                "from": msg["sender"],
                "to": [r["address"] for r in rcpts],
                "envid": msg["envid"],
                "ret": msg["ret"],
                "notify": list(msg["notify"]),
            },
            "size": msg["size"],
            "received_at": _iso(msg["received_at"]),
            # false once retention (or a queue delete) deleted the body; the records stay
            # for record_retention_days
            "body_held": msg["body_held"],
            "recipients": [
                {
                    "address": r["address"],
                    "account": r["account"],
                    "notify": list(r["notify"]),
                    "orcpt": r["orcpt"],
                    "state": r["state"],
                    "attempts": r["attempts"],
                    "status": r["status"],
                    "diagnostic": r["diagnostic"],
                    "created_at": _iso(r["created_at"]),
                    "updated_at": _iso(r["updated_at"]),
                    "final_at": _iso(r["final_at"]),
                    "programs": by_rcpt.get(r["id"], []),
                }
                for r in rcpts
            ],
        }
    )


def _cursor(received_at: datetime, mid: uuid.UUID) -> str:
    raw = f"{received_at.isoformat()}|{mid}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _parse_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        when, mid = raw.split("|", 1)
        return datetime.fromisoformat(when), uuid.UUID(mid)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("cursor: not a cursor this endpoint returned", code="bad_cursor") from None


def listing_scope(principal: Principal, recipient: str | None) -> tuple[str | None, str | None]:
    """(the account whose messages are listed, the account whose recipients are shown) for
    ``principal``: an admin lists what ``recipient=`` names (every account when absent) and
    sees every recipient; a user lists its own account only (``recipient=`` may name it,
    in any spelling, or be left out) and sees only its own recipients."""
    wanted = account_filter(recipient)
    if principal.role != "user":
        return wanted, None
    own = principal.account
    if not own:
        raise Forbidden("this user token is bound to no account", code="wrong_account")
    if wanted is not None and wanted != own:
        raise Forbidden(f"this token belongs to account {own}; it cannot list the messages "
                        f"of {wanted}", code="wrong_account")
    return own, own


def sender_filter(raw: str | None) -> str | None:
    """``sender=`` as the canonical envelope sender it names (domain lower-cased, as
    stored); ``sender=`` empty or ``<>`` is the null reverse-path; None when absent."""
    if raw is None:
        return None
    try:
        return parse_sender(raw)
    except BadRequest as exc:
        raise BadRequest(exc.message.replace("from:", "sender:", 1), code="bad_sender") from None


@router.get("", summary="List messages, newest first (admin; a user: its own account's)")
async def list_messages(
    principal: ListerDep,
    runtime: RuntimeDep,
    recipient: Annotated[str | None, Query(description="account address")] = None,
    sender: Annotated[str | None, Query(
        description="envelope sender, exact (domain case-insensitive); empty: the null "
        "sender <>")] = None,
    state: Annotated[str | None, Query(description="recipient state")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> Response:
    if state is not None and state not in STATES:
        raise BadRequest(f"state: one of {', '.join(STATES)}", code="bad_state")
    account, shown = listing_scope(principal, recipient)
    rows, rcpts = await runtime.db.list_messages(
        account=account,
        state=state,
        before=_parse_cursor(cursor) if cursor else None,
        limit=limit,
        sender=sender_filter(sender),
        recipients_of=shown,
    )
    by_message: dict[uuid.UUID, list[dict[str, Any]]] = {}
    for r in rcpts:
        by_message.setdefault(r["message_id"], []).append({
            "address": r["address"], "account": r["account"], "state": r["state"],
            "attempts": r["attempts"], "status": r["status"],
            "created_at": _iso(r["created_at"]), "updated_at": _iso(r["updated_at"]),
            "final_at": _iso(r["final_at"]),
        })
    items = [
        {"id": str(r["id"]), "sender": r["sender"], "from": r["sender"], "size": r["size"],
         "received_at": _iso(r["received_at"]), "recipients": by_message.get(r["id"], [])}
        for r in rows
    ]
    nxt = _cursor(rows[-1]["received_at"], rows[-1]["id"]) if len(rows) == limit else None
    return _json({"messages": items, "next_cursor": nxt})
