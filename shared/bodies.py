"""How a message body is laid out in ``mail.bodies`` (migration 0009), in one place: the
row size, how ingest cuts a body into rows and writes them, and how each reader puts
them back together (the executor the whole body, ingest's relay a small one for an
inline job, the notifier only the first bytes it quotes).

A body is its rows ``(message_id, off, chunk)``: ``chunk`` at most :data:`CHUNK` bytes
at byte offset ``off``, ``STORAGE PLAIN`` — a row fits an 8 KiB page, so a body is never
TOASTed nor compressed (attachments don't compress; TOAST's ~2 KiB chunks cost four
times the rows: ``bench/bodystore.py``). Who may do what to them is the grants' business
(ingest writes and deletes, the executor and the notifier read).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence

import asyncpg

# Bytes of one row (migration 0009's CHUNK, which a unit test holds equal; the shipped
# revision's comment names this constant's former home, services/ingest/repo.BODY_CHUNK):
# the most a heap row holds inline on an 8 KiB page.
CHUNK = 8000

COLUMNS = ("message_id", "off", "chunk")

# asyncpg, $1 = the message id: the rows in order, for the reader to join (once, in the
# executor; joining in PostgreSQL would copy the body once more there)
READ_CHUNKS = "SELECT chunk FROM mail.bodies WHERE message_id = $1 ORDER BY off"


def joined(message_id_sql: str) -> str:
    """A scalar subquery: the whole body of the message ``message_id_sql`` names, joined
    in PostgreSQL (NULL when none is held) — for small bodies only."""
    return (f"(SELECT string_agg(b.chunk, ''::bytea ORDER BY b.off) FROM mail.bodies b "
            f"WHERE b.message_id = {message_id_sql})")


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


async def copy(conn: asyncpg.Connection,
               bodies: Iterable[tuple[uuid.UUID, Sequence[bytes]]]) -> None:
    """Write (message id, body pieces) as rows, streamed by COPY: encoded a buffer at a
    time, never the batch at once, and PostgreSQL's multi-row insert (measured: half the
    CPU of unnest arrays for a batch of 1 MiB bodies, bench/bodystore.py)."""
    await conn.copy_records_to_table(
        "bodies", schema_name="mail", columns=COLUMNS,
        records=((mid, off, chunk) for mid, pieces in bodies for off, chunk in rows(pieces)))
