"""PostgreSQL or RabbitMQ gone: 503 with Retry-After, nothing stored, recovery by itself.

Each dependency is reached through a TCP proxy the test cuts, so the machine's shared
servers are never stopped.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from sqlalchemy.engine import make_url

from tests.ingest.conftest import drain_jobs
from tests.ingest.test_submit import MSG, RFC822, counts

PARAMS = {"from": "a@example.net", "to": "bob@example.org"}


async def wait_ready(url: str, want: int, timeout: float = 20.0) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=5) as c:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                r = await c.get("/readyz")
                if r.status_code == want:
                    return dict(r.json())
            except httpx.HTTPError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"/readyz never answered {want}")
            await asyncio.sleep(0.1)


async def test_database_down_is_503_and_nothing_is_stored(
    services: Any, proxy_factory: Any, mx_env: dict[str, str], mta_headers: dict[str, str],
    clean_db: None, jobs_queue: str,
) -> None:
    url = make_url(mx_env["MAILEXEC_DATABASE_URL"])
    proxy = proxy_factory(url.port or 5432)
    proxied = url.set(port=proxy.port).render_as_string(hide_password=False)
    ingest = services("ingest", extra_env={"MAILEXEC_DATABASE_URL": proxied})
    async with httpx.AsyncClient(base_url=ingest.url, headers={**mta_headers, **RFC822}) as c:
        assert (await c.post("/v1/messages", params=PARAMS, content=MSG)).status_code == 202
        proxy.cut()
        checks = await wait_ready(ingest.url, 503)
        assert checks["checks"] == {"database": False, "broker": True}
        r = await c.post("/v1/messages", params=PARAMS, content=MSG)
        assert r.status_code == 503, r.text
        assert r.headers["Retry-After"].isdigit()
        assert r.json()["error"]["code"] == "database_unavailable"
        assert await counts() == (1, 1)  # only the message from before the outage
        assert len(await drain_jobs(jobs_queue, expect=1)) == 1
        proxy.restore()
        await wait_ready(ingest.url, 200)
        assert (await c.post("/v1/messages", params=PARAMS, content=MSG)).status_code == 202
        assert await counts() == (2, 2)


async def test_broker_down_is_503_nothing_half_accepted_and_recovers(
    services: Any, proxy_factory: Any, mx_env: dict[str, str], mta_headers: dict[str, str],
    clean_db: None, jobs_queue: str,
) -> None:
    amqp = make_url(mx_env["MAILEXEC_AMQP_URL"])
    proxy = proxy_factory(amqp.port or 5672)
    proxy.cut()  # down before ingest even starts: it must start anyway and say not ready
    proxied = mx_env["MAILEXEC_AMQP_URL"].replace(f":{amqp.port}/", f":{proxy.port}/")
    ingest = services("ingest", extra_env={"MAILEXEC_AMQP_URL": proxied}, wait=False)
    checks = await wait_ready(ingest.url, 503)
    assert checks["checks"]["broker"] is False
    proxy.restore()
    await wait_ready(ingest.url, 200)
    async with httpx.AsyncClient(base_url=ingest.url, headers={**mta_headers, **RFC822}) as c:
        assert (await c.post("/v1/messages", params=PARAMS, content=MSG)).status_code == 202
        assert len(await drain_jobs(jobs_queue, expect=1)) == 1

        proxy.cut()
        await wait_ready(ingest.url, 503)
        r = await c.post("/v1/messages", params=PARAMS, content=MSG,
                         headers={"Idempotency-Key": "k-outage"})
        assert r.status_code == 503, r.text
        assert r.headers["Retry-After"].isdigit()
        assert r.json()["error"]["code"] == "broker_unavailable"
        assert await counts() == (1, 1)  # the refused message was withdrawn

        proxy.restore()
        await wait_ready(ingest.url, 200)  # reconnected by itself
        r = await c.post("/v1/messages", params=PARAMS, content=MSG,
                         headers={"Idempotency-Key": "k-outage"})  # the MTA's retry
        assert r.status_code == 202, r.text
        assert "duplicate" not in r.json()
        assert await counts() == (2, 2)
        jobs = await drain_jobs(jobs_queue, expect=1)
        assert [j["message_id"] for j in jobs] == [r.json()["id"]]


async def test_unroutable_job_is_503_not_accepted(
    ingest: Any, mx_env: dict[str, str], mta_headers: dict[str, str], clean_db: None,
    jobs_queue: str,
) -> None:
    """An operator deleted the `deliveries` queue: RabbitMQ returns the job and still
    confirms it. That must be a 503 with the message withdrawn, not a 202 for a job
    that went nowhere."""
    import aio_pika

    from shared import topology

    conn = await aio_pika.connect(mx_env["MAILEXEC_AMQP_URL"])
    try:
        await (await conn.channel()).queue_delete(topology.DELIVERIES_QUEUE)
        async with httpx.AsyncClient(base_url=ingest.url, headers={**mta_headers, **RFC822}) as c:
            r = await c.post("/v1/messages", params=PARAMS, content=MSG)
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "broker_unavailable"
            assert "refused" in r.json()["error"]["message"]
            assert await counts() == (0, 0)
            await topology.declare(await conn.channel())
            r = await c.post("/v1/messages", params=PARAMS, content=MSG)
            assert r.status_code == 202, r.text
            assert len(await drain_jobs(jobs_queue, expect=1)) == 1
    finally:
        await topology.declare(await conn.channel())
        await conn.close()
