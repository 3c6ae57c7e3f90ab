"""`mailexec serve policy` as a real process: health, readiness, a round trip, broker outage."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import free_port
from tests.policy.conftest import SAMPLE_SCRIPT

DASH = Path("/bin/dash").read_bytes()


async def test_serve_policy_process(
    services: Any, clean_db: None, admin_headers: dict[str, str], service_headers: dict[str, str]
) -> None:
    policy = services("policy", extra_env={"MAILEXEC_MAX_PROGRAM_BYTES": "200000"})
    async with httpx.AsyncClient(base_url=policy.url, timeout=10) as c:
        assert (await c.get("/healthz")).json() == {"status": "ok"}
        r = await c.get("/readyz")
        assert r.status_code == 200
        assert r.json()["checks"] == {"database": True, "broker": True}
        assert (await c.get("/openapi.json")).status_code == 200

        r = await c.get("/v1/status", headers=service_headers)
        assert r.json()["program_delivery"] == "disabled"
        r = await c.put("/v1/programs/mymail", content=SAMPLE_SCRIPT,
                        headers={**admin_headers, "Content-Type": "application/octet-stream"})
        assert r.status_code == 201, r.text
        r = await c.put("/v1/programs/hello", content=DASH,
                        headers={**admin_headers, "Content-Type": "application/octet-stream"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "interpreter_refused"
        assert (await c.get("/v1/status", headers=service_headers)).json()["program_delivery"] == "enabled"
        r = await c.put("/v1/programs/big", content=b"\0" * 1_000_000,
                        headers={**admin_headers, "Content-Type": "application/octet-stream"})
        assert r.status_code == 413 and "200000" in r.json()["error"]["message"]
        r = await c.get("/v1/programs/mymail/content", headers=service_headers)
        assert r.content == SAMPLE_SCRIPT
        assert "mailexec_policy_programs 1.0" in (await c.get("/metrics")).text
    policy.stop()
    # a clean stop is 0 (shared.service; plain uvicorn re-raised SIGTERM after shutting down)
    assert policy.proc.returncode == 0, policy.log_tail()
    assert '"level":"error"' not in policy.log_path.read_text(), policy.log_tail()


async def test_starts_without_broker_and_reports_it(
    services: Any, clean_db: None, admin_headers: dict[str, str]
) -> None:
    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    policy = services("policy", extra_env={"MAILEXEC_AMQP_URL": dead}, wait=False)
    async with httpx.AsyncClient(base_url=policy.url, timeout=5) as c:
        r = None
        for _ in range(150):
            try:
                r = await c.get("/healthz")
                break
            except httpx.TransportError:
                await asyncio.sleep(0.1)
        assert r is not None and r.status_code == 200, policy.log_tail()
        r = await c.get("/readyz")
        assert r.status_code == 503
        assert r.json()["checks"] == {"database": True, "broker": False}
        # changes still commit; the broadcast failure is logged
        r = await c.patch("/v1/settings", json={"suspended": True}, headers=admin_headers)
        assert r.status_code == 200, r.text
    policy.stop()
