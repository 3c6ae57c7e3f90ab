"""`make test` says what it will install before installing it (issue 16): devrun's list
covers every apt-get install in tests/ and testing/, and each missing package gets a line
saying why, before pytest starts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mailexec import devrun

ROOT = Path(__file__).resolve().parents[2]


def installed_by_tests() -> set[str]:
    """Package names on any line that runs `apt-get … install …` in tests/ and testing/."""
    found: set[str] = set()
    for path in [*(ROOT / "tests").rglob("*.py"), *(ROOT / "testing").rglob("*.py")]:
        for line in path.read_text().splitlines():
            if '"apt-get"' in line and '"install"' in line:
                after = line.split('"install"', 1)[1]
                found |= {w for w in re.findall(r'"([a-z0-9][a-z0-9.+-]*)"', after)}
    return found


def test_every_package_the_tests_install_is_announced() -> None:
    installed = installed_by_tests()
    assert {"postfix", "swaks", "nftables", "chromium"} <= installed  # the scan finds them
    assert installed == {p for p, _, _ in devrun.TEST_PACKAGES}


def test_the_downloaded_recipes_packages_are_announced() -> None:
    from tests.cli import test_mta_recipes as recipes

    assert set(devrun.TEST_DOWNLOADS) == set(recipes.EXIM_PACKAGES) | set(recipes.SENDMAIL_PACKAGES)
    assert recipes.CACHE == devrun.TEST_DOWNLOAD_DIR


def test_a_missing_package_gets_a_line_with_its_reason(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(devrun, "TEST_PACKAGES", (
        ("swaks", ("/nonexistent/swaks",), "the LMTP test"),
        ("bash", ("/bin/sh",), "present: no line"),
    ))
    monkeypatch.setattr(devrun, "TEST_DOWNLOAD_DIR", tmp_path)
    monkeypatch.setattr(devrun, "_is_debian_root", lambda: True)
    lines = devrun.announce_test_installs()
    assert lines[0] == "make test will install swaks (apt-get install swaks) for the LMTP test"
    assert "will download (not install) exim4-daemon-light" in lines[1] and len(lines) == 2
    assert capsys.readouterr().out.splitlines() == [f"mailexec: {line}" for line in lines]

    monkeypatch.setattr(devrun, "_is_debian_root", lambda: False)
    lines = devrun.announce_test_installs()
    assert lines == ["swaks is missing and will not be installed (not root with apt-get): "
                     "the LMTP test will be skipped"]


def test_make_test_announces_before_pytest_starts() -> None:
    recipe = (ROOT / "Makefile").read_text().split("\ntest:", 1)[1].split("\n\n", 1)[0]
    announce = recipe.index("--announce-test-installs")
    assert announce < recipe.index("pytest")
