"""End to end: ingest → RabbitMQ → executor → a real program running as a real uid."""

from __future__ import annotations

import os
from pathlib import Path

from tests.executor.helpers import (  # noqa: F401  (fixtures)
    EventTap,
    Homes,
    Pipeline,
    homes_fixture,
    message,
    pipe_fixture,
    tap_fixture,
    tprog_fixture,
)


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

