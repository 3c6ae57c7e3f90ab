"""Prometheus metrics of ingest (SPEC §5: messages accepted, queue health).

Module-level collectors on the default registry, which ``/metrics`` of
``shared.httpapp`` serves; with several workers they are summed over the workers
(``shared.metrics``), so each gauge says how it combines (``multiprocess_mode``).
:class:`OldestJobAge` is computed at scrape time by the worker that answers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shared.errors import Unavailable
from shared.states import NOT_FINAL_STATES

from .repo import Waiting

log = logging.getLogger("mailexec.ingest")

MESSAGES_ACCEPTED = Counter(
    "mailexec_messages_accepted_total", "Messages answered 202 (stored and every job confirmed)"
)
MESSAGES_REJECTED = Counter(
    "mailexec_messages_rejected_total",
    "Submissions refused, by reason (bad_request, too_large, length_required, "
    "unsupported_media, database, broker, idempotency_conflict)",
    ["reason"],
)
PUBLISH_SECONDS = Histogram(
    "mailexec_ingest_publish_seconds",
    "Time to publish one batch of jobs and receive every broker confirm",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BATCH_SIZE = Histogram(
    "mailexec_ingest_batch_messages",
    "Messages stored per database transaction (batching efficiency)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 100, 200),
)
OUTBOX_UNPUBLISHED = Gauge(
    "mailexec_outbox_unpublished", "Recipient jobs stored but not yet confirmed by the broker",
    multiprocess_mode="mostrecent",  # a count of the whole table: the latest reading wins
)
RELAY_PUBLISHED = Counter(
    "mailexec_outbox_relayed_total", "Jobs published by the outbox relay (left behind by a failure)"
)

LMTP_CONNECTIONS = Counter(
    "mailexec_lmtp_connections_total",
    "LMTP connections by listener (tcp, unix) and result (accepted, refused: over the limit)",
    ["listener", "result"],
)
LMTP_OPEN = Gauge("mailexec_lmtp_connections_open", "LMTP connections open (all workers)",
                  multiprocess_mode="livesum")
LMTP_BYTES = Counter("mailexec_lmtp_received_bytes_total", "Bytes received on LMTP connections")
LMTP_REPLIES = Counter(
    "mailexec_lmtp_replies_total",
    "LMTP replies that decide a recipient's or client's fate, by stage (auth, mail, rcpt, "
    "data) and reply code; data replies count one per recipient (RFC 2033)",
    ["stage", "code"],
)

# Bodies being received, held in memory (shared/bodybudget.py)
BODY_BYTES = Gauge(
    "mailexec_ingest_body_bytes",
    "Bytes of message bodies received (HTTP and LMTP) and not yet stored, held in memory "
    "right now (bounded by MAILEXEC_INGEST_BODY_MEMORY_BYTES)",
    multiprocess_mode="livesum",
)
BODY_BYTES_PEAK = Gauge(
    "mailexec_ingest_body_bytes_peak", "Highest mailexec_ingest_body_bytes since start",
    multiprocess_mode="max",
)

# Retention (services/ingest/retention.py; the counters and the age gauge are
# shared.retention_metrics', common to the notifier)
BODIES_HELD = Gauge(
    "mailexec_bodies_held", "Messages whose body is still stored",
    multiprocess_mode="mostrecent",
)
# The body ring's turns (services/ingest/bodyring.py)
BODY_RING_TURNS = Counter(
    "mailexec_body_ring_turns_total",
    "Ring partitions of mail.bodies emptied for their next turn (emptied), or not this "
    "time (busy: a lock was not granted in time; error: logged), both tried again at the "
    "next tick",
    ["result"],
)
BODIES_KEPT = Counter(
    "mailexec_bodies_kept_total",
    "Bodies still needed when their ring slot's turn came (a recipient not final yet, a "
    "DSN not rendered yet, a dead letter), moved to the kept partition of mail.bodies",
)


# The states a recipient waits in (SPEC §2), each always present in the gauge.
WAITING_STATES = NOT_FINAL_STATES
OLDEST_CACHE_S = 5.0


class OldestJobAge(Collector):
    """``mailexec_oldest_job_age_seconds{state}``: age of the oldest recipient not yet final,
    per waiting state (0: none waits in it), the first thing an on-call admin asks.

    ``read`` is ``repo.Database.waiting`` (the query of ``GET /v1/status``: one scan of the
    partial index ``recipients_waiting``); :meth:`refresh` runs it at most once every
    ``OLDEST_CACHE_S`` seconds, before a scrape, so scraping often costs nothing more. When
    the database can't be asked the gauge is left out (absent, not a stale or zero age).
    """

    def __init__(self, read: Callable[[], Awaitable[Mapping[str, Waiting]]],
                 cache_s: float = OLDEST_CACHE_S) -> None:
        self.read = read
        self.cache_s = cache_s
        self.ages: dict[str, float] | None = None
        self.read_at = float("-inf")

    async def refresh(self) -> None:
        now = time.monotonic()
        if now - self.read_at < self.cache_s:
            return
        self.read_at = now
        try:
            waiting = await self.read()
        except Unavailable as exc:
            log.warning("oldest job age: database not reachable", extra={"error": exc.message})
            self.ages = None
            return
        self.ages = oldest_ages(waiting)

    def collect(self) -> Iterator[Metric]:
        if self.ages is None:
            return
        family = GaugeMetricFamily(
            "mailexec_oldest_job_age_seconds",
            "Age of the oldest recipient not yet final, by state (0: none in that state); "
            f"read at most every {self.cache_s:g} s",
            labels=["state"])
        for state, age in self.ages.items():
            family.add_metric([state], age)
        yield family


def oldest_ages(waiting: Mapping[str, Waiting]) -> dict[str, float]:
    """``repo.Database.waiting`` → the gauge's value per waiting state."""
    ages = dict.fromkeys(WAITING_STATES, 0.0)
    for state, w in waiting.items():
        if w.oldest_s is not None:
            ages[state] = max(0.0, w.oldest_s)
    return ages
