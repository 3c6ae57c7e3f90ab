"""Message bodies as tests and benchmarks write and read them behind ingest's back
(``mail.bodies``, migration 0009): written and read by ingest's own code."""

from __future__ import annotations

import uuid

import asyncpg

from services.ingest.repo import JOINED_BODY
from shared import bodies

# a message's body in one piece, in a query over ``mail.messages m`` (NULL once deleted)
BODY_OF_M = JOINED_BODY


async def store_body(conn: asyncpg.Connection, message_id: uuid.UUID, body: bytes) -> None:
    """The body's rows, cut and written as ingest writes them."""
    await bodies.copy(conn, [(message_id, [body])])
