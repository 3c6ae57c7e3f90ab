"""asyncpg pool helpers shared by the services that use asyncpg directly (ingest, executor).

Kept apart from ``shared.db`` on purpose: that module imports SQLAlchemy, which the
executor otherwise never loads (~20 MiB of resident memory per executor process).
"""

from __future__ import annotations


async def keep_session(conn: object) -> None:
    """``asyncpg.create_pool(reset=keep_session)``: skip the pool's per-release ``RESET
    ALL``/``UNLISTEN``/``pg_advisory_unlock_all`` round trip (an open transaction is
    still rolled back). Only for pools whose users never change session state, LISTEN
    or take advisory locks — the hot paths of ingest and the executor, which release a
    connection after every statement."""
