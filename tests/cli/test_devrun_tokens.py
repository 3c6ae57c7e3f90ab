"""`make run`'s token file (mailexec/devrun.py): private from its first byte, sourceable.

- tokens.env is mode 0600 and was never anything else: it is created under a new name
  with 0600 and renamed into place, so a symlink planted at its name is replaced, not
  written through, and no reader ever sees a partial or wider-mode file.
- Its lines are ``export`` lines: ``. .run/tokens.env`` in a real shell sets the tokens.
- Tokens saved by an earlier run (old ``NAME=value`` lines too) are kept.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from mailexec import devrun

VARS = [var for var, _ in devrun.TOKEN_VARS]


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / ".run"
    monkeypatch.setattr(devrun, "RUN_DIR", d)
    for var in VARS:
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(f"{var}_FILE", raising=False)
    return d


def test_tokens_file_is_private_and_sourceable(run_dir: Path) -> None:
    tokens = devrun._tokens()
    path = run_dir / "tokens.env"
    st = path.lstat()
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    script = f". {path} && " + " && ".join(f'echo "${var}"' for var in VARS)
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                         env={"PATH": os.environ["PATH"]}, check=True).stdout.split()
    assert out == [tokens[var] for var in VARS]
    assert [p.name for p in run_dir.iterdir()] == ["tokens.env"]  # no temporary left


def test_tokens_survive_a_restart_and_old_files_are_read(run_dir: Path) -> None:
    run_dir.mkdir()
    (run_dir / "tokens.env").write_text("MAILEXEC_ADMIN_TOKEN=mxa_old\n")
    os.chmod(run_dir / "tokens.env", 0o644)
    first = devrun._tokens()
    assert first["MAILEXEC_ADMIN_TOKEN"] == "mxa_old"
    assert stat.S_IMODE((run_dir / "tokens.env").stat().st_mode) == 0o600
    assert devrun._tokens() == first


def test_a_planted_symlink_is_replaced_not_followed(run_dir: Path, tmp_path: Path) -> None:
    run_dir.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    os.chmod(victim, 0o644)
    (run_dir / "tokens.env").symlink_to(victim)
    devrun._tokens()
    assert victim.read_text() == "untouched\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644
    st = (run_dir / "tokens.env").lstat()
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600


def test_values_with_shell_characters_round_trip(run_dir: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    odd = "tok'en $(touch /tmp/pwned) `x` ;"
    monkeypatch.setenv("MAILEXEC_ADMIN_TOKEN", odd)
    devrun._tokens()
    path = run_dir / "tokens.env"
    assert devrun.read_env_file(path)["MAILEXEC_ADMIN_TOKEN"] == odd
    out = subprocess.run(["sh", "-c", f'. {path} && printf %s "$MAILEXEC_ADMIN_TOKEN"'],
                         capture_output=True, text=True, check=True).stdout
    assert out == odd


def test_a_token_given_as_a_file_is_kept(run_dir: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "admin"
    secret.write_text("mxa_from_file\n")
    monkeypatch.setenv("MAILEXEC_ADMIN_TOKEN_FILE", str(secret))
    assert devrun._tokens()["MAILEXEC_ADMIN_TOKEN"] == "mxa_from_file"
