"""ingest's /metrics with several workers (services/ingest/main.py, shared/metrics.py): a
counter adds up over the workers, whichever of them answers the scrape; the scrape-time
gauges and build_info are there; the supervisor's metrics directory goes with it."""

from __future__ import annotations

import asyncio
import glob
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.mmap_dict import MmapedDict

from services.ingest.main import METRICS_DIR_PREFIX
from tests.conftest import ServiceProcess, free_port
from tests.ingest.conftest import drain_jobs

MSG = b"From: alice@example.net\r\nTo: bob@example.org\r\nSubject: hi\r\n\r\nhello\r\n"
SUBMISSIONS = 12


def sample(text: str, name: str, labels: str = "") -> float | None:
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    return None if match is None else float(match.group(1))


async def _submit(url: str, headers: dict[str, str], i: int) -> int:
    # a client (a connection) per submission: the kernel spreads them over the workers
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=20) as client:
        response = await client.post(
            "/v1/messages", params={"from": "alice@example.net", "to": f"bob{i}@example.org"},
            content=MSG, headers={"content-type": "message/rfc822"})
        return response.status_code


async def _scrape(url: str) -> str:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        return (await client.get("/metrics")).text


async def test_counters_add_up_over_two_workers(
    mx_env: dict[str, str], mta_headers: dict[str, str], jobs_queue: str, tmp_path: Path,
) -> None:
    env = {**os.environ, **mx_env, "MAILEXEC_INGEST_PORT": str(free_port()),
           "MAILEXEC_INGEST_WORKERS": "2"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    ingest = ServiceProcess("ingest", env, tmp_path / "ingest.log").start()
    assert ingest.proc is not None
    dirs = glob.glob(os.path.join(tempfile.gettempdir(),
                                  f"{METRICS_DIR_PREFIX}{ingest.proc.pid}-*"))
    try:
        assert len(dirs) == 1, dirs
        before = sample(await _scrape(ingest.url), "mailexec_messages_accepted_total") or 0.0
        statuses: list[Any] = []
        for batch in range(3):  # several rounds of concurrent connections
            statuses += await asyncio.gather(*(
                _submit(ingest.url, mta_headers, batch * 100 + i)
                for i in range(SUBMISSIONS // 3)))
        assert statuses == [202] * SUBMISSIONS
        for _ in range(6):  # each scrape on a new connection, so either worker may answer
            text = await _scrape(ingest.url)
            assert sample(text, "mailexec_messages_accepted_total") == before + SUBMISSIONS
            assert "mailexec_build_info{" in text and 'service="ingest"' in text
            queued = sample(text, "mailexec_oldest_job_age_seconds", '{state="queued"}')
            assert queued is not None and queued >= 0
            for state in ("running", "suspended", "deferred", "on_hold"):
                assert sample(text, "mailexec_oldest_job_age_seconds",
                              f'{{state="{state}"}}') is not None
        per_process = {  # what each process wrote: the scrape's sum is theirs, not one's
            Path(f).stem: value
            for f in glob.glob(dirs[0] + "/counter_*.db")
            for key, value, *_ in MmapedDict.read_all_values_from_file(f)  # type: ignore[no-untyped-call]
            if "mailexec_messages_accepted_total" in key}
        assert sum(per_process.values()) == before + SUBMISSIONS, per_process
    finally:
        ingest.stop()
        await drain_jobs(jobs_queue, expect=SUBMISSIONS, timeout=5)
    assert not any(os.path.exists(d) for d in dirs), "the supervisor removes its dir"  # noqa: ASYNC240
