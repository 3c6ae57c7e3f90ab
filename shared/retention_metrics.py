"""The retention purges' metrics, one set for the two services that purge (ingest:
``services/ingest/retention.py``, the notifier: ``services/notifier/retention.py``),
each with its own kinds. Defined once: both register on the default registry of
whichever process imports them (the tests import both).

Imported only by the purgers, so never before ingest's supervisor has set
``PROMETHEUS_MULTIPROC_DIR`` (``shared/metrics.py``); the gauge says how it combines.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

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
