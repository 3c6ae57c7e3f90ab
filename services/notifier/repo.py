"""SQL of the notifier: ``notifier.notifications`` (the outbox), ``notifier.seen_events``
and the read-only look at ``mail.messages`` for returned content.

Every function takes the caller's session, so the caller decides what commits together
(an event is marked seen in the same transaction that stores the DSN covering it).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

DSN_KINDS = frozenset({"bounce", "delayed", "delivered"})
NOTICE_KINDS = frozenset({"admin_notice", "postmaster_copy"})
STATES = ("pending", "sent", "failed")

_SUMMARY_COLUMNS = (
    "id, message_id, kind, rcpt, state, attempts, last_error, created_at, sent_at, next_attempt_at"
)


@dataclass(frozen=True)
class Outgoing:
    """A claimed pending notification, locked until the caller's transaction ends."""

    id: uuid.UUID
    message_id: uuid.UUID | None
    kind: str
    rcpt: str
    attempts: int
    content: bytes
    created_at: datetime


async def mark_seen(session: AsyncSession, event_ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
    """Record the events as consumed; return those not seen before."""
    ids = list(dict.fromkeys(event_ids))
    if not ids:
        return set()
    rows = await session.execute(
        text(
            "INSERT INTO notifier.seen_events (event_id) SELECT unnest(CAST(:ids AS uuid[])) "
            "ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
        ),
        {"ids": ids},
    )
    return {r[0] for r in rows}


async def insert_notification(
    session: AsyncSession,
    *,
    kind: str,
    rcpt: str,
    content: bytes,
    message_id: uuid.UUID | None,
    event_ids: Sequence[uuid.UUID | str],
) -> uuid.UUID:
    nid = uuid.uuid4()
    await session.execute(
        text(
            "INSERT INTO notifier.notifications (id, message_id, kind, rcpt, event_ids, content) "
            "VALUES (:id, :message_id, :kind, :rcpt, :event_ids, :content)"
        ),
        {
            "id": nid,
            "message_id": message_id,
            "kind": kind,
            "rcpt": rcpt,
            "event_ids": [str(e) for e in event_ids],
            "content": content,
        },
    )
    return nid


async def load_original(session: AsyncSession, message_id: uuid.UUID, limit: int) -> bytes | None:
    """The first ``limit`` bytes of the stored message (None when ingest has no such message)."""
    row = (
        await session.execute(
            text("SELECT substring(body FROM 1 FOR :limit) FROM mail.messages WHERE id = :id"),
            {"id": message_id, "limit": limit},
        )
    ).first()
    return None if row is None else bytes(row[0])


async def delayed_reports_since(
    session: AsyncSession, message_id: uuid.UUID, since: datetime
) -> list[bytes]:
    """Contents of the ``delayed`` DSNs written for a message since ``since``."""
    rows = await session.execute(
        text(
            "SELECT content FROM notifier.notifications "
            "WHERE message_id = :mid AND kind = 'delayed' AND created_at >= :since"
        ),
        {"mid": message_id, "since": since},
    )
    return [bytes(r[0]) for r in rows]


async def claim_due(session: AsyncSession) -> Outgoing | None:
    """Lock the oldest due pending notification no other sender holds."""
    row = (
        await session.execute(
            text(
                "SELECT id, message_id, kind, rcpt, attempts, content, created_at "
                "FROM notifier.notifications "
                "WHERE state = 'pending' AND next_attempt_at <= now() "
                "ORDER BY next_attempt_at, created_at LIMIT 1 FOR UPDATE SKIP LOCKED"
            )
        )
    ).first()
    if row is None:
        return None
    return Outgoing(
        id=row[0],
        message_id=row[1],
        kind=row[2],
        rcpt=row[3],
        attempts=row[4],
        content=bytes(row[5]),
        created_at=row[6],
    )


async def mark_sent(session: AsyncSession, nid: uuid.UUID) -> None:
    await session.execute(
        text(
            "UPDATE notifier.notifications SET state = 'sent', sent_at = now(), "
            "attempts = attempts + 1, last_error = NULL WHERE id = :id"
        ),
        {"id": nid},
    )


async def mark_retry(session: AsyncSession, nid: uuid.UUID, error: str, delay_s: float) -> None:
    await session.execute(
        text(
            "UPDATE notifier.notifications SET attempts = attempts + 1, last_error = :err, "
            "next_attempt_at = now() + make_interval(secs => :delay) WHERE id = :id"
        ),
        {"id": nid, "err": error[:2000], "delay": delay_s},
    )


async def mark_failed(session: AsyncSession, nid: uuid.UUID, error: str) -> None:
    await session.execute(
        text(
            "UPDATE notifier.notifications SET state = 'failed', attempts = attempts + 1, "
            "last_error = :err WHERE id = :id"
        ),
        {"id": nid, "err": error[:2000]},
    )


async def count_pending(session: AsyncSession) -> int:
    row = (
        await session.execute(text("SELECT count(*) FROM notifier.notifications WHERE state = 'pending'"))
    ).first()
    return int(row[0]) if row else 0


async def next_due_in(session: AsyncSession) -> float | None:
    """Seconds until the earliest pending notification is due (<= 0: now), None if none."""
    row = (
        await session.execute(
            text(
                "SELECT EXTRACT(EPOCH FROM (min(next_attempt_at) - now())) "
                "FROM notifier.notifications WHERE state = 'pending'"
            )
        )
    ).first()
    return None if row is None or row[0] is None else float(row[0])


async def list_notifications(
    session: AsyncSession,
    *,
    message_id: uuid.UUID | None,
    state: str | None,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None,
) -> list[dict[str, Any]]:
    """Newest first; ``after`` is the (created_at, id) of the last row of the previous page."""
    where: list[str] = []
    params: dict[str, Any] = {"limit": limit}
    if message_id is not None:
        where.append("message_id = :mid")
        params["mid"] = message_id
    if state is not None:
        where.append("state = :state")
        params["state"] = state
    if after is not None:
        where.append("(created_at, id) < (:after_at, :after_id)")
        params["after_at"], params["after_id"] = after
    sql = f"SELECT {_SUMMARY_COLUMNS} FROM notifier.notifications"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY created_at DESC, id DESC LIMIT :limit"
    rows = await session.execute(text(sql), params)
    return [dict(r._mapping) for r in rows]


async def get_notification(session: AsyncSession, nid: uuid.UUID) -> dict[str, Any] | None:
    row = (
        await session.execute(
            text(f"SELECT {_SUMMARY_COLUMNS}, event_ids, content FROM notifier.notifications WHERE id = :id"),
            {"id": nid},
        )
    ).first()
    return None if row is None else dict(row._mapping)
