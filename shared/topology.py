"""RabbitMQ names and their idempotent declaration (docs/internals.md, "AMQP topology").

Everything durable; jobs on a quorum queue with a delivery limit that dead-letters
poison jobs; retries through per-delay TTL queues that dead-letter back to
``deliveries`` (no broker plugin needed).

Every queue a job passes through is a quorum queue with at-least-once dead-lettering,
the retry and held queues included: a classic queue dead-letters at most once, and a
`make chaos` run showed what that means — jobs deferred just before a RabbitMQ restart
expired while the broker was starting, were dead-lettered towards a `deliveries` queue
that had no leader yet, and were dropped (16 recipients left `deferred` for good).
"""

from __future__ import annotations

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange

DELIVERIES_EXCHANGE = "deliveries"
DELIVERIES_QUEUE = "deliveries"
DELIVERIES_ROUTING_KEY = "deliveries"
DELIVERIES_DLX = "deliveries.dlx"
DELIVERIES_DEAD = "deliveries.dead"
HELD_QUEUE = "deliveries.held"
HELD_RECHECK_MS = 60_000
DELIVERY_LIMIT = 5

# (queue name, delay in seconds); the n-th retry of a job uses RETRY_LADDER[min(n, len-1)]
RETRY_LADDER: tuple[tuple[str, int], ...] = (
    ("deliveries.retry.5s", 5),
    ("deliveries.retry.30s", 30),
    ("deliveries.retry.2m", 120),
    ("deliveries.retry.10m", 600),
    ("deliveries.retry.30m", 1800),
    ("deliveries.retry.1h", 3600),
)

EVENTS_EXCHANGE = "events"
EVENTS_DLX = "events.dlx"
NOTIFIER_QUEUE = "notifier.events"
NOTIFIER_DEAD = "notifier.dead"

POLICY_EXCHANGE = "policy.changed"

# The queues an operator watches (ingest's GET /v1/status): jobs waiting, retrying, held
# while suspended, dead; events waiting for the notifier, dead events.
MONITORED_QUEUES: tuple[str, ...] = (
    DELIVERIES_QUEUE,
    *(name for name, _ in RETRY_LADDER),
    HELD_QUEUE,
    DELIVERIES_DEAD,
    NOTIFIER_QUEUE,
    NOTIFIER_DEAD,
)

# Quorum queues dead-letter at-most-once by default: a poison job could vanish on the way
# to its dead-letter queue. At-least-once dead-lettering (RabbitMQ >= 3.10) needs the
# reject-publish overflow mode.
AT_LEAST_ONCE_DEAD_LETTERING = {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}


def retry_queue_for(attempt: int) -> tuple[str, int]:
    """The retry queue (and its delay) for a job that has been deferred ``attempt`` times."""
    return RETRY_LADDER[min(max(attempt, 1), len(RETRY_LADDER)) - 1]


def parse_delays(text: str) -> tuple[float, ...]:
    """``MAILEXEC_EXECUTOR_RETRY_DELAYS_S`` ("1,1,2"): seconds per retry step."""
    return tuple(float(x) for x in text.replace(" ", "").split(",") if x)


def retry_delay_s(attempt: int, delays: tuple[float, ...] = ()) -> float:
    """How long the ``attempt``-th retry waits: the ladder queue's TTL, or the shorter
    per-message expiration ``delays`` asks for (``parse_delays``)."""
    _, delay = retry_queue_for(attempt)
    if delays:
        wanted = delays[min(max(attempt, 1), len(delays)) - 1]
        if wanted < delay:
            return wanted
    return float(delay)


async def declare(channel: AbstractChannel) -> dict[str, AbstractExchange]:
    """Declare the whole topology; safe to call from every process at start."""
    deliveries = await channel.declare_exchange(
        DELIVERIES_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
    )
    dlx = await channel.declare_exchange(DELIVERIES_DLX, aio_pika.ExchangeType.FANOUT, durable=True)
    events = await channel.declare_exchange(EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    events_dlx = await channel.declare_exchange(EVENTS_DLX, aio_pika.ExchangeType.FANOUT, durable=True)
    policy = await channel.declare_exchange(POLICY_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True)

    q = await channel.declare_queue(
        DELIVERIES_QUEUE,
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": DELIVERY_LIMIT,
            "x-dead-letter-exchange": DELIVERIES_DLX,
            **AT_LEAST_ONCE_DEAD_LETTERING,
        },
    )
    await q.bind(deliveries, DELIVERIES_ROUTING_KEY)
    dead = await channel.declare_queue(
        DELIVERIES_DEAD, durable=True, arguments={"x-queue-type": "quorum"}
    )
    await dead.bind(dlx, "")
    for name, ttl_ms in [*((n, d * 1000) for n, d in RETRY_LADDER), (HELD_QUEUE, HELD_RECHECK_MS)]:
        await channel.declare_queue(
            name,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-message-ttl": ttl_ms,
                "x-dead-letter-exchange": DELIVERIES_EXCHANGE,
                "x-dead-letter-routing-key": DELIVERIES_ROUTING_KEY,
                **AT_LEAST_ONCE_DEAD_LETTERING,
            },
        )
    nq = await channel.declare_queue(
        NOTIFIER_QUEUE,
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": DELIVERY_LIMIT,
            "x-dead-letter-exchange": EVENTS_DLX,
            **AT_LEAST_ONCE_DEAD_LETTERING,
        },
    )
    await nq.bind(events, "#")
    ndead = await channel.declare_queue(
        NOTIFIER_DEAD, durable=True, arguments={"x-queue-type": "quorum"}
    )
    await ndead.bind(events_dlx, "")
    return {
        DELIVERIES_EXCHANGE: deliveries,
        DELIVERIES_DLX: dlx,
        EVENTS_EXCHANGE: events,
        POLICY_EXCHANGE: policy,
    }
