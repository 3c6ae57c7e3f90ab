"""`mailexec migrate`: creates the database, upgrades to head, is a no-op the second time,
and has a working downgrade path."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import asyncpg
import pytest

from tests.conftest import PG_ADMIN, ROOT


async def _fetch(db: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(PG_ADMIN.rsplit("/", 1)[0] + f"/{db}")
    try:
        return await conn.fetch(sql)
    finally:
        await conn.close()


def _mailexec(db: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MAILEXEC_DATABASE_URL=f"postgresql+asyncpg://postgres@127.0.0.1:5432/{db}")
    return subprocess.run(
        [sys.executable, "-m", "mailexec", *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )


@pytest.fixture
async def scratch_db():  # type: ignore[no-untyped-def]
    name = f"mailexec_mig_{uuid.uuid4().hex[:8]}"
    yield name
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def test_migrate_creates_upgrades_and_is_idempotent(scratch_db: str) -> None:
    first = _mailexec(scratch_db, "migrate")
    assert first.returncode == 0, first.stderr
    assert "created database" in first.stdout
    schemas = {r["nspname"] for r in await _fetch(scratch_db, "SELECT nspname FROM pg_namespace")}
    assert {"policy", "mail", "notifier"} <= schemas
    version = await _fetch(scratch_db, "SELECT version_num FROM public.alembic_version")
    second = _mailexec(scratch_db, "migrate")
    assert second.returncode == 0, second.stderr
    assert "created database" not in second.stdout
    assert await _fetch(scratch_db, "SELECT version_num FROM public.alembic_version") == version
    tables = await _fetch(
        scratch_db,
        "SELECT table_schema || '.' || table_name AS t FROM information_schema.tables "
        "WHERE table_schema IN ('policy','mail','notifier')",
    )
    assert {"policy.programs", "policy.accounts", "mail.messages", "mail.recipients",
            "notifier.notifications"} <= {r["t"] for r in tables}


async def test_downgrade_then_upgrade_again(scratch_db: str) -> None:
    assert _mailexec(scratch_db, "migrate").returncode == 0
    down = _mailexec(scratch_db, "migrate", "--downgrade", "base")
    assert down.returncode == 0, down.stderr
    schemas = {r["nspname"] for r in await _fetch(scratch_db, "SELECT nspname FROM pg_namespace")}
    assert not {"policy", "mail", "notifier"} & schemas
    again = _mailexec(scratch_db, "migrate")
    assert again.returncode == 0, again.stderr
    rows = await _fetch(scratch_db, "SELECT data FROM policy.settings WHERE id = 1")
    assert len(rows) == 1


async def test_least_privilege_roles_exist_with_narrow_grants(scratch_db: str) -> None:
    assert _mailexec(scratch_db, "migrate").returncode == 0
    rows = await _fetch(
        scratch_db,
        "SELECT grantee, table_schema || '.' || table_name AS t, privilege_type "
        "FROM information_schema.role_table_grants WHERE grantee LIKE 'mailexec_%'",
    )
    grants = {(r["grantee"], r["t"], r["privilege_type"]) for r in rows}
    assert ("mailexec_executor", "mail.recipients", "UPDATE") in grants
    assert ("mailexec_ingest", "mail.messages", "INSERT") in grants
    # the executor can neither change policy nor read it directly, ingest cannot touch programs
    assert not any(g == "mailexec_executor" and t.startswith("policy.") for g, t, _ in grants)
    assert not any(g == "mailexec_ingest" and t == "policy.programs" for g, t, _ in grants)
    assert not any(g == "mailexec_notifier" and p in ("INSERT", "UPDATE", "DELETE")
                   and t.startswith("mail.") for g, t, p in grants)
    # console sessions (0004): policy alone, and only the four DML rights
    assert {p for g, t, p in grants if t == "policy.console_sessions"
            and g == "mailexec_policy"} == {"SELECT", "INSERT", "UPDATE", "DELETE"}
    assert {g for g, t, _ in grants if t == "policy.console_sessions"} == {"mailexec_policy"}
    # retention (0008): the notifier may change one column of mail.recipients, no more;
    # ingest may delete the queue actions it purges
    columns = {(r["grantee"], r["t"], r["privilege_type"]) for r in await _fetch(
        scratch_db,
        "SELECT grantee, table_schema || '.' || table_name || '.' || column_name AS t, "
        "privilege_type FROM information_schema.column_privileges "
        "WHERE grantee = 'mailexec_notifier' AND privilege_type = 'UPDATE' "
        "AND table_schema = 'mail'")}
    assert columns == {("mailexec_notifier", "mail.recipients.notifier_pending", "UPDATE")}
    assert ("mailexec_ingest", "mail.queue_actions", "DELETE") in grants


async def test_0011_moves_stored_bodies_into_the_ring_table_and_back(scratch_db: str) -> None:
    """Upgrading to the body ring keeps every stored body readable (in the kept
    partition); downgrading keeps the bodies still held, wherever they are, and leaves
    out the rows of released ones that wait for their partition's truncate."""
    from shared import bodies

    assert _mailexec(scratch_db, "migrate", "0010").returncode == 0
    old_id, held_id, released_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    old_body = os.urandom(20_000)
    conn = await asyncpg.connect(PG_ADMIN.rsplit("/", 1)[0] + f"/{scratch_db}")
    try:
        insert = ("INSERT INTO mail.messages (id, sender, notify, size, received_at) "
                  "VALUES ($1, 'a@example.net', '{FAILURE}', $2, now())")
        await conn.execute(insert, old_id, len(old_body))
        await conn.executemany(
            "INSERT INTO mail.bodies (message_id, off, chunk) VALUES ($1, $2, $3)",
            [(old_id, off, bytes(chunk)) for off, chunk in bodies.rows([old_body])])
        up = _mailexec(scratch_db, "migrate")
        assert up.returncode == 0, up.stderr
        assert await bodies.read(conn, old_id) == old_body
        assert await conn.fetchval("SELECT body_slot FROM mail.messages WHERE id = $1",
                                   old_id) == bodies.KEPT

        held_body, released_body = os.urandom(9_000), os.urandom(9_000)
        for mid, body in ((held_id, held_body), (released_id, released_body)):
            await conn.execute(insert.replace("received_at)", "received_at, body_slot)")
                               .replace("now())", "now(), 3)"), mid, len(body))
            await bodies.copy(conn, 3, [(mid, [body])])
        await conn.execute("UPDATE mail.messages SET body_held = false WHERE id = $1", released_id)
        down = _mailexec(scratch_db, "migrate", "--downgrade", "0010")
        assert down.returncode == 0, down.stderr
        rows = await conn.fetch("SELECT message_id, string_agg(chunk, ''::bytea ORDER BY off) AS b "
                                "FROM mail.bodies GROUP BY message_id")
    finally:
        await conn.close()
    assert {r["message_id"]: bytes(r["b"]) for r in rows} == {old_id: old_body,
                                                              held_id: held_body}
