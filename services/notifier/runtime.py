"""The notifier's moving parts in one event loop: the event consumer, the sender and the
retention purge.

``start`` returns at once; the broker connection is (re)established in the background,
so the process comes up and answers ``/readyz`` (503 until connected) even while
RabbitMQ is down, and aio-pika's robust connection restores the consumer after a
broker restart. The database is reached per operation; while it is down, flushes and
sends back off and retry, and events stay unacked.
"""

from __future__ import annotations

import asyncio
import logging

from aio_pika.abc import AbstractChannel, AbstractQueue
from aio_pika.exceptions import AMQPError

from services.notifier.consumer import PREFETCH, EventConsumer
from services.notifier.retention import Purger
from services.notifier.smtp import SmtpTarget, parse_smtp_url
from services.notifier.smtp_outbox import Sender
from shared import topology
from shared.amqp import Broker, cancel_consumer, redact
from shared.db import ping
from shared.errors import Unavailable
from shared.policy_client import NoticeSettingsReader
from shared.settings import Settings

log = logging.getLogger("mailexec.notifier")


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.target: SmtpTarget = parse_smtp_url(
            settings.smtp_url, default_timeout=settings.notifier_smtp_timeout_s
        )
        self.policy = NoticeSettingsReader(settings)
        self.sender = Sender(settings, self.policy, self.target)
        self.consumer = EventConsumer(settings, self.policy, on_stored=self.sender.wake)
        self.retention = Purger(settings, self.policy)
        self.broker: Broker | None = None
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._connect_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.sender.start()
        self.retention.start()
        self._connect_task = asyncio.create_task(self._connect())
        log.info(
            "notifier started",
            extra={"smtp": self.target.describe(), "amqp": redact(self.settings.amqp_url)},
        )

    async def _connect(self) -> None:
        delay = 1.0
        while True:
            broker = Broker(self.settings.amqp_url)
            try:
                await broker.connect(timeout=5.0)
                channel = await broker.new_channel(prefetch=PREFETCH)
                queue = await channel.get_queue(topology.NOTIFIER_QUEUE)
                await broker.on_policy_changed(
                    "notifier", lambda body: self.policy.invalidate(body.get("what"),
                                                                    body.get("key")))
                self._consumer_tag = await queue.consume(self.consumer.on_message)
            except (Unavailable, AMQPError, OSError, TimeoutError) as exc:
                log.warning(
                    "cannot consume events yet; retrying",
                    extra={"error": f"{type(exc).__name__}: {exc}"[:300], "retry_in_s": delay},
                )
                await broker.close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            self.broker, self._channel, self._queue = broker, channel, queue
            log.info("consuming events", extra={"queue": topology.NOTIFIER_QUEUE, "prefetch": PREFETCH})
            return

    async def ready(self) -> dict[str, bool]:
        broker_ok = (
            self.broker is not None
            and self.broker.ready
            and self._channel is not None
            and not self._channel.is_closed
        )
        return {"database": await ping(), "broker": broker_ok}

    async def stop(self) -> None:
        """Stop taking events, store what is buffered (then ack it), finish sends, close."""
        if self._connect_task is not None and not self._connect_task.done():
            self._connect_task.cancel()
        if self._queue is not None and self._consumer_tag is not None:
            await cancel_consumer(self._queue, self._consumer_tag)
        try:
            await asyncio.wait_for(self.consumer.aggregator.flush_all(), timeout=10.0)
        except TimeoutError:
            self.consumer.aggregator.cancel()
        try:
            await asyncio.wait_for(self.consumer.flush_notices(), timeout=10.0)
        except TimeoutError:
            self.consumer.cancel_notices()
        await self.sender.stop()
        await self.retention.stop()
        if self.broker is not None:
            await self.broker.close()
        self.broker = None
        await self.policy.close()
        log.info("notifier stopped")
