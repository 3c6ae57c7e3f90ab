"""The database boundary of each service against the real PostgreSQL: a constraint
violation stays what it is (the caller's 4xx, or a bug: HTTP 500 / the job requeued as
a failure), never a 503 or a defer; a database that is gone is ``DatabaseUnavailable``
(503 / defer), and the same pool works again once it is back.

Until issue 14 the executor turned every PostgresError into a defer and ingest's outbox
answered 503 for any error of its INSERT; these tests pin the new behaviour. The
outage is a TCP proxy that is cut (``tests/chaos/proxy.py``), never the shared server.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from services.executor.repo import RecipientUpdate, Repo
from services.ingest.envelope import Envelope, Recipient
from services.ingest.publish_outbox import Outbox
from services.ingest.repo import Database, NewMessage
from shared.amqp import Broker
from shared.db import dispose_engine, is_outage, session_scope
from shared.errors import DatabaseUnavailable, MailexecError, Unavailable
from shared.settings import get_settings
from tests.chaos.proxy import CuttableProxy
from tests.conftest import free_port


def message() -> NewMessage:
    return NewMessage(
        id=uuid.uuid4(), sender="a@example.net", envid=None, ret=None,
        notify=("FAILURE", "DELAY"), body=[b"Subject: t\r\n\r\nbody\r\n"], idempotency_key=None,
        received_at=datetime.now(UTC), recipient_ids=[uuid.uuid4()],
        addresses=["bob@example.org"], accounts=["bob@example.org"], notifies=[None],
        orcpts=[None],
    )


@pytest.fixture
async def ingest_db(clean_db: None) -> AsyncIterator[Database]:
    db = Database(get_settings().database_url)
    await db.start()
    yield db
    await db.close()


@pytest.fixture
def proxied_url() -> tuple[str, CuttableProxy]:
    url = make_url(get_settings().database_url)
    proxy = CuttableProxy(url.host or "127.0.0.1", url.port or 5432)
    return url.set(port=proxy.port).render_as_string(hide_password=False), proxy


# --- constraint violations: never an outage ----------------------------------------------


async def test_ingest_unique_violation_is_not_an_outage(ingest_db: Database) -> None:
    m = message()
    assert await ingest_db.insert_batch([m]) == {m.id}
    again = replace(m, recipient_ids=[uuid.uuid4()])  # the same message id: 23505
    with pytest.raises(asyncpg.UniqueViolationError) as raised:
        await ingest_db.insert_batch([again])
    assert not is_outage(raised.value)


async def test_ingest_constraint_violation_answers_500_not_503(ingest_db: Database) -> None:
    """Through the outbox, as the HTTP route and LMTP call it: a CHECK violation (23514,
    here a RET the envelope parser would have refused) is a bug → 500, not 503."""
    outbox = Outbox(ingest_db, Broker(get_settings().amqp_url), inline_limit=65536)
    outbox.start()
    envelope = Envelope(sender="a@example.net",
                        recipients=(Recipient("bob@example.org", "bob@example.org"),),
                        envid=None, ret="BOGUS", notify=("FAILURE", "DELAY"))
    try:
        with pytest.raises(MailexecError) as raised:
            await outbox.submit(envelope, [b"Subject: t\r\n\r\nbody\r\n"], None)
    finally:
        await outbox.stop()
    assert not isinstance(raised.value, Unavailable)
    assert raised.value.status_code == 500


async def test_executor_constraint_violation_is_not_a_defer(
    ingest_db: Database,
) -> None:
    """The executor's hot path (claim, then record through the batcher): a CHECK
    violation reaches the worker as itself — its catch-all logs it and requeues the job —
    not as the Unavailable it retries and defers on."""
    m = message()
    await ingest_db.insert_batch([m])
    job_id = m.recipient_ids[0]
    repo = Repo(get_settings().database_url, pool_size=1)
    await repo.start()
    try:
        assert (await repo.claim(job_id, 0, False)).claimed
        bad = RecipientUpdate(job_id=job_id, expected_attempts=0, state="no-such-state",
                              status=None, diagnostic=None, attempts=1, next_program=0,
                              final=False)
        with pytest.raises(asyncpg.CheckViolationError) as raised:
            await repo.record(bad)
        assert not is_outage(raised.value)
        assert await repo.record(replace(bad, state="deferred")) is True  # pool still fine
    finally:
        await repo.close()


async def test_sqlalchemy_unique_violation_is_not_an_outage(clean_db: None) -> None:
    """policy and the notifier (SQLAlchemy, ``session_scope``): IntegrityError, not 503."""
    try:
        with pytest.raises(IntegrityError):
            async with session_scope() as s:
                await s.execute(text("CREATE TEMP TABLE t (k int PRIMARY KEY)"))
                await s.execute(text("INSERT INTO t VALUES (1), (1)"))
    finally:
        await dispose_engine()


# --- outages: DatabaseUnavailable, and recovery ------------------------------------------


async def test_unreachable_database_is_unavailable() -> None:
    closed = make_url(get_settings().database_url).set(port=free_port())
    url = closed.render_as_string(hide_password=False)
    db = Database(url)
    await db.start()  # lazy: ingest starts while PostgreSQL is down
    try:
        with pytest.raises(DatabaseUnavailable) as raised:
            await db.insert_batch([message()])
        assert raised.value.status_code == 503
    finally:
        await db.close()
    repo = Repo(url)
    with pytest.raises(DatabaseUnavailable):
        await repo.start(timeout=1.0)
    await repo.close()


async def test_lost_connection_is_unavailable_then_recovers(
    clean_db: None, proxied_url: tuple[str, CuttableProxy],
) -> None:
    url, proxy = proxied_url
    db = Database(url, max_size=1)
    repo = Repo(url, pool_size=1)
    await db.start()
    await repo.start()
    try:
        assert await db.count_unpublished() == 0
        assert await repo.snapshot(uuid.uuid4()) is None
        proxy.cut()  # live connections reset, new ones refused
        with pytest.raises(DatabaseUnavailable):
            await db.count_unpublished()
        with pytest.raises(DatabaseUnavailable):
            await repo.snapshot(uuid.uuid4())
        with pytest.raises(DatabaseUnavailable):
            await repo.claim(uuid.uuid4(), 0, False)  # the hot path, through the batcher
        proxy.restore()
        assert await db.count_unpublished() == 0
        assert await repo.snapshot(uuid.uuid4()) is None
    finally:
        await repo.close()
        await db.close()
        proxy.close()


async def test_claim_takes_only_the_rows_generation(ingest_db: Database) -> None:
    """Queue control (issue 16): a copy of a job published before an operator's action
    (generation 0) is not claimed, even though state and attempts match; the copy of the
    current generation is — in the same single claim statement."""
    m = message()
    await ingest_db.insert_batch([m])
    job_id = m.recipient_ids[0]
    async with ingest_db.connection() as conn:
        await conn.execute("UPDATE mail.recipients SET generation = 2 WHERE id = $1", job_id)
    repo = Repo(get_settings().database_url, pool_size=1)
    await repo.start()
    try:
        assert not (await repo.claim(job_id, 0, False, 0)).claimed
        assert not (await repo.claim(job_id, 0, False, 1)).claimed
        assert await repo.generation(job_id) == 2
        assert (await repo.claim(job_id, 0, False, 2)).claimed
    finally:
        await repo.close()
