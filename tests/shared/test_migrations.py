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
