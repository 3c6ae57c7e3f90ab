"""Every `mailexec serve X` says why it stopped with the exit status of ``shared.service``.

As real processes (``tests/conftest.py`` ``services``): a taken port is 71 with a message
naming the port and its variable, bad settings 78 without a traceback, a clean SIGTERM
stop 0 (policy used to die by its re-raised SIGTERM), and policy with its database out of
reach stays up and says so on /readyz, as ingest and notifier do. The executor's own
cases (it needs root) are in tests/executor/test_privsep.py; the mapping itself is unit
tested in tests/unit/shared/test_service.py.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from shared.sysexits import EX_CONFIG, EX_OK, EX_OSERR
from tests.conftest import ROOT, free_port

PORT_VARIABLE = {
    "policy": "MAILEXEC_POLICY_PORT",
    "ingest": "MAILEXEC_INGEST_PORT",
    "notifier": "MAILEXEC_NOTIFIER_PORT",
}
TWO_WORKERS = {"MAILEXEC_INGEST_WORKERS": "2"}


@pytest.fixture
def taken() -> Iterator[int]:
    """A port another process listens on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield int(other.getsockname()[1])


def exit_status(sp: Any, timeout: float = 60) -> int:
    try:
        return int(sp.proc.wait(timeout))
    except subprocess.TimeoutExpired:
        sp.kill()
        pytest.fail(f"{sp.name} still running after {timeout}s:\n{sp.log_tail()}")


def log_of(sp: Any) -> str:
    return str(sp.log_path.read_text(errors="replace"))


@pytest.mark.parametrize(("name", "extra"), [
    ("policy", {}), ("notifier", {}), ("ingest", {}), ("ingest", TWO_WORKERS),
], ids=["policy", "notifier", "ingest", "ingest-2-workers"])
def test_a_taken_port_refuses_the_start_with_71(
    services: Any, taken: int, name: str, extra: dict[str, str]
) -> None:
    sp = services(name, extra_env={**extra, PORT_VARIABLE[name]: str(taken)}, wait=False)
    assert exit_status(sp) == EX_OSERR, sp.log_tail()
    log = log_of(sp)
    assert f"mailexec {name}: refusing to start: cannot listen on 127.0.0.1:{taken}" in log, log
    assert PORT_VARIABLE[name] in log and "Traceback" not in log, log


@pytest.mark.parametrize("extra", [{}, TWO_WORKERS], ids=["one-process", "2-workers"])
def test_a_taken_lmtp_port_refuses_the_ingest_start_with_71(
    services: Any, taken: int, extra: dict[str, str]
) -> None:
    sp = services("ingest", extra_env={**extra, "MAILEXEC_LMTP_PORT": str(taken)}, wait=False)
    assert exit_status(sp) == EX_OSERR, sp.log_tail()
    log = log_of(sp)
    assert "mailexec ingest: refusing to start: " in log and str(taken) in log, log


@pytest.mark.parametrize("name", ["policy", "ingest", "notifier", "executor"])
def test_bad_settings_are_78_with_the_variable_named(services: Any, name: str) -> None:
    sp = services(name, extra_env={"MAILEXEC_MAX_PROGRAM_BYTES": "lots"}, wait=False)
    assert exit_status(sp) == EX_CONFIG, sp.log_tail()
    log = log_of(sp)
    assert f"mailexec {name}: refusing to start: bad settings: MAILEXEC_MAX_PROGRAM_BYTES" in log
    assert "Traceback" not in log, log


def test_notifier_refuses_an_smtp_url_it_cannot_use_with_78(services: Any) -> None:
    sp = services("notifier", extra_env={"MAILEXEC_SMTP_URL": "ftp://relay.example"}, wait=False)
    assert exit_status(sp) == EX_CONFIG, sp.log_tail()
    assert "mailexec notifier: refusing to start:" in log_of(sp)


@pytest.mark.parametrize(("name", "extra"), [
    ("policy", {}), ("notifier", {}), ("ingest", {}), ("ingest", TWO_WORKERS),
], ids=["policy", "notifier", "ingest", "ingest-2-workers"])
def test_sigterm_is_a_clean_stop_with_0(services: Any, name: str, extra: dict[str, str]) -> None:
    sp = services(name, extra_env=extra)
    sp.stop()
    assert sp.proc.returncode == EX_OK, sp.log_tail()
    assert '"level":"error"' not in log_of(sp), sp.log_tail()


def test_policy_without_its_database_stays_up_and_stops_with_0(services: Any) -> None:
    """Documented in shared/service.py and services/policy/main.py: not a reason to exit."""
    dead = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/mailexec"
    sp = services("policy", extra_env={"MAILEXEC_DATABASE_URL": dead}, wait=False)
    deadline = time.monotonic() + 30
    ready = None
    while ready is None and time.monotonic() < deadline:
        assert sp.proc.poll() is None, sp.log_tail()
        try:
            ready = httpx.get(sp.url + "/readyz", timeout=5)
        except httpx.TransportError:
            time.sleep(0.1)
    assert ready is not None, sp.log_tail()
    assert ready.status_code == 503 and ready.json()["checks"]["database"] is False
    assert sp.proc.poll() is None
    sp.stop()
    assert sp.proc.returncode == EX_OK, sp.log_tail()


def test_up_does_not_restart_a_service_that_refuses_to_start(services: Any) -> None:
    env = {**services.env, "MAILEXEC_MAX_PROGRAM_BYTES": "lots"}
    done = subprocess.run([sys.executable, "-m", "mailexec", "up", "policy"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == EX_CONFIG, done.stderr
    assert "policy refused to start (status 78 EX_CONFIG" in done.stderr, done.stderr
    assert "restarting in" not in done.stderr, done.stderr
