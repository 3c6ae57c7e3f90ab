"""``shared.service``: what a start-up failure becomes as an exit status, in process.

The same paths as real processes are in tests/shared/test_service_start.py.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import FastAPI

from shared import service
from shared.errors import Unavailable
from shared.service import StartupError, listen, run_service, serve_http, startup_status
from shared.settings import Settings
from shared.sysexits import EX_CONFIG, EX_NOPERM, EX_OSERR, EX_UNAVAILABLE


@pytest.fixture(autouse=True)
def no_log_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    """run_service configures the process's JSON logs; not pytest's."""
    monkeypatch.setattr(service, "configure", lambda *a, **k: None)


@pytest.mark.parametrize(("exc", "status"), [
    (StartupError("no", EX_NOPERM), EX_NOPERM),
    (Unavailable("database down", code="database_unavailable"), EX_UNAVAILABLE),
    (OSError(errno.EADDRINUSE, "Address already in use"), EX_OSERR),
    (OSError(errno.EACCES, "Permission denied"), EX_OSERR),
    (RuntimeError("bug"), 1),
    (None, 1),
])
def test_startup_status(exc: BaseException | None, status: int) -> None:
    assert startup_status(exc)[0] == status


def test_bad_settings_are_78(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
                             ) -> None:
    monkeypatch.setenv("MAILEXEC_LMTP_PORT", "many")
    monkeypatch.setattr(service, "get_settings", Settings)
    assert run_service("policy", lambda s: 0) == EX_CONFIG
    assert "mailexec policy: refusing to start: bad settings: MAILEXEC_LMTP_PORT" in (
        capsys.readouterr().err)


def test_a_refusal_is_its_status_and_a_crash_is_1(capsys: pytest.CaptureFixture[str]) -> None:
    def refuses(settings: Settings) -> int:
        raise StartupError("MAILEXEC_X is wrong", EX_CONFIG)

    def crashes(settings: Settings) -> int:
        raise RuntimeError("bug")

    assert run_service("ingest", refuses) == EX_CONFIG
    assert "mailexec ingest: refusing to start: MAILEXEC_X is wrong" in capsys.readouterr().err
    assert run_service("ingest", crashes) == 1
    assert run_service("ingest", lambda s: 0) == 0


def test_a_taken_port_names_its_variable() -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(StartupError) as refused:
            listen("127.0.0.1", port, "MAILEXEC_POLICY_PORT")
    assert refused.value.status == EX_OSERR
    assert f"cannot listen on 127.0.0.1:{port}" in str(refused.value)
    assert "MAILEXEC_POLICY_PORT" in str(refused.value)


@pytest.mark.parametrize(("exc", "status"), [
    (StartupError("the LMTP port is taken", EX_OSERR), EX_OSERR),
    (Unavailable("broker down", code="broker_unavailable"), EX_UNAVAILABLE),
    (ValueError("bug"), 1),
])
def test_what_a_lifespan_raises_at_start_is_the_exit_status(exc: Exception, status: int) -> None:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        raise exc
        yield

    app: Any = FastAPI(lifespan=lifespan)
    with listen("127.0.0.1", 0, "MAILEXEC_TEST_PORT") as sock:
        port = sock.getsockname()[1]
        assert serve_http("test", app, host="127.0.0.1", port=port,
                          setting="MAILEXEC_TEST_PORT", sockets=[sock]) == status
