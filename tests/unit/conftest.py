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

import pytest


@pytest.fixture(scope="session", autouse=True)
def mx_env() -> dict[str, str]:
    """Nothing to create: no test here reaches a server."""
    return {}
