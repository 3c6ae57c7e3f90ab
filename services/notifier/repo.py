"""SQL of the notifier: ``notifier.notifications`` (the outbox), ``notifier.seen_events``
and the read-only look at ``mail.messages`` for returned content.

Every function takes the caller's session, so the caller decides what commits together
(an event is marked seen in the same transaction that stores the DSN covering it).
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from services.notifier.rules import reported_recipients
from shared import bodies

DSN_KINDS = frozenset({"bounce", "delayed", "delivered"})
NOTICE_KINDS = frozenset({"admin_notice", "postmaster_copy"})
STATES = ("pending", "sent", "failed")

_SUMMARY_COLUMNS = (
    "id, message_id, kind, rcpt, state, attempts, last_error, created_at, sent_at, next_attempt_at"
)


@dataclass(frozen=True)
class Outgoing:
    """A pending notification this sender holds (see :func:`lock_due`)."""

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


@dataclass(frozen=True)
class NewNotification:
    kind: str
    rcpt: str
    content: bytes
    message_id: uuid.UUID | None
    event_ids: Sequence[uuid.UUID | str]
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    # a DSN's Final-Recipient addresses, lower-cased (rules.reported_field): kept when the
    # content is deleted, for a user's visibility and the once-per-window delay warnings
    reported: Sequence[str] | None = None


async def insert_notifications(session: AsyncSession, rows: Sequence[NewNotification]) -> None:
    """Many outbox rows in one statement (the rows of one transaction)."""
    if not rows:
        return
    await session.execute(
        text(
            "INSERT INTO notifier.notifications "
            "(id, message_id, kind, rcpt, event_ids, content, reported) "
            "SELECT id, mid, kind, rcpt, string_to_array(events, ','), content, "
            "CASE WHEN reported IS NULL THEN NULL ELSE "
            "ARRAY(SELECT jsonb_array_elements_text(CAST(reported AS jsonb))) END FROM unnest("
            "CAST(:ids AS uuid[]), CAST(:mids AS uuid[]), CAST(:kinds AS text[]), "
            "CAST(:rcpts AS text[]), CAST(:events AS text[]), CAST(:contents AS bytea[]), "
            "CAST(:reported AS text[])"
            ") AS t(id, mid, kind, rcpt, events, content, reported)"
        ),
        {
            "ids": [r.id for r in rows],
            "mids": [r.message_id for r in rows],
            "kinds": [r.kind for r in rows],
            "rcpts": [r.rcpt for r in rows],
            # uuids never contain a comma; a 2-D array would need equal lengths
            "events": [",".join(str(e) for e in r.event_ids) for r in rows],
            "contents": [r.content for r in rows],
            # addresses may contain commas (quoted local parts): one JSON array per row
            "reported": [None if r.reported is None else orjson.dumps(list(r.reported)).decode()
                         for r in rows],
        },
    )


# The first :limit bytes of a body: only the rows that start before it (``off < :limit``),
# of the slot its message names (shared/bodies.py: a moved body's old rows stay a while)
_FIRST_BYTES = bodies.first_bytes(":limit")


async def load_originals(
    session: AsyncSession, message_ids: Iterable[uuid.UUID], limit: int
) -> dict[uuid.UUID, bytes]:
    """:func:`load_original` for many messages at once (missing ones are absent)."""
    ids = list(dict.fromkeys(message_ids))
    if not ids:
        return {}
    rows = await session.execute(
        text(
            "SELECT b.message_id, " + _FIRST_BYTES + " FROM mail.bodies b "
            "JOIN mail.messages m ON " + bodies.of_message("m") + " "
            "WHERE m.id = ANY(CAST(:ids AS uuid[])) AND m.body_held AND b.off < :limit "
            "GROUP BY b.message_id"
        ),
        {"ids": ids, "limit": limit},
    )
    # a body already deleted (retention, ``mailexec queue delete``) is absent as well
    return {r[0]: bytes(r[1]) for r in rows if r[1] is not None}


async def delayed_reports_since_many(
    session: AsyncSession, message_ids: Iterable[uuid.UUID], since: datetime
) -> dict[uuid.UUID, set[str]]:
    """The recipients (lower-cased) reported by the ``delayed`` DSNs written for each of
    these messages since ``since``."""
    ids = list(dict.fromkeys(message_ids))
    if not ids:
        return {}
    rows = await session.execute(
        text(
            "SELECT message_id, reported, CASE WHEN reported IS NULL THEN content END "
            "FROM notifier.notifications "
            "WHERE message_id = ANY(CAST(:mids AS uuid[])) AND kind = 'delayed' AND created_at >= :since"
        ),
        {"mids": ids, "since": since},
    )
    found: dict[uuid.UUID, set[str]] = {}
    for r in rows:
        found.setdefault(r[0], set()).update(reported_of(r[1], r[2]))
    return found


def reported_of(reported: Sequence[str] | None, content: bytes | None) -> set[str]:
    """A stored DSN's reported recipients: its ``reported`` column, or for a row written
    before it existed (migration 0008) what its content says."""
    if reported is not None:
        return set(reported)
    if content is None:
        return set()
    return reported_recipients(bytes(content))


async def load_original(session: AsyncSession, message_id: uuid.UUID, limit: int) -> bytes | None:
    """The first ``limit`` bytes of the stored message (None when ingest has no such
    message, or its body was deleted)."""
    row = (
        await session.execute(
            text("SELECT " + _FIRST_BYTES + " FROM mail.bodies b "
                 "JOIN mail.messages m ON " + bodies.of_message("m") + " "
                 "WHERE m.id = :id AND m.body_held AND b.off < :limit"),
            {"id": message_id, "limit": limit},
        )
    ).first()
    return None if row is None or row[0] is None else bytes(row[0])


# The rows are locked in one order (message, address, id: ingest's queue control locks a
# message's recipients in the same) before they change, so two of these never deadlock.
_HANDLED = """
WITH t AS (
    SELECT mid, addr, array_agg(kind) AS kinds
    FROM unnest(CAST(:mids AS uuid[]), CAST(:addrs AS text[]), CAST(:kinds AS text[]))
         AS x(mid, addr, kind)
    GROUP BY mid, addr
), target AS (
    SELECT r.id, t.kinds FROM mail.recipients r
    JOIN t ON r.message_id = t.mid AND r.address = t.addr
    WHERE r.notifier_pending IS NOT NULL
    ORDER BY r.message_id, r.address, r.id
    FOR UPDATE OF r
)
UPDATE mail.recipients AS r
   SET notifier_pending = nullif(ARRAY(SELECT k FROM unnest(r.notifier_pending) AS k
                                       WHERE NOT (k = ANY(target.kinds))), '{}')
  FROM target
 WHERE r.id = target.id
