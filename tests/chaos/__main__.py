"""``python -m tests.chaos``: the full chaos run (``make chaos``).

Environment: ``CHAOS_N`` messages (5000), ``CHAOS_RATE`` per second (50),
``CHAOS_EXECUTOR_KILLS`` (4), ``CHAOS_RABBIT`` = ``real`` (default: stop_app/start_app
of the machine's broker) or ``proxy`` (cut a TCP proxy instead), ``CHAOS_PG`` = ``real``
(default: a private PostgreSQL cluster, really restarted; see ``testing/pgcluster.py``) or
``proxy`` (the shared server behind a TCP proxy that is cut; the server never restarts).
Exit status 0 iff the ledger holds.
"""

from __future__ import annotations

import asyncio
import os
import sys

from tests.chaos.harness import main

if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("the chaos run starts an executor, which must run as root")
    ledger = asyncio.run(main(
        n=int(os.environ.get("CHAOS_N", "5000")),
        rate=float(os.environ.get("CHAOS_RATE", "50")),
        rabbit=os.environ.get("CHAOS_RABBIT", "real"),
        executor_kills=int(os.environ.get("CHAOS_EXECUTOR_KILLS", "4")),
        pg=os.environ.get("CHAOS_PG", "real"),
    ))
    sys.exit(0 if ledger.ok() else 1)
