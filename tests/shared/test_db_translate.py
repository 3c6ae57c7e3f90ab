"""``translate_db_errors`` against a real PostgreSQL that is shutting down or restarting.

A private throwaway cluster (``testing/pgcluster.py``), never the shared server: a
smart shutdown held open by one session refuses new connections with 57P03 ("the
database system is shutting down", the same answer as "starting up" during a restart),
and a fast shutdown terminates a running query with 57P01. Both must come out as
``Unavailable`` (retry later), not as a plain DBAPIError that callers treat as a broken
request (the notifier dead-letters the event it was storing).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from shared.db import translate_db_errors
from shared.errors import Unavailable
from testing.pgcluster import PrivateCluster
from tests.conftest import free_port

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("pg_createcluster") is None,
    reason="needs root and Debian's pg_createcluster for a private cluster",
)


@pytest.fixture
def cluster() -> Iterator[PrivateCluster]:
    c = PrivateCluster(free_port())
    c.create()
    yield c
    c.drop()


async def test_refused_while_shutting_down_is_unavailable(cluster: PrivateCluster) -> None:
    hold = await asyncpg.connect(cluster.admin_dsn)
    stop = await asyncio.create_subprocess_exec(
        "pg_ctlcluster", "--skip-systemctl-redirect", cluster.version, cluster.name, "stop",
        "-m", "smart")
    engine = create_async_engine(cluster.admin_dsn.replace("postgresql://", "postgresql+asyncpg://"))
    try:
        await asyncio.sleep(1.5)  # smart shutdown waits for `hold`; new connections: 57P03
        with pytest.raises(Unavailable), translate_db_errors():
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
    finally:
        await hold.close()
        await asyncio.wait_for(stop.wait(), 60)
        await engine.dispose()


async def test_query_terminated_by_fast_shutdown_is_unavailable(cluster: PrivateCluster) -> None:
    engine = create_async_engine(cluster.admin_dsn.replace("postgresql://", "postgresql+asyncpg://"))
    try:
        async with engine.connect() as conn:
            running = asyncio.create_task(conn.execute(text("SELECT pg_sleep(10)")))
            await asyncio.sleep(0.5)
            await asyncio.to_thread(cluster.stop)
            with pytest.raises(Unavailable), translate_db_errors():
                await running
    finally:
        await engine.dispose()
