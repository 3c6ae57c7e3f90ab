"""deploy/postfix: every Postfix parameter the snippets set or name exists (`postconf -d`
lists them all), so a copied comment never sends an admin after a parameter Postfix does
not have (as master.cf.copy once named parent_domain_matches_transport_maps)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

POSTFIX = Path(__file__).resolve().parents[2] / "deploy" / "postfix"
FILES = ("main.cf", "master.cf", "master.cf.copy", "transport")
# not main.cf parameters: our map files and per-transport parameters (mailexec_*), pipe(8)
# attributes and ${macros}, fields of Postfix's log lines
NOT_PARAMETERS = {"null_sender", "original_recipient", "queue_id", "conn_use", "orig_to"}


@pytest.mark.skipif(shutil.which("postconf") is None, reason="Postfix (postconf) is not installed")
def test_every_parameter_named_exists() -> None:
    defaults = subprocess.run(["postconf", "-d"], capture_output=True, text=True, check=True).stdout
    known = {line.split(" =", 1)[0] for line in defaults.splitlines()}
    assert "default_destination_concurrency_limit" in known
    for name in FILES:
        words = set(re.findall(r"\b[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b", (POSTFIX / name).read_text()))
        for word in sorted(words):
            if word.startswith("mailexec_") or word in NOT_PARAMETERS:
                continue
            assert word in known, f"{name}: {word} is not a Postfix parameter"


@pytest.mark.skipif(shutil.which("postconf") is None, reason="Postfix (postconf) is not installed")
def test_the_concurrency_the_comments_state_is_postfixs_default() -> None:
    value = subprocess.run(["postconf", "-dh", "default_destination_concurrency_limit"],
                           capture_output=True, text=True, check=True).stdout.strip()
    main_cf = (POSTFIX / "main.cf").read_text()
    assert f"(= default_destination_concurrency_limit, {value})" in main_cf
    assert main_cf.count(f"(= default_destination_concurrency_limit, {value})") == 2  # lmtp and pipe
