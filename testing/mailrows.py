"""Message bodies as tests and benchmarks write and read them behind ingest's back
(``mail.bodies``, migrations 0009 and 0011): written and read by ingest's own code."""

from __future__ import annotations

import uuid

import asyncpg

from services.ingest.repo import JOINED_BODY
from shared import bodies

# a message's body in one piece, in a query over ``mail.messages m`` (NULL once deleted)
BODY_OF_M = JOINED_BODY


async def store_body(conn: asyncpg.Connection, message_id: uuid.UUID, body: bytes,
                     slot: int = bodies.KEPT) -> None:
    """The body's rows, cut and written as ingest writes them, in ``slot`` (the kept
    partition unless a ring slot is given; the message's ``body_slot`` follows)."""
    if slot != bodies.KEPT:
        await conn.execute("UPDATE mail.messages SET body_slot = $2 WHERE id = $1",
                           message_id, slot)
    await bodies.copy(conn, slot, [(message_id, [body])])
