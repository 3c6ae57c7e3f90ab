"""`mailexec migrate --login-roles` against the real PostgreSQL, in a database of its own.

Migration 0001's per-service roles are NOLOGIN; --login-roles, given the admin URL and the
four passwords, lets each log in with its own password (the Helm chart's migrations Job runs
it, and each pod then connects as its service's role). Afterwards each role can do what its
grants allow and nothing more, and the whole pipeline runs with each service as its role.

The local server trusts every TCP client (pg_hba `trust`), so a login alone proves LOGIN,
not the password: the password is proven against the SCRAM verifier the server stored.
Roles are cluster-wide: the test gives them back NOLOGIN and no password when it ends.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import asyncpg
import pytest
from typer.testing import CliRunner

from mailexec import migrate as m
from mailexec.cli import app
from shared.settings import get_settings
from tests.conftest import PG_ADMIN

DB = f"mailexec_login_roles_{uuid.uuid4().hex[:8]}"
PG = "postgresql://{user}@127.0.0.1:5432/{db}"
PASSWORDS = {s: f"pw-{s}-{uuid.uuid4().hex[:12]}'\"%@:/ x" for s in m.SERVICE_ROLES}


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(coro)


async def admin(sql: str, *args: object, db: str = "postgres") -> list[asyncpg.Record]:
    conn = await asyncpg.connect(PG_ADMIN.rsplit("/", 1)[0] + "/" + db)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


def scram_matches(verifier: str, password: str) -> bool:
    """Does PostgreSQL's stored SCRAM-SHA-256 verifier belong to this password?"""
    method, rest = verifier.split("$", 1)
    assert method == "SCRAM-SHA-256"
    params, keys = rest.split("$")
    iterations, salt = params.split(":")
    stored_key, server_key = keys.split(":")
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iterations))
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    return hashlib.sha256(client_key).digest() == base64.b64decode(stored_key)


async def login_state() -> dict[str, tuple[bool, str | None]]:
    rows = await admin(
        "SELECT rolname, rolcanlogin, rolpassword FROM pg_authid WHERE rolname = ANY($1::text[])",
        list(m.SERVICE_ROLES.values()),
    )
    return {r["rolname"]: (r["rolcanlogin"], r["rolpassword"]) for r in rows}


