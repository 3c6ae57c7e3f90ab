"""``make soak``: hold a rate for N minutes through the whole pipeline and report whether
anything grows without levelling off.

Reuses the chaos harness's topology (own database and vhost, proxies left intact, no
faults). Environment: ``SOAK_RATE`` messages/s (default 40: 80 % of a ~50/s peak seen
on a shared dev machine; set it to 0.8 × ``make bench``'s peak on yours),
``SOAK_MINUTES`` (10), ``SOAK_SAMPLE_S`` (30). Prints, per sample: RSS of each service,
PostgreSQL connections to the run's database, queue depths; then start vs end, and
whether the last third of the run still grows (levelled off = growth in the last third
below 10 % of the start value).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

import asyncpg

from testing.procstats import queue_depths, rss_mib
from tests.chaos.harness import Chaos


async def sample(chaos: Chaos) -> dict[str, object]:
    conn = await asyncpg.connect(chaos._db_dsn())
    try:
        conns = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", chaos.db)
        backlog = await conn.fetchval(
            "SELECT count(*) FROM mail.recipients WHERE state NOT IN ('delivered','bounced')")
    finally:
        await conn.close()
    rss = {k: round(rss_mib(sp.proc.pid), 1) for k, sp in chaos.procs.items()
           if sp.proc is not None and sp.proc.poll() is None}
    return {"t": round(time.monotonic() - chaos.t0), "rss_mib": rss, "db_connections": conns,
            "backlog": backlog, "queues": await asyncio.to_thread(queue_depths, chaos.vhost)}


async def main() -> int:
    rate = float(os.environ.get("SOAK_RATE", "40"))
    minutes = float(os.environ.get("SOAK_MINUTES", "10"))
    every = float(os.environ.get("SOAK_SAMPLE_S", "30"))
    n = int(rate * minutes * 60)
    chaos = Chaos(n, rate, rabbit="proxy", executors=1, pg="proxy")
    print(f"soak: {rate}/s for {minutes} min ({n} messages), logs in {chaos.log_dir}", flush=True)
    samples: list[dict[str, object]] = []
    try:
        await chaos.setup()
        chaos.t0 = time.monotonic()  # type: ignore[attr-defined]
        load = asyncio.create_task(chaos.load(range(n)))
        while not load.done():
            s = await sample(chaos)
            samples.append(s)
            print(json.dumps(s), flush=True)
            await asyncio.wait([load], timeout=every)
        await load
        await chaos.settle(300)
        samples.append(await sample(chaos))
        print(json.dumps(samples[-1]), flush=True)
        await chaos.check()
    finally:
        await chaos.teardown()
    first, last = samples[0], samples[-1]
    third = samples[len(samples) * 2 // 3]
    grows = []
    for name, start in first["rss_mib"].items():  # type: ignore[union-attr]
        end = last["rss_mib"].get(name, 0)  # type: ignore[union-attr]
        mid = third["rss_mib"].get(name, 0)  # type: ignore[union-attr]
        print(f"RSS {name}: {start} MiB at start, {end} MiB at end")
        if end - mid > 0.1 * start:
            grows.append(name)
    print(f"DB connections: {first['db_connections']} at start, {last['db_connections']} at end")
    print(f"queues at end: {last['queues']}, backlog {last['backlog']}")
    print(chaos.ledger.report())
    print("still growing in the last third: " + (", ".join(grows) if grows else "nothing"))
    return 0 if chaos.ledger.ok() and not grows else 1


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("the soak run starts an executor, which must run as root")
    sys.exit(asyncio.run(main()))
