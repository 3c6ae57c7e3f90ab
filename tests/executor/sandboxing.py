"""Helpers of the sandbox tests: settings of a private executor instance, root-opened fds."""

from __future__ import annotations

import itertools
import os
from typing import Any

from services.executor.programs import ExecHandle
from shared.settings import Settings

_instances = itertools.count(1)


def test_settings(**overrides: Any) -> Settings:
    """Settings whose executor instance is this test's own: concurrent test runs on one
    host (other sessions' too) never share the instance whose leftovers a start kills."""
    values: dict[str, Any] = {"executor_instance": f"test-{os.getpid()}-{next(_instances)}"}
    values.update(overrides)
    return Settings(**values)


test_settings.__test__ = False  # type: ignore[attr-defined]


def opened(path: str) -> ExecHandle:
    """A program opened by root, as the tests' own shortcut (the executor opens insecure
    paths with the account's rights through the spawner)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    return ExecHandle(fd=fd, is_script=os.pread(fd, 2, 0) == b"#!", name=path)
