"""The retention purges' metrics, one set for the two services that purge (ingest:
``services/ingest/retention.py``, the notifier: ``services/notifier/retention.py``),
each with its own kinds. Defined once: both register on the default registry of
whichever process imports them (the tests import both).

Imported only by the purgers, so never before ingest's supervisor has set
``PROMETHEUS_MULTIPROC_DIR`` (``shared/metrics.py``); the gauge says how it combines.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from prometheus_client import Counter, Gauge

from shared.periodic import Periodic
from shared.settings import get_settings

RETENTION_PURGED = Counter(
    "mailexec_retention_purged_total",
    "Rows deleted (or content cleared) by the retention purge, by kind: body (a message's "
    "body, once every recipient is final and no notification needs it), message (its "
    "records: envelope, recipients, program runs), queue_action (ingest); "
    "notification_content (a final notification's rendered message), notification, "
    "seen_event (the notifier)",
    ["kind"],
)
RETENTION_OLDEST = Gauge(
    "mailexec_retention_oldest_seconds",
    "Age of the oldest row of each kind the retention purge looks after (0: none): body "
    "(the oldest message whose body is still stored), message (ingest); "
    "notification_content of final notifications (near 0), notification, seen_event "
    "(the notifier); read after each pass",
    ["kind"], multiprocess_mode="mostrecent",
)
RETENTION_RUNS = Counter(
    "mailexec_retention_runs_total",
    "Retention purge passes, by result (ok; error: logged, tried again next interval)",
    ["result"],
)


def purge_task(name: str, step: Callable[[], Awaitable[object]], interval_s: float) -> Periodic:
    """The background task of a service's purge: ``step`` every ``interval_s``, a failed
    pass counted as ``error`` (and logged by :class:`Periodic`)."""
    return Periodic(name, step, interval_s,
                    on_error=lambda _: RETENTION_RUNS.labels("error").inc())


async def finish_pass(done: dict[str, int], refresh: Callable[[], Awaitable[None]],
                      log: logging.Logger) -> None:
    """The end of a pass: its rows per kind counted, the age gauges refreshed, the pass
    counted ``ok`` (a failed refresh fails the pass, its rows stay counted), logged when it
    purged anything."""
    for kind, n in done.items():
        if n:
            RETENTION_PURGED.labels(kind).inc(n)
    await refresh()
    RETENTION_RUNS.labels("ok").inc()
    if any(done.values()):
        log.info("retention purge", extra={"purged": done})


def record_keep_s(record_retention_days: int) -> float:
    """Seconds a final message's records (and the notifier's records) are kept: the
    policy's ``record_retention_days``, or ``MAILEXEC_RECORD_RETENTION_S`` where a test
    install set it (shared/settings.py)."""
    override = get_settings().record_retention_s
    return float(override) if override is not None else record_retention_days * 86400.0
