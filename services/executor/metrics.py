"""Prometheus metrics of the executor (served on ``executor_metrics_port`` at /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

DELIVERIES = Counter(
    "mailexec_deliveries_total",
    "Delivery jobs finished, by outcome (delivered, deferred, bounced, suspended, corrupt, duplicate)",
    ["outcome"],
)
PROGRAM_RUN_SECONDS = Histogram(
    "mailexec_program_run_seconds",
    "Wall-clock duration of one program run",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
QUEUE_LAG_SECONDS = Histogram(
    "mailexec_queue_lag_seconds",
    "Time from the message's arrival to the start of the job's execution",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400),
)
RETRIES = Counter("mailexec_retries_total", "Jobs sent to a retry queue", ["reason"])
SANDBOX_FAILURES = Counter(
    "mailexec_sandbox_failures_total",
    "Program runs that failed before the program itself ran (launch errors, spawn failures)",
)
STALE_JOBS = Counter(
    "mailexec_stale_jobs_total",
    "Jobs dropped because an operator superseded them (queue retry/hold/release/delete: "
    "the recipient's generation moved on while this copy waited in a queue)",
)
JOBS_IN_FLIGHT = Gauge("mailexec_jobs_in_flight", "Delivery jobs being processed right now")
EVENTS_PUBLISHED = Counter("mailexec_events_published_total", "Events published", ["kind"])
BODY_BYTES = Gauge(
    "mailexec_executor_body_bytes",
    "Bytes of message bodies read from PostgreSQL and held in memory right now "
    "(bounded by MAILEXEC_EXECUTOR_BODY_MEMORY_BYTES)",
)
BODY_BYTES_PEAK = Gauge(
    "mailexec_executor_body_bytes_peak", "Highest mailexec_executor_body_bytes since start")
