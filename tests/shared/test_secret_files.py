"""``MAILEXEC_<NAME>_FILE`` secrets (SPEC §2 Environment; rule in shared/secretfile.py).

What an operator notices: a secret in a file works like the variable (trailing newline
ignored); setting both forms is refused naming both; a file that can't be read is
refused naming its path — at start-up, as exit status 78 with one line, not a traceback,
and never by falling back to a default. A real `mailexec serve policy` accepts the
admin token it read from a file. `mailexec submit` (light path) follows the same rule.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.secretfile import SecretFileError
from shared.settings import SECRET_FIELDS, Settings
from tests.cli.fake_ingest import FakeIngest
from tests.conftest import ADMIN_TOKEN, ROOT

MSG = b"From: a@example.net\r\nSubject: s\r\n\r\nbody\r\n"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in SECRET_FIELDS:
        monkeypatch.delenv(f"MAILEXEC_{name.upper()}", raising=False)
        monkeypatch.delenv(f"MAILEXEC_{name.upper()}_FILE", raising=False)
    return monkeypatch


@pytest.mark.parametrize("name", SECRET_FIELDS)
def test_every_secret_can_come_from_a_file(clean_env: pytest.MonkeyPatch, tmp_path: Path,
                                           name: str) -> None:
    secret = tmp_path / name
    secret.write_text(f"value-of-{name}\n")
    clean_env.setenv(f"MAILEXEC_{name.upper()}_FILE", str(secret))
    assert getattr(Settings(), name) == f"value-of-{name}"


def test_crlf_and_plain_values(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = tmp_path / "t"
    secret.write_bytes(b"tok en\r\n")
    clean_env.setenv("MAILEXEC_SERVICE_TOKEN_FILE", str(secret))
    clean_env.setenv("MAILEXEC_ADMIN_TOKEN", "plain")
    s = Settings()
    assert (s.service_token, s.admin_token) == ("tok en", "plain")


def test_both_forms_set_is_refused_naming_both(clean_env: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    secret = tmp_path / "t"
    secret.write_text("from-file\n")
    clean_env.setenv("MAILEXEC_DATABASE_URL", "postgresql+asyncpg://x@h/db")
    clean_env.setenv("MAILEXEC_DATABASE_URL_FILE", str(secret))
    with pytest.raises(SecretFileError) as err:
        Settings()
    assert "MAILEXEC_DATABASE_URL and MAILEXEC_DATABASE_URL_FILE" in str(err.value)


@pytest.mark.parametrize("problem", ["missing", "directory", "empty", "not utf-8"])
def test_unusable_file_is_refused_naming_the_path(clean_env: pytest.MonkeyPatch, tmp_path: Path,
                                                  problem: str) -> None:
    path = tmp_path / "secret"
    if problem == "directory":
        path.mkdir()
    elif problem == "empty":
        path.write_text("\n")
    elif problem == "not utf-8":
        path.write_bytes(b"\xff\xfe")
    clean_env.setenv("MAILEXEC_AMQP_URL_FILE", str(path))
    with pytest.raises(SecretFileError) as err:
        Settings()
    assert "MAILEXEC_AMQP_URL_FILE" in str(err.value) and str(path) in str(err.value)


def test_empty_file_variable_counts_as_unset(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("MAILEXEC_ADMIN_TOKEN", "plain")
    clean_env.setenv("MAILEXEC_ADMIN_TOKEN_FILE", "")
    assert Settings().admin_token == "plain"


def test_a_service_refuses_to_start_on_both_forms(mx_env: dict[str, str], tmp_path: Path) -> None:
    secret = tmp_path / "admin"
    secret.write_text("x\n")
    env = {**mx_env, "PATH": "/usr/bin:/bin", "MAILEXEC_ADMIN_TOKEN_FILE": str(secret)}
    proc = subprocess.run([sys.executable, "-m", "mailexec", "serve", "policy"], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 78, proc.stderr
    assert "MAILEXEC_ADMIN_TOKEN and MAILEXEC_ADMIN_TOKEN_FILE" in proc.stderr
    assert "Traceback" not in proc.stderr


async def test_policy_takes_its_admin_token_from_a_file(services: Any, tmp_path: Path,
                                                        clean_db: None) -> None:
    secret = tmp_path / "admin"
    secret.write_text("admin-token-from-a-file\n")
    secret.chmod(0o600)
    services.env.pop("MAILEXEC_ADMIN_TOKEN")
    policy = services("policy", extra_env={"MAILEXEC_ADMIN_TOKEN_FILE": str(secret)})
    async with httpx.AsyncClient(base_url=policy.url, timeout=10) as c:
        r = await c.get("/v1/settings",
                        headers={"Authorization": "Bearer admin-token-from-a-file"})
        assert r.status_code == 200, r.text
        r = await c.get("/v1/settings", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert r.status_code == 401  # the file's token, not the run's usual one


def _submit(env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "mailexec", "submit", "--from=a@example.net",
                           "--to=b@example.org"], input=MSG, env=env, cwd=ROOT,
                          capture_output=True, timeout=60)


def test_submit_reads_the_mta_token_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "mta"
    secret.write_text("mta-token-from-a-file\n")
    with FakeIngest() as ingest:
        env = {"PATH": "/usr/bin:/bin", "MAILEXEC_CLI_CONFIG": "/dev/null",
               "MAILEXEC_INGEST_URL": ingest.url, "MAILEXEC_INGEST_TOKEN_FILE": str(secret)}
        r = _submit(env)
        assert r.returncode == 0, r.stderr
        assert ingest.received[0].headers["Authorization"] == "Bearer mta-token-from-a-file"
        # both forms: the MTA keeps the mail (75) and the log line names both
        r = _submit({**env, "MAILEXEC_INGEST_TOKEN": "other"})
        assert r.returncode == 75
        assert b"MAILEXEC_INGEST_TOKEN and MAILEXEC_INGEST_TOKEN_FILE" in r.stderr
        r = _submit({**env, "MAILEXEC_INGEST_TOKEN_FILE": str(tmp_path / "absent")})
        assert r.returncode == 75 and str(tmp_path / "absent").encode() in r.stderr
        assert len(ingest.received) == 1
