"""Prometheus metrics of the policy service."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

CHANGES = Counter(
    "mailexec_policy_changes_total", "Committed policy changes", ["what", "action"]
)
PROGRAMS = Gauge("mailexec_policy_programs", "Trusted programs registered")
INTERPRETER_REFUSALS = Counter(
    "mailexec_policy_interpreter_refusals_total", "Uploads refused as command interpreters"
)
INTERPRETERS_ALLOWED = Counter(
    "mailexec_policy_interpreters_allowed_total", "Interpreters registered with allow_interpreter"
)
EVENTS = Counter(
    "mailexec_policy_events_total", "policy.changed events published", ["result"]
)
