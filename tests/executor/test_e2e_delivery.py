"""End to end: ingest → RabbitMQ → executor → a real program running as a real uid."""

from __future__ import annotations

import os
from pathlib import Path

from tests.executor.helpers import EventTap, Homes, Pipeline, message


def read(home: Path, name: str) -> str:
    return (home / name).read_text()


async def test_chain_runs_as_owner_with_exact_env_stdin_and_order(
    pipe: Pipeline, homes: Homes, tap: EventTap
) -> None:
    uid, gid, home = homes.make()
    await pipe.account("Bob@example.org", uid, gid + 5, home, ["probe", "/usr/local/bin/probe2"])
    os.chown(home, uid, gid + 5)
    body = message("chain")
    mid = await pipe.submit("bob@example.org", body, notify="SUCCESS,FAILURE")
    rcpt = await pipe.wait_state(mid)
    assert rcpt["state"] == "delivered", rcpt
    assert rcpt["status"] == "2.0.0"
    assert [p["program"] for p in rcpt["programs"]] == ["probe", "/usr/local/bin/probe2"]
    assert read(home, "order.log") == "probe\nprobe2\n"
    for name in ("probe", "probe2"):
        ids = read(home, f"{name}.id").split()
        assert ids == [str(uid), str(gid + 5), str(uid), str(gid + 5)]  # no supplementary groups
        assert read(home, f"{name}.cwd").strip() == str(home)
        assert sorted(read(home, f"{name}.env").splitlines()) == ["AGENT=mailexec", "TZ=UTC"]
        assert read(home, f"{name}.fds").split() == ["0", "1", "2"]
        stdin = (home / f"{name}.stdin").read_bytes()
        assert stdin == b"Return-Path: <alice@example.net>\nDelivered-To: bob@example.org\n" + body
    ev = await tap.event(mid, "delivered")
    assert ev["recipients"][0]["status"] == "2.0.0"
    assert ev["recipients"][0]["action"] == "delivered"



async def test_large_bodies_held_at_once_stay_within_the_memory_budget(
    pipe: Pipeline, homes: Homes
) -> None:
    """Bodies read from PostgreSQL count against MAILEXEC_EXECUTOR_BODY_MEMORY_BYTES: with
    room for two ~0.9 MiB messages, four of them to a slow program run two at a time (all
    delivered, none refused), and the executor never held more than the budget."""
    import asyncio
    from datetime import datetime, timedelta

    import httpx

    budget = 2 * 1024 * 1024
    pipe.procs["executor"].stop()
    executor = await pipe.astart("executor", {"MAILEXEC_EXECUTOR_BODY_MEMORY_BYTES": str(budget)})
    try:
        uid, gid, home = homes.make()
        address = f"big{uid}@example.org"
        await pipe.account(address, uid, gid, home, ["nap"])  # reads stdin, sleeps 2 s
        big = message("big", body="y" * 900 * 1024 + "\n")
        mids = await asyncio.gather(*(pipe.submit(address, big) for _ in range(4)))
        spans = []
        for mid in mids:
            rcpt = await pipe.wait_state(mid, timeout=60)
            assert rcpt["state"] == "delivered", rcpt
            (run,) = rcpt["programs"]
            start = datetime.fromisoformat(run["started_at"])
            spans.append((start, start + timedelta(milliseconds=run["duration_ms"])))
        overlap = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
        assert overlap == 2, spans  # two fit the budget at once, never more
        async with httpx.AsyncClient() as c:
            text = (await c.get(executor.url + "/metrics", timeout=5)).text
        peak = next(float(line.split()[-1]) for line in text.splitlines()
                    if line.startswith("mailexec_executor_body_bytes_peak "))
        assert len(big) * 2 <= peak <= budget
    finally:
        pipe.procs["executor"].stop()
        pipe.start("executor")
