"""deploy/compose_secrets.py, run for real on directories standing in for the volumes:
generated once, kept across runs, each file 0400 and owned by its reader (issue 13)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.deploy.test_compose import COMPOSE, compose_secrets

SCRIPT = COMPOSE.with_name("compose_secrets.py")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chown to the readers' uids needs root")


@pytest.fixture
def volumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    module = compose_secrets()
    monkeypatch.setattr(module, "MASTER_DIR", tmp_path / "master")
    monkeypatch.setattr(module, "OUT_DIR", tmp_path)
    return tmp_path


def run_script(volumes: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SECRETS_MASTER_DIR": str(volumes / "master"), "SECRETS_OUT_DIR": str(volumes)}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], input=stdin, env=env, capture_output=True, text=True, timeout=30
    )


def snapshot(volumes: Path) -> dict[str, tuple[str, int, int, int]]:
    """relative path -> (content, mode, uid, gid) of every file."""
    out = {}
    for path in sorted(volumes.rglob("*")):
        if path.is_file():
            st = path.stat()
            out[str(path.relative_to(volumes))] = (
                path.read_text(),
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
            )
    return out


def test_first_run_writes_each_consumer_its_own_files_0400_owned_by_its_reader(volumes: Path) -> None:
    done = run_script(volumes)
    assert done.returncode == 0, done.stderr
    files = snapshot(volumes)
    owners = {"postgres": 999, "rabbitmq": 999, "mailexec": 10001, "executor": 0, "console": 10001,
              "master": 0}
    for name, (_, mode, uid, gid) in files.items():
        directory = name.split("/")[0]
        assert mode == 0o400, name
        assert (uid, gid) == (owners[directory], owners[directory]), name
    assert stat.S_IMODE((volumes / "master").stat().st_mode) == 0o700
    assert {name for name in files if name.startswith("executor/")} == {
        "executor/database_url",
        "executor/amqp_url",
        "executor/service_token",
    }
    # Everything derives from one set of master secrets.
    master = {
        name.removeprefix("master/"): content
        for name, (content, *_) in files.items()
        if name.startswith("master/")
    }
    assert len(set(master.values())) == 6 and all(len(v) >= 48 for v in master.values())
    for consumer in ("mailexec", "executor"):
        database = urlsplit(files[f"{consumer}/database_url"][0])
        assert database.password == master["postgres_password"]
        assert urlsplit(files[f"{consumer}/amqp_url"][0]).password == master["rabbitmq_password"]
        assert files[f"{consumer}/service_token"][0] == master["service_token"]
    assert files["mailexec/admin_token"][0] == master["admin_token"]
    assert files["postgres/password"][0] == master["postgres_password"]
    assert f"default_pass = {master['rabbitmq_password']}\n" in files["rabbitmq/rabbitmq.conf"][0]
    assert "generated postgres_password" in done.stdout
    # The console: its cookie key and nothing else (no token, no database or broker URL).
    assert {name for name in files if name.startswith("console/")} == {"console/console_secret"}
    assert files["console/console_secret"][0] == master["console_secret"]
    assert "generated console_secret" in done.stdout
    for name, content in master.items():
        if name != "console_secret":
            assert content not in files["console/console_secret"][0], name
    assert master["console_secret"] not in "".join(
        content for name, (content, *_) in files.items() if not name.endswith("console_secret")
    )


def test_an_install_from_before_the_console_gets_its_key_and_keeps_everything_else(volumes: Path) -> None:
    """Upgrading a compose install: the next start generates console_secret once, writes the
    new consumer's volume and changes no other secret."""
    assert run_script(volumes).returncode == 0
    (volumes / "master" / "console_secret").unlink()
    for stale in (volumes / "console").iterdir():
        stale.unlink()
    (volumes / "console").rmdir()
    before = {k: v for k, v in snapshot(volumes).items() if "console_secret" not in k}
    done = run_script(volumes)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("generated ") == 1 and "generated console_secret" in done.stdout
    after = snapshot(volumes)
    assert {k: v for k, v in after.items() if "console_secret" not in k} == before
    key, mode, uid, gid = after["console/console_secret"]
    assert key == after["master/console_secret"][0] and len(key) >= 48
    assert (mode, uid, gid) == (0o400, 10001, 10001)
    # ...and keeps it from then on.
    assert run_script(volumes).returncode == 0
    assert snapshot(volumes) == after


def test_a_second_run_keeps_every_secret(volumes: Path) -> None:
    assert run_script(volumes).returncode == 0
    first = snapshot(volumes)
    done = run_script(volumes)
    assert done.returncode == 0, done.stderr
    assert snapshot(volumes) == first
    assert "generated" not in done.stdout


def test_consumer_files_are_rewritten_from_the_master_copy(volumes: Path) -> None:
    """A consumer file changed or left over is put back: the master copy is the truth."""
    assert run_script(volumes).returncode == 0
    first = snapshot(volumes)
    (volumes / "executor" / "service_token").chmod(0o644)
    (volumes / "executor" / "admin_token").write_text("left over")
    (volumes / "console" / "service_token").write_text("left over")
    assert run_script(volumes).returncode == 0
    assert snapshot(volumes) == first


def test_set_stores_a_given_password_and_rederives_the_urls(volumes: Path) -> None:
    assert run_script(volumes).returncode == 0
    before = snapshot(volumes)
    done = run_script(volumes, "set", "postgres_password", stdin="an-existing-Password_1\n")
    assert done.returncode == 0, done.stderr
    after = snapshot(volumes)
    assert after["master/postgres_password"][0] == "an-existing-Password_1"
    assert after["postgres/password"][0] == "an-existing-Password_1"
    for consumer in ("mailexec", "executor"):
        assert urlsplit(after[f"{consumer}/database_url"][0]).password == "an-existing-Password_1"
        assert after[f"{consumer}/amqp_url"] == before[f"{consumer}/amqp_url"]
    assert after["master/admin_token"] == before["master/admin_token"]


def test_set_warns_about_a_weak_password_and_refuses_one_a_url_cannot_carry(volumes: Path) -> None:
    weak = run_script(volumes, "set", "postgres_password", stdin="mailexec")
    assert weak.returncode == 0 and "WARNING" in weak.stderr
    for bad in ("pass word", "p@ss/word", ""):
        done = run_script(volumes, "set", "rabbitmq_password", stdin=bad)
        assert done.returncode != 0, bad
    assert run_script(volumes, "set", "root_password", stdin="x" * 20).returncode != 0


def test_a_corrupt_master_secret_stops_the_start(volumes: Path) -> None:
    module: Any = compose_secrets()
    module.load_master(module.MASTER_DIR)
    path = module.MASTER_DIR / "admin_token"
    path.chmod(0o600)
    path.write_text("not a token\n")
    with pytest.raises(SystemExit, match="not a usable secret"):
        module.load_master(module.MASTER_DIR)


def test_files_never_exist_with_other_rights(volumes: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rename comes after chmod and chown: a failure leaves no file, not a readable one."""
    module: Any = compose_secrets()
    target = volumes / "secret"

    def refuse(fd: int, uid: int, gid: int) -> None:
        raise PermissionError("no CAP_CHOWN")

    monkeypatch.setattr(module.os, "fchown", refuse)
    with pytest.raises(PermissionError):
        module.write_atomically(target, "s3cret", 10001, 10001)
    assert list(volumes.iterdir()) == []
    monkeypatch.undo()
    module.write_atomically(target, "s3cret", 10001, 10001)
    assert stat.S_IMODE(target.stat().st_mode) == 0o400
    assert target.read_text() == "s3cret"
