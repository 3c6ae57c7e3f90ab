"""RabbitMQ plumbing: a robust (self-reconnecting) connection, confirmed publishing.

``Broker.publish`` returns only once the broker confirmed the message (persistent,
``mandatory=True``); an unroutable message, a nack, a timeout or a lost connection raise
:class:`shared.errors.Unavailable` so callers can answer 503 / retry. Unroutable needs
``on_return_raises=True`` on the channel: without it RabbitMQ returns the message *and*
confirms it, and aio-pika reports success — a job published to a deleted queue would
be "accepted" and gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustConnection,
)
from aio_pika.exceptions import AMQPError, ChannelNotFoundEntity, DeliveryError, PublishError

from shared import topology
from shared.errors import Unavailable

log = logging.getLogger("mailexec.amqp")

PUBLISH_TIMEOUT_S = 10.0
QUEUE_COUNT_TIMEOUT_S = 3.0


class Broker:
    def __init__(self, url: str) -> None:
        self.url = url
        self.connection: AbstractRobustConnection | None = None
        self.channel: AbstractChannel | None = None
        self.exchanges: dict[str, AbstractExchange] = {}

    async def connect(self, *, declare: bool = True, timeout: float = 10.0) -> None:
        """Connect (retrying until ``timeout``), open a confirming channel, declare topology."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                self.connection = await aio_pika.connect_robust(
                    self.url, timeout=5, client_properties={"connection_name": "mailexec"}
                )
                break
            except (TimeoutError, OSError, AMQPError) as exc:
                if asyncio.get_running_loop().time() > deadline:
                    raise Unavailable(
                        f"RabbitMQ unreachable at {redact(self.url)}: {exc}",
                        code="broker_unavailable",
                    ) from exc
                await asyncio.sleep(0.5)
        self.channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        if declare:
            self.exchanges = await topology.declare(self.channel)

    async def new_channel(self, prefetch: int | None = None) -> AbstractChannel:
        assert self.connection is not None
        ch = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        if prefetch:
            await ch.set_qos(prefetch_count=prefetch)
        return ch

    @property
    def ready(self) -> bool:
        return (
            self.connection is not None
            and not self.connection.is_closed
            and self.channel is not None
            and not self.channel.is_closed
        )

    async def exchange(self, name: str) -> AbstractExchange:
        if name not in self.exchanges:
            assert self.channel is not None
            if name == "":
                self.exchanges[name] = self.channel.default_exchange
            else:
                self.exchanges[name] = await self.channel.get_exchange(name, ensure=False)
        return self.exchanges[name]

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes | dict[str, Any],
        *,
        headers: dict[str, Any] | None = None,
        message_id: str | None = None,
        timeout: float = PUBLISH_TIMEOUT_S,
        mandatory: bool = True,
    ) -> None:
        """Publish and wait for the confirm. ``mandatory=False`` is for broadcasts (the
        policy-changed fanout) where no bound queue is normal, not an error."""
        if not self.ready:
            raise Unavailable("RabbitMQ connection is down; retry later", code="broker_unavailable")
        payload = body if isinstance(body, bytes) else orjson.dumps(body)
        msg = aio_pika.Message(
            payload,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers=headers or {},
            message_id=message_id,
        )
        try:
            ex = await self.exchange(exchange)
            await ex.publish(msg, routing_key=routing_key, mandatory=mandatory, timeout=timeout)
        except (DeliveryError, PublishError) as exc:
            raise Unavailable(
                f"RabbitMQ refused the message for {exchange}/{routing_key}: {exc}",
                code="broker_unavailable",
            ) from exc
        except (TimeoutError, AMQPError, OSError, RuntimeError) as exc:
            raise Unavailable(
                f"RabbitMQ publish failed ({type(exc).__name__}); retry later",
                code="broker_unavailable",
            ) from exc

    async def on_policy_changed(
        self, who: str, handle: Callable[[dict[str, Any]], Awaitable[None] | None]
    ) -> None:
        """Call ``handle(body)`` for every ``policy.changed`` broadcast (docs/internals.md).

        The queue is exclusive and auto-deleted, and named by us: a robust channel
        re-declares it after a reconnect, and a server-named (amq.gen-*) queue can't be
        re-declared by name. A body that is not a JSON object arrives as ``{}`` (the
        receiver then forgets everything it cached: the safe reading).
        """
        channel = await self.new_channel(prefetch=16)
        name = f"{who}.policy.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        queue = await channel.declare_queue(name, exclusive=True, auto_delete=True)
        await queue.bind(topology.POLICY_EXCHANGE, routing_key="")

        async def consume(message: AbstractIncomingMessage) -> None:
            async with message.process(requeue=False):
                try:
                    body = orjson.loads(message.body)
                except orjson.JSONDecodeError:
                    body = {}
                result = handle(body if isinstance(body, dict) else {})
                if result is not None:
                    await result

        await queue.consume(consume)

    async def message_counts(
        self, names: Sequence[str], *, timeout: float = QUEUE_COUNT_TIMEOUT_S
    ) -> dict[str, int | None]:
        """Messages ready in each queue (a passive declare: nothing is created or changed).

        A queue that does not exist counts None. Raises :class:`Unavailable` when the
        broker can't be asked (not connected, or no answer within ``timeout``). Uses a
        channel of its own: a passive declare of a missing queue closes its channel, which
        must never be the publishing one.
        """
        if not self.ready or self.connection is None:
            raise Unavailable("not connected to RabbitMQ", code="broker_unavailable")
        connection = self.connection

        async def ask() -> dict[str, int | None]:
            counts: dict[str, int | None] = {}
            channel: AbstractChannel | None = None
            try:
                for name in names:
                    if channel is None or channel.is_closed:
                        channel = await connection.channel(publisher_confirms=False)
                    try:
                        queue = await channel.declare_queue(name, passive=True)
                    except ChannelNotFoundEntity:
                        counts[name] = None
                        continue
                    result = queue.declaration_result
                    counts[name] = int(result.message_count or 0) if result else None
            finally:
                if channel is not None and not channel.is_closed:
                    with contextlib.suppress(Exception):
                        await channel.close()
            return counts

        try:
            return await asyncio.wait_for(ask(), timeout)
        except TimeoutError as exc:
            raise Unavailable(f"RabbitMQ did not answer within {timeout:g} s",
                              code="broker_unavailable") from exc
        except (AMQPError, OSError, RuntimeError) as exc:
            raise Unavailable(f"RabbitMQ could not be asked ({type(exc).__name__}: {exc})",
                              code="broker_unavailable") from exc

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()
        self.connection = None
        self.channel = None
        self.exchanges = {}


CANCEL_TIMEOUT_S = 2.0


async def cancel_consumer(queue: Any, tag: str, timeout: float = CANCEL_TIMEOUT_S) -> None:
    """Stop a consumer at shutdown without ever hanging on it.

    After the connection was lost and restored, basic.cancel on the restored channel can
    wait for a CancelOk that never comes: a graceful stop then hung until it was killed
    (15 s in the tests, ``terminationGracePeriodSeconds`` in Kubernetes). Giving up is
    safe: closing the connection next ends the consumer, and every unacknowledged job
    goes back to its queue.
    """
    try:
        await asyncio.wait_for(queue.cancel(tag), timeout)
    except TimeoutError:
        log.warning("the broker did not confirm the consumer's cancel in time; closing "
                    "the connection ends it", extra={"timeout_s": timeout})
    except (AMQPError, RuntimeError, OSError) as exc:
        log.warning("could not cancel the consumer", extra={"error": str(exc)[:300]})


def redact(url: str) -> str:
    """A URL with its password replaced, for logs and errors."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
