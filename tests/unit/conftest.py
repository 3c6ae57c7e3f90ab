"""Unit tests of the decision code: pure functions, no root, PostgreSQL or RabbitMQ.

``make test-unit`` runs this package alone, in seconds; ``make test`` runs it with the
rest. The package mirrors the source tree (``tests/unit/executor`` ↔
``services/executor``). What touches the database or the broker is not faked here: it
stays tested against the real ones in the other packages.

``mx_env`` (``tests/conftest.py``) creates the run's database and vhost for every test;
here it is replaced by a fixture that creates nothing, so these tests pass with
``MAILEXEC_DATABASE_URL`` and ``MAILEXEC_AMQP_URL`` pointing at closed ports.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings


def _may_write(path: Path) -> bool:
    return os.access(path if path.exists() else path.parent, os.W_OK)


# Hypothesis keeps its example database in ./.hypothesis; a user who may not write there
# (``make test-unit`` as nobody in root's checkout) runs without one, instead of failing
# on Hypothesis's warning (filterwarnings = error).
if not _may_write(Path.cwd() / ".hypothesis" / "examples"):
    hypothesis_settings.register_profile("read-only-checkout", database=None)
    hypothesis_settings.load_profile("read-only-checkout")


@pytest.fixture(scope="session", autouse=True)
def mx_env() -> dict[str, str]:
    """Nothing to create: no test here reaches a server."""
    return {}
