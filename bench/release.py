"""Giving the delivered bodies' space back, inside a bench run's measured window: what a
running system's ingest (and autovacuum) does for every body after the run's load, so
that the CPU per delivery counts it too (issue 17).

Without this a run ends once every recipient is recorded delivered, and the bodies'
release comes later: in a running system at ingest's next retention pass (every
``MAILEXEC_RETENTION_INTERVAL_S``) or ring turn, and autovacuum's pass — never inside a
few seconds' run, and never on this workplace's shared PostgreSQL, whose autovacuum is
off. A layout that is cheap to write and dear to release (or the reverse) looked better
(or worse) than it is.

It runs the tree's own code, so the same harness measures each version as it ships:

- with the body ring (migration 0011, ``services/ingest/bodyring.py``): every ring
  slot's turn — settle (release) its bodies, ``TRUNCATE`` it;
- before it: ingest's retention pass (``Purger.release_bodies``: flags and ``DELETE``),
  then ``VACUUM mail.bodies`` as autovacuum would;
- before retention existed (issue 17): nothing — that version kept every body.

One connection; the CPU its PostgreSQL backend spent is returned, for the run's
``pg_backends``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg


def _cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _release(dsn: str) -> dict[str, Any]:
    from shared.settings import get_settings

    try:
        from services.ingest import retention
    except ImportError:  # a version from before retention: it kept every body
        return {"released": 0, "how": "none (this version keeps every body)", "pg_cpu_s": 0.0}
    try:
        from services.ingest.bodyring import BodyRing
        from shared import bodies
    except ImportError:
        BodyRing = None  # noqa: N806 — a version without the ring

    class OneConnection:
        """Just enough of ingest's Database for its release code: one connection."""

        def __init__(self, conn: asyncpg.Connection) -> None:
            self.conn = conn

        @contextlib.asynccontextmanager
        async def connection(self) -> AsyncIterator[asyncpg.Connection]:
            yield self.conn

    conn = await asyncpg.connect(dsn)
    try:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        t0 = _cpu_s(pid)
        db = OneConnection(conn)
        released = 0
        if BodyRing is not None:
            ring = BodyRing(db, get_settings().body_slot_s)  # type: ignore[arg-type]
            # the next turn, as ingest's own ring would claim it (a slot it emptied for
            # that turn already has no delivered bodies: nothing writes to it before)
            turn = bodies.turn_at(time.time(), get_settings().body_slot_s) + 1
            for slot in range(1, bodies.RING + 1):
                done = await ring.empty(conn, slot, turn)
                released += done.released
            how = "ring turns (settle, TRUNCATE)"
        else:
            purger = retention.Purger(db, get_settings())  # type: ignore[arg-type]
            try:
                released = await purger.release_bodies()
            finally:
                await purger.stop()
            await conn.execute("VACUUM mail.bodies")
            how = "retention pass (DELETE), VACUUM"
        return {"released": released, "how": how, "pg_cpu_s": _cpu_s(pid) - t0}
    finally:
        await conn.close()


def release(dsn: str) -> dict[str, Any]:
    """Release every delivered body now; what was done and its backend's CPU seconds."""
    return asyncio.run(_release(dsn))
