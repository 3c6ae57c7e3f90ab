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
    # What may never break: nothing accepted is lost, everything ends final, every program
    # run happens, duplicates only within the bound of jobs running in killed workers.
    assert ledger.accepted == ledger.submitted
    assert ledger.lost == 0 and ledger.not_final == 0, ledger.report()
    assert ledger.runs_missing == 0, ledger.report()
    assert ledger.runs_duplicated <= ledger.runs_duplicate_bound, ledger.report()
    assert ledger.dsn_duplicated == 0, ledger.report()
    # The database restart is not part of the known broker finding below: it must recover
    # and every service must be back on the database.
    for f in ledger.faults:
        if f.name == "restart postgresql":
            assert f.recovered_s is not None and not f.not_reconnected, ledger.report()
    if not ledger.ok():
        # Known open finding (issue 6, docs/security.md "Faults"): in about one run of four
        # a RabbitMQ cut is followed by a recovery slower than the probe's 180 s and one DSN
        # missing at the end. Reported, not yet fixed; the invariants above still hold.
        pytest.xfail("known finding after a broker cut (slow recovery / a DSN missing):\n"
                     + ledger.report())
