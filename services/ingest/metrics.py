"""Prometheus metrics of ingest (SPEC §5: messages accepted, queue health).

Module-level collectors on the default registry, which ``/metrics`` of
``shared.httpapp`` serves.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
    "mailexec_outbox_unpublished", "Recipient jobs stored but not yet confirmed by the broker"
)
RELAY_PUBLISHED = Counter(
    "mailexec_outbox_relayed_total", "Jobs published by the outbox relay (left behind by a failure)"
)

LMTP_CONNECTIONS = Counter(
    "mailexec_lmtp_connections_total",
    "LMTP connections by listener (tcp, unix) and result (accepted, refused: over the limit)",
    ["listener", "result"],
)
LMTP_OPEN = Gauge("mailexec_lmtp_connections_open", "LMTP connections open in this process")
LMTP_BYTES = Counter("mailexec_lmtp_received_bytes_total", "Bytes received on LMTP connections")
LMTP_REPLIES = Counter(
    "mailexec_lmtp_replies_total",
    "LMTP replies that decide a recipient's or client's fate, by stage (auth, mail, rcpt, "
    "data) and reply code; data replies count one per recipient (RFC 2033)",
    ["stage", "code"],
)
