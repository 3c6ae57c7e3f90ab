"""The RabbitMQ topology as declared by every service (shared/topology.py)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid

import aio_pika
import pytest

from shared import topology


def _queues(vhost: str) -> dict[str, dict[str, object]]:
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "type", "arguments",
         "--formatter", "json"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    return {q["name"]: q for q in json.loads(out.stdout)}


@pytest.fixture
async def channel(mx_env: dict[str, str]):  # type: ignore[no-untyped-def]
    conn = await aio_pika.connect(mx_env["MAILEXEC_AMQP_URL"])
    ch = await conn.channel(publisher_confirms=True, on_return_raises=True)
    await topology.declare(ch)
    yield ch
    await conn.close()


async def test_every_queue_a_job_passes_through_survives_a_broker_restart_on_its_way(
    channel: aio_pika.abc.AbstractChannel, mx_env: dict[str, str]
) -> None:
    """Quorum queues with at-least-once dead-lettering, retry and held queues included: a
    classic queue dead-letters at most once, so a job expiring while the broker starts
    could be dropped on its way back to `deliveries` (seen in `make chaos`)."""
    vhost = mx_env["MAILEXEC_AMQP_URL"].rsplit("/", 1)[1]
    queues = _queues(vhost)
    names = [topology.DELIVERIES_QUEUE, topology.HELD_QUEUE, topology.DELIVERIES_DEAD,
             topology.NOTIFIER_QUEUE, topology.NOTIFIER_DEAD,
             *(name for name, _ in topology.RETRY_LADDER)]
    for name in names:
        q = queues[name]
        assert q["type"] == "quorum", (name, q)
        raw = q["arguments"]  # [[name, type, value], ...]
        assert isinstance(raw, list)
        args = {name: value for name, _, value in raw}
        if "x-dead-letter-exchange" in args:
            assert args.get("x-dead-letter-strategy") == "at-least-once", (name, args)
            assert args.get("x-overflow") == "reject-publish", (name, args)


async def test_a_retry_copy_comes_back_to_deliveries_when_it_expires(
    channel: aio_pika.abc.AbstractChannel,
) -> None:
    marker = uuid.uuid4().hex
    queue, _ = topology.retry_queue_for(1)
    await channel.default_exchange.publish(
        aio_pika.Message(marker.encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                         expiration=0.2),
        routing_key=queue, mandatory=True)
    deliveries = await channel.get_queue(topology.DELIVERIES_QUEUE, ensure=False)
    for _ in range(100):
        msg = await deliveries.get(no_ack=False, fail=False)
        if msg is not None:
            if msg.body == marker.encode():
                deaths = msg.headers.get("x-death")
                assert isinstance(deaths, list) and deaths[0]["reason"] in ("expired", b"expired")
                await msg.ack()
                return
            await msg.nack(requeue=True)  # someone else's job: leave it
        await asyncio.sleep(0.05)
    raise AssertionError("the expired retry copy never reached deliveries")
