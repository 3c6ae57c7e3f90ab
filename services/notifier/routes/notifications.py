"""``GET /v1/notifications`` and ``GET /v1/notifications/{id}``: what the notifier
generated and where sending it stands.

The admin reads everything. A ``user`` reads the DSNs about its own account's recipients
only (``services.notifier.visibility``): the listing needs ``message_id`` and leaves the
rest out; any other notification's id is 404 for it, exactly as an unknown id, so ids
don't leak."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from services.notifier import repo
from services.notifier.visibility import user_may_read
from shared.auth import Principal, require
from shared.db import session_scope
from shared.errors import BadRequest, NotFound

router = APIRouter(prefix="/v1/notifications", tags=["notifications"])

ReaderDep = Annotated[Principal, Depends(require("admin", "user"))]
# A user's listing is one message's DSNs: never more than this many rows are read for it.
USER_SCAN_LIMIT = 1000
State = Literal["pending", "sent", "failed"]


class NotificationOut(BaseModel):
    id: uuid.UUID
    message_id: uuid.UUID | None
    kind: str
    rcpt: str
    state: str
    attempts: int
    last_error: str | None
    created_at: datetime
    sent_at: datetime | None
    next_attempt_at: datetime | None


class NotificationPage(BaseModel):
    items: list[NotificationOut]
    next_cursor: str | None


class NotificationDetail(NotificationOut):
    event_ids: list[str]
    # the rendered message; null once deleted (after it was sent, or failed for good)
    content: str | None


def _encode_cursor(row: dict[str, Any]) -> str:
    raw = f"{row['created_at'].isoformat()}|{row['id']}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, _, nid = raw.partition("|")
        return datetime.fromisoformat(at), uuid.UUID(nid)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(
            "cursor is not valid; pass the next_cursor of the previous page unchanged",
            code="bad_cursor",
        ) from exc


@router.get("", response_model=NotificationPage)
async def list_notifications(
    principal: ReaderDep,
    message_id: uuid.UUID | None = None,
    state: State | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: str | None = None,
) -> NotificationPage:
    """Newest first; content is left out (``GET /v1/notifications/{id}`` has it). A user
    must name the message (``message_id``) and gets only the DSNs about its account."""
    after = _decode_cursor(cursor) if cursor else None
    user = principal.role == "user"
    if user and message_id is None:
        raise BadRequest(
            "message_id is required: a user token lists the DSNs of one message to its "
            "account (GET /v1/notifications?message_id=<id>)",
            code="message_id_required",
        )
    async with session_scope() as session:
        if user:
            scanned = await repo.list_notifications(
                session, message_id=message_id, state=state, limit=USER_SCAN_LIMIT,
                after=after, kinds=repo.DSN_KINDS, with_content=True,
            )
            rows = [r for r in scanned
                    if user_may_read(r["kind"], _bytes(r.pop("content")), principal.account,
                                     r.pop("reported"))]
            rows = rows[: limit + 1]
        else:
            rows = await repo.list_notifications(
                session, message_id=message_id, state=state, limit=limit + 1, after=after
            )
    more = len(rows) > limit
    rows = rows[:limit]
    return NotificationPage(
        items=[NotificationOut(**r) for r in rows],
        next_cursor=_encode_cursor(rows[-1]) if more and rows else None,
    )


@router.get("/{notification_id}", response_model=NotificationDetail)
async def get_notification(principal: ReaderDep, notification_id: uuid.UUID) -> NotificationDetail:
    async with session_scope() as session:
        row = await repo.get_notification(session, notification_id)
    if row is None or (principal.role == "user" and not user_may_read(
            row["kind"], _bytes(row["content"]), principal.account, row["reported"])):
        raise NotFound(f"no notification {notification_id}", code="notification_not_found")
    row.pop("reported")
    raw = _bytes(row.pop("content"))
    content = None if raw is None else raw.decode("utf-8", "replace")
    return NotificationDetail(**row, content=content)


def _bytes(value: Any) -> bytes | None:
    return None if value is None else bytes(value)
