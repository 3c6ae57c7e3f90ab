"""How a message body is laid out in ``mail.bodies`` (migrations 0009, 0011), in one
place: the row size, the ring of partitions a body is written to, how ingest cuts a body
into rows and writes them, and how each reader puts them back together (the executor the
whole body, ingest's relay a small one for an inline job, the notifier only the first
bytes it quotes).

A body is its rows ``(slot, message_id, off, chunk)``: ``chunk`` at most :data:`CHUNK`
bytes at byte offset ``off``, ``STORAGE PLAIN`` — a row fits an 8 KiB page, so a body is
never TOASTed nor compressed (attachments don't compress; TOAST's ~2 KiB chunks cost four
times the rows: ``bench/bodystore.py``).

``mail.bodies`` is partitioned by ``slot`` (0011): :data:`RING` ring partitions take the
new bodies a turn each (:func:`slot_at`), and a ring partition is emptied by ``TRUNCATE``
just before its turn comes round again (``services/ingest/bodyring.py``), after the few
bodies still needed in it were moved to the ``KEPT`` partition, which is emptied the old
way (``DELETE`` by retention, then vacuum). ``mail.messages.body_slot`` says where a
message's body is; a reader always asks for the rows of that slot (a moved body's old
rows stay until the truncate) and only while ``body_held`` is true (a released body's
rows in a ring partition stay until its turn too). Who may do what to them is the
grants' business (ingest writes, deletes and truncates, the executor and the notifier
read through the parent table).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence

import asyncpg

# Bytes of one row (migration 0009's CHUNK, which a unit test holds equal; the shipped
# revision's comment names this constant's former home, services/ingest/repo.BODY_CHUNK):
# the most a heap row holds inline on an 8 KiB page.
CHUNK = 8000

COLUMNS = ("slot", "message_id", "off", "chunk")

# The ring (migration 0011's RING, which a unit test holds equal): partitions 1..RING take
# new bodies in turn; slot KEPT holds the bodies still needed when their slot's turn came.
RING = 4
KEPT = 0


def partition(slot: int) -> str:
    """The partition of ``mail.bodies`` that holds slot ``slot`` (a name for SQL text:
    only ever one of these fixed names)."""
    if slot == KEPT:
        return "bodies_kept"
    if not 1 <= slot <= RING:
        raise ValueError(f"no body slot {slot}")
    return f"bodies_ring{slot}"


def turn_at(t: float, slot_s: float) -> int:
    """The number of the turn at time ``t`` (seconds since the epoch): each turn lasts
    ``slot_s`` seconds, and one ring slot takes the new bodies during it."""
    return int(t // slot_s)


def slot_of(turn: int) -> int:
    """The ring slot that takes new bodies during turn ``turn``."""
    return 1 + turn % RING


def slot_at(t: float, slot_s: float) -> int:
    """The ring slot new bodies go to at time ``t``."""
    return slot_of(turn_at(t, slot_s))


# asyncpg, $1 = the message id: the rows of its body, for the reader to join (once, in
# the executor: joining in PostgreSQL would copy the body once more there). The slot
# comes from the message in the same statement, so a body moved meanwhile is read whole
# from one place or the other; none once released. Unordered: :func:`read` puts them in
# offset order (an ORDER BY sorts the whole body in PostgreSQL, a copy of it and ~0.4 ms
# per MiB, besides the planning a partitioned table costs).
READ_CHUNKS = """
SELECT off, chunk FROM mail.bodies
WHERE slot = (SELECT body_slot FROM mail.messages WHERE id = $1 AND body_held)
  AND message_id = $1
"""


async def read(conn: asyncpg.Connection, message_id: uuid.UUID) -> bytes | None:
    """The whole body of a message whose body is held; None when it has none."""
    rows = await conn.fetch(READ_CHUNKS, message_id)
    if not rows:
        return None
    rows.sort(key=lambda r: r[0])
    return b"".join([r[1] for r in rows])


def of_message(message_sql: str, rows_sql: str = "b") -> str:
    """The condition that ``mail.bodies`` rows ``rows_sql`` are the body of the
    ``mail.messages`` row ``message_sql`` (a moved body's old rows are in another slot)."""
    return (f"{rows_sql}.slot = {message_sql}.body_slot "
            f"AND {rows_sql}.message_id = {message_sql}.id")


def joined(message_sql: str) -> str:
    """A scalar subquery: the whole body of the ``mail.messages`` row ``message_sql``
    names (``m``: ``m.id``, ``m.body_slot``), joined in PostgreSQL — for small bodies only;
    the caller checks ``body_held``."""
    return (f"(SELECT string_agg(b.chunk, ''::bytea ORDER BY b.off) FROM mail.bodies b "
            f"WHERE {of_message(message_sql)})")


def first_bytes(limit_sql: str) -> str:
    """An aggregate over a message's rows filtered by ``off < limit``: its first
    ``limit_sql`` bytes — only the rows that start before the limit are read."""
    return f"substring(string_agg(chunk, ''::bytea ORDER BY off) FROM 1 FOR {limit_sql})"


def rows(pieces: Sequence[bytes]) -> Iterator[tuple[int, memoryview]]:
    """(byte offset, chunk) rows of a body given in pieces as it arrived: views into
    the pieces, at most :data:`CHUNK` bytes each, no copy (asyncpg encodes any buffer)."""
    off = 0
    for piece in pieces:
        view = memoryview(piece)
        for start in range(0, len(view), CHUNK):
            part = view[start:start + CHUNK]
            yield off, part
            off += len(part)


async def copy(conn: asyncpg.Connection, slot: int,
               bodies: Iterable[tuple[uuid.UUID, Sequence[bytes]]]) -> None:
    """Write (message id, body pieces) as rows of slot ``slot`` (the messages' own
    ``body_slot``, in the same transaction), streamed by COPY into that partition: encoded
    a buffer at a time, never the batch at once, and PostgreSQL's multi-row insert
    (measured: half the CPU of unnest arrays for a batch of 1 MiB bodies,
    bench/bodystore.py)."""
    await conn.copy_records_to_table(
        partition(slot), schema_name="mail", columns=COLUMNS,
        records=((slot, mid, off, chunk) for mid, pieces in bodies
                 for off, chunk in rows(pieces)))
