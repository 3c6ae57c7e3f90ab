"""docs/mailexec.1 is generated from the command tree (tools/manpage.py, `make man`): the
committed page must be what the generator makes now, so it cannot drift from --help."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import manpage  # noqa: E402


def test_committed_man_page_is_up_to_date() -> None:
    assert (ROOT / "docs" / "mailexec.1").read_text() == manpage.render(), "run `make man`"


def test_man_page_names_every_command() -> None:
    text = manpage.render()
    for command in ("tokens revoke", "tokens list", "audit", "notifications", "submit", "serve"):
        assert f".SS {command.replace('-', chr(92) + '-')}\n" in text, command
    assert "\\-\\-version" in text and "\\-\\-install\\-completion" in text


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_man_page_renders_without_warnings() -> None:
    done = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-z", str(ROOT / "docs" / "mailexec.1")],
        capture_output=True, text=True, check=False,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
