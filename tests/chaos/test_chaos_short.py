"""The short chaos run in the default suite: ~500 messages, one fault of each kind
(kill -9 executor, notifier, ingest with POSTs in flight; a real restart of a private,
throwaway PostgreSQL cluster, after which every service must be back on the database;
a RabbitMQ "restart" simulated by cutting a TCP proxy), then the ledger. The shared
servers are never restarted. ``CHAOS_PG=proxy`` simulates the PostgreSQL restart with a
proxy cut too. ``make chaos`` runs the long version (``python -m tests.chaos``)."""

from __future__ import annotations

import os

import pytest

from tests.chaos.harness import Chaos


@pytest.mark.timeout(400)
async def test_short_chaos_ledger_holds() -> None:
    if os.geteuid() != 0:
        pytest.skip("the executor must run as root")
    chaos = Chaos(n=int(os.environ.get("CHAOS_SHORT_N", "500")), rate=40, rabbit="proxy",
                  executor_kills=1, pg=os.environ.get("CHAOS_PG", "real"))
    try:
        await chaos.setup()
        ledger = await chaos.run(settle_timeout=120)
    finally:
        await chaos.teardown()
    print("\n" + ledger.report())
    # Every figure of the ledger must hold: nothing accepted lost, everything final, every
    # program run happened, duplicates only within the bound of jobs running in killed
    # workers, every DSN sent once (a re-send with the same Message-ID only within the
    # bound of the SMTP kill window, docs/security.md), and every fault recovered, every
    # service back on the database after the real PostgreSQL restart.
    assert ledger.accepted == ledger.submitted, ledger.report()
    assert ledger.ok(), ledger.report()
