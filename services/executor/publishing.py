"""Confirmed publishes of the executor: events, retries, held jobs, drained held jobs.

Every publish is persistent, ``mandatory=True`` and waits for the broker's confirm
(a timeout or nack raises :class:`shared.errors.Unavailable`); the caller acks the
job it is handling only afterwards.

Retry delays: the n-th retry goes to ``topology.retry_queue_for(n)``; the queue's own
TTL is the delay, unless ``executor_retry_delays_s`` (comma-separated seconds) asks for
shorter ones, which are set as a per-message ``expiration`` (the queue TTL stays the
upper bound). Held jobs likewise use ``executor_held_recheck_s`` when it is below the
held queue's 60 s.
"""

from __future__ import annotations

import logging
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel
from aio_pika.exceptions import AMQPError, DeliveryError, PublishError

from services.executor.metrics import EVENTS_PUBLISHED
from shared import topology
from shared.amqp import Broker
from shared.errors import Unavailable
from shared.schemas import Event, Job
from shared.settings import Settings

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 10.0
INFRA_RETRY_HEADER = "x-mailexec-infra-retries"


class Publisher:
    def __init__(self, broker: Broker, settings: Settings) -> None:
        self.broker = broker
        self.delays = topology.parse_delays(settings.executor_retry_delays_s)
        self.held_recheck_s = settings.executor_held_recheck_s

    @property
    def channel(self) -> AbstractChannel:
        if self.broker.channel is None:
            raise Unavailable("RabbitMQ channel is down", code="broker_unavailable")
        return self.broker.channel

    async def _publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        expiration_s: float | None = None,
        headers: dict[str, Any] | None = None,
        message_id: str | None = None,
    ) -> None:
        if not self.broker.ready:
            raise Unavailable("RabbitMQ connection is down; retry later", code="broker_unavailable")
        msg = aio_pika.Message(
            body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers=headers or {},
            message_id=message_id,
            expiration=expiration_s,
        )
        try:
            ex = self.channel.default_exchange if exchange == "" else await self.broker.exchange(exchange)
            await ex.publish(msg, routing_key=routing_key, mandatory=True, timeout=PUBLISH_TIMEOUT_S)
        except (DeliveryError, PublishError) as exc:
            raise Unavailable(f"RabbitMQ refused {exchange}/{routing_key}: {exc}",
                              code="broker_unavailable") from exc
        except (TimeoutError, AMQPError, OSError, RuntimeError) as exc:
            raise Unavailable(f"RabbitMQ publish failed ({type(exc).__name__})",
                              code="broker_unavailable") from exc

    async def event(self, routing_key: str, event: Event) -> None:
        await self._publish(topology.EVENTS_EXCHANGE, routing_key, event.to_json(),
                            message_id=str(event.event_id))
        EVENTS_PUBLISHED.labels(routing_key).inc()

    def retry_target(self, n: int) -> tuple[str, float | None]:
        """Queue and per-message expiration (None: the queue's TTL) of the n-th retry."""
        queue, delay = topology.retry_queue_for(n)
        wanted = topology.retry_delay_s(n, self.delays)
        return queue, (wanted if wanted < delay else None)

    async def retry(self, job: Job, n: int, *, infra_retries: int | None = None) -> None:
        queue, expiration = self.retry_target(n)
        headers = {INFRA_RETRY_HEADER: infra_retries} if infra_retries is not None else None
        await self._publish("", queue, job.to_json(), expiration_s=expiration, headers=headers,
                            message_id=str(job.job_id))

    async def hold(self, job: Job) -> None:
        expiration = self.held_recheck_s if self.held_recheck_s * 1000 < topology.HELD_RECHECK_MS else None
        await self._publish("", topology.HELD_QUEUE, job.to_json(), expiration_s=expiration,
                            message_id=str(job.job_id))

    async def requeue(self, body: bytes, headers: dict[str, Any] | None) -> None:
        await self._publish(topology.DELIVERIES_EXCHANGE, topology.DELIVERIES_ROUTING_KEY, body,
                            headers=headers)

    async def drain_held(self) -> int:
        """Move every held job back to ``deliveries`` at once (resume). Returns the count."""
        ch = await self.broker.new_channel()
        moved = 0
        try:
            queue = await ch.get_queue(topology.HELD_QUEUE, ensure=False)
            while True:
                msg = await queue.get(no_ack=False, fail=False, timeout=5)
                if msg is None:
                    break
                await self.requeue(msg.body, dict(msg.headers or {}))
                await msg.ack()
                moved += 1
        finally:
            await ch.close()
        return moved