"""
# deadlock_detected, lock_not_available (lock_timeout): another transaction held the rows
_LOCK_CONFLICTS = frozenset({"40P01", "55P03"})


async def handled(session: AsyncSession, done: Iterable[tuple[uuid.UUID, str, str]]) -> bool:
    """The notifications of these (message, recipient address, kind) are stored (or were
    decided against): take them off ``mail.recipients.notifier_pending`` (migration 0008),
    in the transaction that stores them, so ingest may delete the message's body once
    nothing else needs it.

    Under a savepoint with a short ``lock_timeout``: when the rows can't be had (a
    deadlock with the executor's batched statements, which may hold a deferred
    recipient's row), nothing changes here and False says so — the caller stores its
    DSNs anyway and clears the flags in a transaction of its own. A flag left set only
    keeps a body longer, it never loses a DSN."""
    rows = list(dict.fromkeys(done))
    if not rows:
        return True
    try:
        async with session.begin_nested():
            await session.execute(text("SET LOCAL lock_timeout = '500ms'"))
            await session.execute(
                text(_HANDLED),
                {"mids": [m for m, _, _ in rows], "addrs": [a for _, a, _ in rows],
                 "kinds": [k for _, _, k in rows]},
            )
    except DBAPIError as exc:
        if _sqlstate(exc) not in _LOCK_CONFLICTS:
            raise
        return False
    return True


def _sqlstate(exc: BaseException) -> str | None:
    seen: set[int] = set()
    err: BaseException | None = exc
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        state = getattr(err, "sqlstate", None)
        if isinstance(state, str):
            return state
        err = getattr(err, "orig", None) or err.__cause__
    return None


# A notification being sent is held by a session-level advisory lock on its id (the
# first 64 bits of the uuid) on the sender's lock connection: held across transactions,
# so each "sent" can commit as soon as the relay accepted, and released when that
# connection ends, so a crashed sender's rows are free again at once.
_LOCK_KEY = "('x' || translate(CAST({} AS text), '-', ''))::bit(64)::bigint"


async def lock_due(
    conn: AsyncConnection, limit: int, exclude: Collection[uuid.UUID]
) -> list[uuid.UUID]:
    """Take the advisory locks of up to ``limit`` due pending notifications (oldest
    first) that no other sender holds, skipping ``exclude`` (this sender's own).

    Ordered by ``next_attempt_at`` alone, the order of the partial index
    ``notifications_pending``: the scan stops after a few rows however long the backlog
    (rows with equal times were written by one transaction). Other senders' rows are at
    the head too, and a failed ``pg_try_advisory_lock`` is not skipped the way ``SKIP
    LOCKED`` skips a row lock, so the candidates reach past them."""
    rows = await conn.execute(
        text(
            "WITH candidates AS MATERIALIZED ("
            " SELECT id FROM notifier.notifications"
            " WHERE state = 'pending' AND next_attempt_at <= now()"
            " AND NOT (id = ANY(CAST(:exclude AS uuid[])))"
            " ORDER BY next_attempt_at LIMIT :window"
            f") SELECT id FROM candidates WHERE pg_try_advisory_lock({_LOCK_KEY.format('id')})"
            " LIMIT :limit"
        ),
        {"exclude": list(exclude), "limit": limit, "window": 2 * limit + 256},
    )
    return [r[0] for r in rows]


async def load_locked(conn: AsyncConnection, ids: Sequence[uuid.UUID]) -> list[Outgoing]:
    """The locked notifications that are still due and pending. A statement after the
    lock sees a ``sent``/retry mark the previous holder committed before unlocking."""
    rows = await conn.execute(
        text(
            "SELECT id, message_id, kind, rcpt, attempts, content, created_at "
            "FROM notifier.notifications WHERE id = ANY(CAST(:ids AS uuid[])) "
            "AND state = 'pending' AND next_attempt_at <= now() "
            "ORDER BY next_attempt_at"
        ),
        {"ids": list(ids)},
    )
    return [
        Outgoing(id=r[0], message_id=r[1], kind=r[2], rcpt=r[3], attempts=r[4],
                 content=bytes(r[5]), created_at=r[6])
        for r in rows
    ]


async def unlock(conn: AsyncConnection, ids: Sequence[uuid.UUID]) -> None:
    if ids:
        await conn.execute(
            text(
                f"SELECT pg_advisory_unlock({_LOCK_KEY.format('id')}) "
                "FROM unnest(CAST(:ids AS uuid[])) AS t(id)"
            ),
            {"ids": list(ids)},
        )


async def unlock_all(conn: AsyncConnection) -> None:
    await conn.execute(text("SELECT pg_advisory_unlock_all()"))


async def mark_sent_many(conn: AsyncConnection | AsyncSession, ids: Sequence[uuid.UUID]) -> None:
    """Record that the relay accepted these (once: a repeat after an unknown outcome is
    a no-op)."""
    await conn.execute(
        text(
            "UPDATE notifier.notifications SET state = 'sent', sent_at = now(), "
            "attempts = attempts + 1, last_error = NULL "
            "WHERE id = ANY(CAST(:ids AS uuid[])) AND state = 'pending'"
        ),
        {"ids": list(ids)},
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


async def list_notifications(
    session: AsyncSession,
    *,
    message_id: uuid.UUID | None,
    state: str | None,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None,
    kinds: Collection[str] | None = None,
    with_content: bool = False,
) -> list[dict[str, Any]]:
    """Newest first; ``after`` is the (created_at, id) of the last row of the previous page.
    ``kinds`` keeps only those kinds; ``with_content`` adds each row's ``content`` and
    ``reported`` (what a user's visibility reads)."""
    where: list[str] = []
    params: dict[str, Any] = {"limit": limit}
    if message_id is not None:
        where.append("message_id = :mid")
        params["mid"] = message_id
    if kinds is not None:
        where.append("kind = ANY(CAST(:kinds AS text[]))")
        params["kinds"] = sorted(kinds)
    if state is not None:
        where.append("state = :state")
        params["state"] = state
    if after is not None:
        where.append("(created_at, id) < (:after_at, :after_id)")
        params["after_at"], params["after_id"] = after
    columns = _SUMMARY_COLUMNS + (", content, reported" if with_content else "")
    sql = f"SELECT {columns} FROM notifier.notifications"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY created_at DESC, id DESC LIMIT :limit"
    rows = await session.execute(text(sql), params)
    return [dict(r._mapping) for r in rows]


async def get_notification(session: AsyncSession, nid: uuid.UUID) -> dict[str, Any] | None:
    row = (
        await session.execute(
            text(f"SELECT {_SUMMARY_COLUMNS}, event_ids, content, reported "
                 "FROM notifier.notifications WHERE id = :id"),
            {"id": nid},
        )
    ).first()
    return None if row is None else dict(row._mapping)
