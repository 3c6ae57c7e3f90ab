"""Message bodies as tests and benchmarks write and read them behind ingest's back
(``mail.bodies``, migration 0009): the same 8,000-byte rows ingest stores."""

from __future__ import annotations

import uuid

import asyncpg

from services.ingest.repo import BODY_CHUNK

# ($1 message id, $2 body): the body's rows, cut as ingest cuts them
STORE_BODY = f"""
INSERT INTO mail.bodies (message_id, off, chunk)
SELECT $1, o, substring($2::bytea FROM o + 1 FOR {BODY_CHUNK})
FROM generate_series(0, length($2::bytea) - 1, {BODY_CHUNK}) AS o
"""

# a message's body in one piece, in a query over ``mail.messages m`` (NULL once deleted)
BODY_OF_M = ("(SELECT string_agg(b.chunk, ''::bytea ORDER BY b.off) FROM mail.bodies b "
             "WHERE b.message_id = m.id)")


async def store_body(conn: asyncpg.Connection, message_id: uuid.UUID, body: bytes) -> None:
    await conn.execute(STORE_BODY, message_id, body)