@pytest.fixture(scope="module")
def admin_url() -> Iterator[str]:
    yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{DB}"
    run(admin(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)'))
    for role in m.SERVICE_ROLES.values():
        run(admin(f'ALTER ROLE "{role}" NOLOGIN PASSWORD NULL'))


def invoke(monkeypatch: pytest.MonkeyPatch, url: str, passwords: dict[str, str], tmp_path) -> object:  # noqa: ANN001
    monkeypatch.setenv("MAILEXEC_DATABASE_URL", url)
    for service in m.SERVICE_ROLES:
        for suffix in ("", "_FILE"):
            monkeypatch.delenv(m.password_variable(service) + suffix, raising=False)
    for i, (service, password) in enumerate(passwords.items()):
        if i % 2:  # half as files (the chart's way), half as variables
            path = tmp_path / f"{service}_database_password"
            path.write_text(password + "\n")
            monkeypatch.setenv(m.password_variable(service) + "_FILE", str(path))
        else:
            monkeypatch.setenv(m.password_variable(service), password)
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(app, ["migrate", "--login-roles"])
    finally:
        get_settings.cache_clear()


def test_a_missing_password_is_refused_before_anything_changes(
    admin_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:  # noqa: ANN001
    partial = {s: p for s, p in PASSWORDS.items() if s != "executor"}
    result = invoke(monkeypatch, admin_url, partial, tmp_path)
    assert result.exit_code == 78, result.output  # EX_CONFIG
    missing = "MAILEXEC_EXECUTOR_DATABASE_PASSWORD (or MAILEXEC_EXECUTOR_DATABASE_PASSWORD_FILE)"
    assert missing in result.output
    assert "nothing was changed" in result.output
    # Not even the database was created.
    assert not run(admin("SELECT 1 FROM pg_database WHERE datname = $1", DB))


def test_each_service_logs_in_with_its_own_password_and_only_its_grants(
    admin_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:  # noqa: ANN001
    for attempt in (1, 2):  # idempotent: a second run (every helm upgrade) changes nothing else
        result = invoke(monkeypatch, admin_url, PASSWORDS, tmp_path)
        assert result.exit_code == 0, (attempt, result.output)
        assert "login with their passwords: mailexec_policy, mailexec_ingest" in result.output
    state = run(login_state())
    for service, role in m.SERVICE_ROLES.items():
        can_login, verifier = state[role]
        assert can_login, role
        assert verifier and verifier.startswith("SCRAM-SHA-256$"), role
        assert scram_matches(verifier, PASSWORDS[service]), role
        for other, password in PASSWORDS.items():
            if other != service:
                assert not scram_matches(verifier, password), (role, other)

    async def as_role(role: str, sql: str) -> str:
        conn = await asyncpg.connect(PG.format(user=role, db=DB), password=PASSWORDS[role.split("_")[1]])
        try:
            await conn.fetch(sql)
            return "ok"
        except asyncpg.InsufficientPrivilegeError:
            return "denied"
        finally:
            await conn.close()

    # (role, statement, expected) from the migrations' grants (0001, 0009, 0011).
    cases = [
        ("mailexec_ingest", "SELECT count(*) FROM mail.messages", "ok"),
        ("mailexec_ingest", "SELECT count(*) FROM policy.accounts", "denied"),
        ("mailexec_ingest", "SELECT count(*) FROM policy.programs", "denied"),
        ("mailexec_ingest", "SELECT count(*) FROM notifier.notifications", "denied"),
        ("mailexec_executor", "SELECT count(*) FROM policy.tokens", "denied"),
        ("mailexec_executor", "DELETE FROM mail.messages", "denied"),
        ("mailexec_executor", "SELECT count(*) FROM mail.program_runs", "ok"),
        ("mailexec_notifier", "UPDATE mail.recipients SET attempts = attempts", "denied"),
        ("mailexec_notifier", "SELECT count(*) FROM notifier.notifications", "ok"),
        ("mailexec_policy", "SELECT count(*) FROM notifier.notifications", "denied"),
        ("mailexec_policy", "SELECT count(*) FROM mail.messages", "denied"),
        ("mailexec_policy", "SELECT count(*) FROM policy.accounts", "ok"),
        # message bodies (0009): ingest writes and deletes them, the others only read
        ("mailexec_ingest", "DELETE FROM mail.bodies WHERE false", "ok"),
        ("mailexec_executor", "SELECT count(*) FROM mail.bodies", "ok"),
        ("mailexec_executor", "DELETE FROM mail.bodies", "denied"),
        ("mailexec_notifier", "SELECT count(*) FROM mail.bodies", "ok"),
        ("mailexec_notifier", "DELETE FROM mail.bodies", "denied"),
        ("mailexec_policy", "SELECT count(*) FROM mail.bodies", "denied"),
        # the body ring (0011): ingest alone truncates its partitions and records the
        # turns; the readers read through the parent, not a partition
        ("mailexec_ingest", "TRUNCATE mail.bodies_ring1", "ok"),
        ("mailexec_ingest", "UPDATE mail.body_ring SET emptied_at = now() WHERE false", "ok"),
        ("mailexec_ingest", "TRUNCATE mail.bodies_kept", "denied"),
        ("mailexec_executor", "TRUNCATE mail.bodies_ring1", "denied"),
        ("mailexec_executor", "SELECT count(*) FROM mail.bodies_ring1", "denied"),
        ("mailexec_executor", "UPDATE mail.body_ring SET emptied_at = now()", "denied"),
        ("mailexec_notifier", "SELECT count(*) FROM mail.bodies_kept", "denied"),
        # None of them may change the schema.
        ("mailexec_policy", "CREATE TABLE policy.evil (x int)", "denied"),
        ("mailexec_ingest", "DROP TABLE mail.program_runs", "denied"),
    ]
    got = [(role, sql, run(as_role(role, sql))) for role, sql, _ in cases]
    assert got == cases


def test_scram_verifier_is_postgresql_s() -> None:
    """The verifier we send is one PostgreSQL accepts as is (checked above by the logins)
    and the clear password is never part of the statement."""
    verifier = m.scram_sha256("secret", salt=b"0123456789abcdef")
    assert verifier.startswith("SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$")
    assert scram_matches(verifier, "secret") and not scram_matches(verifier, "Secret")
    assert "secret" not in verifier


def test_the_pipeline_runs_with_each_service_as_its_own_role(
    admin_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:  # noqa: ANN001
    """What the Helm chart deploys: policy, ingest, executor and notifier each connected as
    its own role (and nothing else), a message delivered to one recipient, bounced for an
    unknown one, its DSN written by the notifier. A table a later migration adds without
    granting it to the service that uses it fails here."""
    import os
    import secrets
    import subprocess
    import time
    from pathlib import Path

    import httpx

    from tests.conftest import ServiceProcess, free_port

    assert invoke(monkeypatch, admin_url, PASSWORDS, tmp_path).exit_code == 0
    vhost = f"{DB}_mq"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True, timeout=60)
    subprocess.run(
        ["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
        check=True,
        timeout=60,
    )
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    os.chmod(trusted, 0o755)
    admin_token, mta_token = secrets.token_hex(12), secrets.token_hex(12)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILEXEC_")}
    env.update(
        {
            "MAILEXEC_AMQP_URL": f"amqp://guest:guest@127.0.0.1:5672/{vhost}",
            "MAILEXEC_ADMIN_TOKEN": admin_token,
            "MAILEXEC_INGEST_TOKEN": mta_token,
            "MAILEXEC_SERVICE_TOKEN": secrets.token_hex(12),
            "MAILEXEC_TRUSTED_DIR": str(trusted),
            "MAILEXEC_LMTP_PORT": "0",
            "MAILEXEC_LOG_LEVEL": "info",
            "MAILEXEC_DSN_AGGREGATE_WINDOW_S": "0.5",
            "MAILEXEC_SMTP_URL": f"smtp://127.0.0.1:{free_port()}",  # closed: the DSN stays pending
            "MAILEXEC_SANDBOX_CGROUP_ROOT": f"/sys/fs/cgroup/unified/mailexec-roletest-{os.getpid()}",
            **{
                var: str(free_port())
                for var in (
                    "MAILEXEC_INGEST_PORT",
                    "MAILEXEC_POLICY_PORT",
                    "MAILEXEC_NOTIFIER_PORT",
                    "MAILEXEC_EXECUTOR_METRICS_PORT",
                )
            },
        }
    )
    env["MAILEXEC_POLICY_URL"] = f"http://127.0.0.1:{env['MAILEXEC_POLICY_PORT']}"
    procs: dict[str, ServiceProcess] = {}
    try:
        for service, role in m.SERVICE_ROLES.items():
            url = f"postgresql+asyncpg://{role}:{quote(PASSWORDS[service], safe='')}@127.0.0.1:5432/{DB}"
            procs[service] = ServiceProcess(
                service, {**env, "MAILEXEC_DATABASE_URL": url}, tmp_path / f"{service}.log"
            ).start(wait_ready=False)
        for proc in procs.values():
            proc.wait_ready(90)
        admin = {"Authorization": f"Bearer {admin_token}"}
        policy, ingest = env["MAILEXEC_POLICY_URL"], f"http://127.0.0.1:{env['MAILEXEC_INGEST_PORT']}"
        with httpx.Client(timeout=30) as client:
            r = client.put(
                f"{policy}/v1/programs/true",
                content=Path("/bin/true").read_bytes(),
                headers={**admin, "Content-Type": "application/octet-stream"},
            )
            assert r.status_code == 201, r.text
            owner = {"name": "u", "uid": 20001, "gid": 20001, "home": "/tmp", "shell": "/bin/sh"}
            r = client.put(
                f"{policy}/v1/accounts/u@example.org",
                headers=admin,
                json={
                    "owner": owner,
                    "program_delivery": {"enabled": True, "programs": ["true"]},
                    "mailbox_delivery": False,
                },
            )
            assert r.status_code == 201, r.text
            r = client.post(
                f"{ingest}/v1/messages",
                params={"from": "a@example.org", "to": ["u@example.org", "nobody@example.org"]},
                content=b"Subject: roles\r\n\r\nbody\r\n",
                headers={"Authorization": f"Bearer {mta_token}", "Content-Type": "message/rfc822"},
            )
            assert r.status_code == 202, r.text
            message_id = r.json()["id"]
            states: dict[str, str] = {}
            notes: list[dict] = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                got = client.get(f"{ingest}/v1/messages/{message_id}", headers=admin).json()
                states = {x["address"]: x["state"] for x in got["recipients"]}
                notes = client.get(
                    f"http://127.0.0.1:{env['MAILEXEC_NOTIFIER_PORT']}/v1/notifications",
                    params={"message_id": message_id},
                    headers=admin,
                ).json()["items"]
                if states == {"u@example.org": "delivered", "nobody@example.org": "bounced"} and notes:
                    break
                time.sleep(0.25)
            assert states == {"u@example.org": "delivered", "nobody@example.org": "bounced"}
            assert [(n["kind"], n["rcpt"]) for n in notes] == [("bounce", "a@example.org")]
        for service, proc in procs.items():
            assert "permission denied" not in proc.log_tail().lower(), (service, proc.log_tail())
    finally:
        for proc in reversed(list(procs.values())):
            proc.stop()
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], timeout=60)
        root = Path(env["MAILEXEC_SANDBOX_CGROUP_ROOT"])
        for child in sorted([*root.glob("**/")], key=lambda p: -len(p.parts)):
            try:
                child.rmdir()
            except OSError:
                pass
