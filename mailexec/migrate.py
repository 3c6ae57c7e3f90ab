"""`mailexec migrate`: create the database if it is missing, then `alembic upgrade head`."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

from shared.settings import get_settings

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(database_url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", database_url or get_settings().database_url)
    return cfg


async def ensure_database(database_url: str) -> bool:
    """Create the database named in the URL when it does not exist. True if created."""
    import asyncpg

    url = make_url(database_url)
    name = url.database
    admin = url.set(drivername="postgresql", database="postgres")
    conn = await asyncpg.connect(admin.render_as_string(hide_password=False))
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
            return True
        return False
    finally:
        await conn.close()


def upgrade(database_url: str | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str | None = None, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)


def migrate(database_url: str | None = None, create: bool = True) -> None:
    url = database_url or get_settings().database_url
    if create:
        asyncio.run(ensure_database(url))
    upgrade(url)


# --- `mailexec migrate --login-roles` -----------------------------------------------------
# Migration 0001 creates one NOLOGIN role per service, holding just that service's grants.
# With the admin (owner/superuser) DATABASE_URL, --login-roles lets each of them log in with
# a password of its own, so each service connects with its own least-privilege credentials
# (the Helm chart: each pod gets only its own URL; only the migrations Job the admin's).

SERVICE_ROLES = {
    "policy": "mailexec_policy",
    "ingest": "mailexec_ingest",
    "executor": "mailexec_executor",
    "notifier": "mailexec_notifier",
}
SCRAM_ITERATIONS = 4096


class LoginRolesError(RuntimeError):
    """--login-roles can't run; the message says what is missing."""


def password_variable(service: str) -> str:
    return f"MAILEXEC_{service.upper()}_DATABASE_PASSWORD"


def service_passwords(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Each service role's password from MAILEXEC_<SERVICE>_DATABASE_PASSWORD[_FILE]; all four
    or a LoginRolesError naming every missing one (nothing is changed then)."""
    from shared.secretfile import secret_from_env

    found: dict[str, str] = {}
    missing: list[str] = []
    for service in SERVICE_ROLES:
        value = secret_from_env(password_variable(service), environ)
        if value:
            found[service] = value
        else:
            missing.append(password_variable(service))
    if missing:
        raise LoginRolesError(
            "mailexec migrate --login-roles: no password for "
            + ", ".join(f"{v} (or {v}_FILE)" for v in missing)
            + "; set all four (nothing was changed)"
        )
    return found


def scram_sha256(password: str, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """PostgreSQL's SCRAM-SHA-256 verifier of a password (what `\\password` sends): the
    server stores it as given, so the clear password is never sent nor logged."""
    import base64
    import hashlib
    import hmac
    import os

    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


async def set_login_roles(database_url: str, passwords: dict[str, str]) -> list[str]:
    """ALTER ROLE <role> LOGIN PASSWORD '<verifier>' for every service role; idempotent (a
    re-run sets the same passwords again). Needs a superuser, or a CREATEROLE owner with
    ADMIN OPTION on the roles (PostgreSQL 16+). Returns the roles changed."""
    import asyncpg

    url = make_url(database_url).set(drivername="postgresql")
    conn = await asyncpg.connect(url.render_as_string(hide_password=False))
    try:
        existing = {
            r["rolname"]
            for r in await conn.fetch(
                "SELECT rolname FROM pg_roles WHERE rolname = ANY($1::text[])",
                list(SERVICE_ROLES.values()),
            )
        }
        absent = sorted(set(SERVICE_ROLES.values()) - existing)
        if absent:
            raise LoginRolesError(
                f"mailexec migrate --login-roles: roles {', '.join(absent)} do not exist "
                "(migration 0001 creates them)"
            )
        changed = []
        for service, role in SERVICE_ROLES.items():
            verifier = scram_sha256(passwords[service]).replace("'", "''")
            await conn.execute(f"ALTER ROLE \"{role}\" LOGIN PASSWORD '{verifier}'")
            changed.append(role)
        return changed
    finally:
        await conn.close()
