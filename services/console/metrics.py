"""Prometheus metrics of the console (scraped at ``GET /metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter(
    "mailexec_console_requests_total",
    "Console requests by route (the path template, 'unmatched' for none) and status",
    ["route", "method", "status"],
)
REQUEST_SECONDS = Histogram(
    "mailexec_console_request_seconds",
    "Time to answer a console request, API calls included",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SIGN_INS = Counter(
    "mailexec_console_sign_ins_total",
    "Sign-in attempts by result (ok, refused, wrong_role, unavailable)",
    ["result"],
)
