"""The short chaos run in the default suite: ~500 messages, one fault of each kind
(kill -9 executor, notifier, ingest with POSTs in flight; RabbitMQ and PostgreSQL
"restarts" through a cuttable TCP proxy, never the shared servers), then the ledger.
``make chaos`` runs the long version (``python -m tests.chaos``)."""

from __future__ import annotations

import os

import pytest

from tests.chaos.harness import Chaos


@pytest.mark.timeout(400)
async def test_short_chaos_ledger_holds() -> None:
    if os.geteuid() != 0:
        pytest.skip("the executor must run as root")
    chaos = Chaos(n=int(os.environ.get("CHAOS_SHORT_N", "500")), rate=40, rabbit="proxy",
                  executor_kills=1)
    try:
        await chaos.setup()
        ledger = await chaos.run(settle_timeout=120)
    finally:
        await chaos.teardown()
    print("\n" + ledger.report())
    assert ledger.accepted == ledger.submitted
    assert all(f.recovered_s is not None for f in ledger.faults)
    assert ledger.ok(), ledger.report()
