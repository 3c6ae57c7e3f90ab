"""Fixtures of the executor's end-to-end tests: one pipeline (policy, ingest, executor) per
module, the test program registered under every name the tests use, an event tap per test.

The classes behind them (``Pipeline``, ``Homes``, ``EventTap``) are in ``helpers.py``, which
the security tests import too.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.executor.helpers import EventTap, Homes, Pipeline, build_tprog

PROGRAM_NAMES = ("probe", "probe2", "probe3", "exit1", "exit65", "exit67", "exit75", "say",
                 "chatty", "sig", "sleeper", "flaky", "early", "hostile", "true", "slowonce", "nap")


@pytest.fixture(scope="module")
def tprog(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    if os.geteuid() != 0:
        pytest.skip("executor end-to-end tests run as root")
    return build_tprog(tmp_path_factory.mktemp("tprog"))


@pytest.fixture(scope="module")
def homes() -> Iterator[Homes]:
    h = Homes()
    yield h
    h.cleanup()


@pytest.fixture(scope="module")
async def pipe(mx_env: dict[str, str], tprog: bytes, tmp_path_factory: pytest.TempPathFactory
               ) -> AsyncIterator[Pipeline]:
    p = Pipeline(mx_env, tmp_path_factory.mktemp("logs"))
    try:
        p.start("policy")
        p.start("ingest")
        p.start("executor")
        await p.settings(mode="secure", suspended=False, safe_user=None,
                         delay_warning_after_s=14400, max_queue_lifetime_s=432000,
                         program_timeout_s=60, dsn_include_output=True)
        for name in PROGRAM_NAMES:
            await p.register(name, tprog)
        yield p
    finally:
        p.stop_all()


@pytest.fixture
async def tap(mx_env: dict[str, str]) -> AsyncIterator[EventTap]:
    async with EventTap(mx_env["MAILEXEC_AMQP_URL"]) as t:
        yield t


@pytest.fixture
def log_dir(pipe: Pipeline) -> Path:
    return pipe.log_dir
