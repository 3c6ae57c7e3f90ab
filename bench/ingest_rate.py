"""Ingest alone: how many 1 KiB messages per second does `POST /v1/messages` accept?

Run against a running ingest (executors stopped, so the queue only grows):

    MAILEXEC_INGEST_TOKEN=... .venv/bin/python bench/ingest_rate.py \
        --url http://127.0.0.1:8025 -n 20000 -c 64 [--procs 2]

Each client process keeps ``-c`` requests in flight over keep-alive connections
(httpx). ``--procs`` splits the load over several client processes so the client is
not the bottleneck on a small machine. Prints accepted msgs/s and latency percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import time

import httpx

BODY = (
    b"From: alice@example.net\r\nTo: bob@example.org\r\nSubject: bench\r\n\r\n"
    + b"x" * 958
    + b"\r\n"
)
assert 1000 <= len(BODY) <= 1100


async def _client(url: str, token: str, n: int, concurrency: int) -> tuple[int, int, list[float]]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "message/rfc822"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    ok = bad = 0
    latencies: list[float] = []
    counter = iter(range(n))
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=30) as client:

        async def worker() -> None:
            nonlocal ok, bad
            for i in counter:
                t0 = time.perf_counter()
                r = await client.post(
                    "/v1/messages",
                    params={"from": "alice@example.net", "to": f"user{i % 100}@example.org"},
                    content=BODY,
                )
                latencies.append(time.perf_counter() - t0)
                if r.status_code == 202:
                    ok += 1
                else:
                    bad += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok, bad, latencies


def _proc(args: tuple[str, str, int, int]) -> tuple[int, int, list[float]]:
    return asyncio.run(_client(*args))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--url", default=os.environ.get("INGEST_URL", "http://127.0.0.1:8025"))
    ap.add_argument("--token", default=os.environ.get("MAILEXEC_INGEST_TOKEN", ""))
    ap.add_argument("-n", type=int, default=20000, help="messages in total")
    ap.add_argument("-c", type=int, default=64, help="requests in flight (in total)")
    ap.add_argument("--procs", type=int, default=1, help="client processes")
    a = ap.parse_args()
    per = a.n // a.procs
    conc = max(1, a.c // a.procs)
    # warm-up: connections, prepared statements, JIT-free but cache-warm
    _proc((a.url, a.token, min(500, per), conc))
    t0 = time.perf_counter()
    if a.procs == 1:
        results = [_proc((a.url, a.token, per, conc))]
    else:
        with mp.get_context("spawn").Pool(a.procs) as pool:
            results = pool.map(_proc, [(a.url, a.token, per, conc)] * a.procs)
    elapsed = time.perf_counter() - t0
    ok = sum(r[0] for r in results)
    bad = sum(r[1] for r in results)
    lat = sorted(x for r in results for x in r[2])
    q = statistics.quantiles(lat, n=100) if len(lat) > 100 else [0.0] * 99
    print(
        f"accepted {ok} ({bad} not 202) in {elapsed:.2f}s: {ok / elapsed:.0f} msgs/s; "
        f"latency p50 {q[49] * 1000:.1f} ms, p95 {q[94] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms "
        f"(concurrency {a.c}, {a.procs} client process(es), body {len(BODY)} bytes)"
    )


if __name__ == "__main__":
    main()
