"""Prometheus metrics of the notifier (scraped at ``GET /metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

DSNS = Counter(
    "mailexec_dsns_total",
    "Notifications (DSNs and postmaster notices) by kind and by the state they reached",
    ["kind", "state"],
)
OUTBOX_PENDING = Gauge(
    "mailexec_notifier_outbox_pending", "Notifications written to the outbox and not yet sent"
)
SMTP_SEND_SECONDS = Histogram(
    "mailexec_smtp_send_seconds",
    "Time to hand one notification to the SMTP relay (successful or not)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
EVENTS = Counter(
    "mailexec_notifier_events_total",
    "Events consumed from notifier.events, by kind and what became of them",
    ["kind", "result"],
)

