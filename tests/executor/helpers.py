"""Helpers of the executor's end-to-end tests: real policy, ingest and executor processes.

``Pipeline`` starts the three services (``mailexec serve X``) on free ports against the
run's database and vhost, and talks to them over HTTP like an admin and an MTA would.
``EventTap`` binds its own exclusive queue to the ``events`` exchange (``#``).
Accounts are owned by throwaway uids (64101…) with home directories owned by them
under a world-searchable directory, so the programs' effects can be read back.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import orjson

from tests.conftest import ADMIN_TOKEN, MTA_TOKEN, ServiceProcess, free_port

HERE = Path(__file__).resolve().parent
TPROG_SOURCE = HERE / "tprog.c"
_uids = itertools.count(64101)

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
MTA = {"Authorization": f"Bearer {MTA_TOKEN}"}

EXECUTOR_TEST_ENV = {
    "MAILEXEC_EXECUTOR_RETRY_DELAYS_S": "1,1,2",
    "MAILEXEC_EXECUTOR_HELD_RECHECK_S": "1",
    "MAILEXEC_LOG_LEVEL": "info",
    "MAILEXEC_EXECUTOR_CONCURRENCY": "16",
    "MAILEXEC_EXECUTOR_PREFETCH": "32",
}


def build_tprog(out_dir: Path) -> bytes:
    out = out_dir / "tprog"
    subprocess.run(["cc", "-O2", "-Wall", "-o", str(out), str(TPROG_SOURCE)], check=True)
    return out.read_bytes()


class Homes:
    """Home directories under a 0755 root-owned directory, each owned by its uid (0700)."""

    def __init__(self) -> None:
        # not under /tmp: each run gets a private /tmp, homes there would be invisible to it
        self.base = Path(tempfile.mkdtemp(prefix="mailexec-homes-", dir="/var/tmp"))
        os.chmod(self.base, 0o755)

    def make(self, uid: int | None = None, gid: int | None = None) -> tuple[int, int, Path]:
        uid = next(_uids) if uid is None else uid
        gid = uid if gid is None else gid
        home = self.base / f"u{uid}-{os.urandom(3).hex()}"
        home.mkdir(mode=0o700)
        os.chown(home, uid, gid)
        return uid, gid, home

    def cleanup(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


class Pipeline:
    def __init__(self, mx_env: dict[str, str], log_dir: Path) -> None:
        self.log_dir = log_dir
        env = dict(os.environ)
        env.update(mx_env)
        env.update({
            "MAILEXEC_INGEST_PORT": str(free_port()),
            "MAILEXEC_POLICY_PORT": str(free_port()),
            "MAILEXEC_NOTIFIER_PORT": str(free_port()),
            "MAILEXEC_EXECUTOR_METRICS_PORT": str(free_port()),
        })
        env["MAILEXEC_POLICY_URL"] = f"http://127.0.0.1:{env['MAILEXEC_POLICY_PORT']}"
        self.env = env
        self.procs: dict[str, ServiceProcess] = {}
        self.policy_url = env["MAILEXEC_POLICY_URL"]
        self.ingest_url = f"http://127.0.0.1:{env['MAILEXEC_INGEST_PORT']}"
        self._n = 0
        self.cgroup_roots: list[Path] = []

    def start(self, name: str, extra_env: dict[str, str] | None = None, wait: bool = True,
              key: str | None = None) -> ServiceProcess:
        env = dict(self.env)
        if name == "executor":
            env.update(EXECUTOR_TEST_ENV)
            # Its own cgroup root: a starting executor removes idle executor-* cgroups it
            # finds under its root, including those of executors that are still running.
            root = Path(f"/sys/fs/cgroup/unified/mailexec-test-{os.getpid()}-{self._n + 1}")
            env["MAILEXEC_SANDBOX_CGROUP_ROOT"] = str(root)
            # and its own instance: a start kills the leftovers of dead executors of its
            # instance (never of live ones); tests name their restarts explicitly
            env["MAILEXEC_EXECUTOR_INSTANCE"] = f"test-{os.getpid()}-{self._n + 1}"
            self.cgroup_roots.append(root)
        env.update(extra_env or {})
        self._n += 1
        sp = ServiceProcess(name, env, self.log_dir / f"{key or name}-{self._n}.log")
        sp.start(wait_ready=wait)
        self.procs[key or name] = sp
        return sp

    async def astart(self, name: str, extra_env: dict[str, str] | None = None,
                     key: str | None = None, timeout: float = 30.0) -> ServiceProcess:
        """Like start(), but waits without blocking the loop (a TcpProxy may live in it)."""
        sp = self.start(name, extra_env, wait=False, key=key)
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=1.0) as c:
            while time.monotonic() < deadline:
                assert sp.proc is not None
                if sp.proc.poll() is not None:
                    raise RuntimeError(f"{name} exited: {sp.log_tail()}")
                try:
                    if (await c.get(sp.url + "/readyz")).status_code == 200:
                        return sp
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{name} not ready: {sp.log_tail()}")

    def stop_all(self) -> None:
        for sp in reversed(list(self.procs.values())):
            sp.stop()
        self.remove_cgroups()

    def remove_cgroups(self) -> None:
        """Remove the (empty) run cgroups the executors left, deepest first."""
        for root in self.cgroup_roots:
            for child in sorted(root.glob("**/"), key=lambda p: -len(p.parts)):
                try:
                    child.rmdir()
                except OSError:
                    pass

    # --- policy (admin) ----------------------------------------------------------------

    async def register(self, name: str, content: bytes) -> None:
        async with httpx.AsyncClient(base_url=self.policy_url, headers=ADMIN, timeout=10) as c:
            r = await c.put(f"/v1/programs/{name}", content=content,
                            headers={"Content-Type": "application/octet-stream"})
            assert r.status_code in (200, 201), r.text

    async def program_network(self, name: str, network: str) -> None:
        """PATCH /v1/programs/{name} {"network": ...} as the admin."""
        async with httpx.AsyncClient(base_url=self.policy_url, headers=ADMIN, timeout=10) as c:
            r = await c.patch(f"/v1/programs/{name}", json={"network": network})
            assert r.status_code == 200, r.text

    async def unregister(self, name: str) -> None:
        async with httpx.AsyncClient(base_url=self.policy_url, headers=ADMIN, timeout=10) as c:
            r = await c.delete(f"/v1/programs/{name}")
            assert r.status_code in (200, 204, 404), r.text

    async def programs(self) -> list[str]:
        async with httpx.AsyncClient(base_url=self.policy_url, headers=ADMIN, timeout=10) as c:
            r = await c.get("/v1/programs")
            return [p["name"] for p in r.json()["items"]]

    async def account(
        self, address: str, uid: int, gid: int, home: str | Path, programs: list[str], *,
        enabled: bool = True, shell: str = "/bin/sh",
    ) -> None:
        body = {"owner": {"name": address.split("@")[0][:30], "uid": uid, "gid": gid,
                          "home": str(home), "shell": shell},
                "program_delivery": {"enabled": enabled, "programs": programs},
                "mailbox_delivery": False}
        async with httpx.AsyncClient(base_url=self.policy_url, headers=ADMIN, timeout=10) as c:
            r = await c.put(f"/v1/accounts/{address}", json=body)
            assert r.status_code in (200, 201), r.text

    async def settings(self, **patch: Any) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.policy_url, headers=ADMIN, timeout=10) as c:
            r = await c.patch("/v1/settings", json=patch)
            assert r.status_code == 200, r.text
            return r.json()  # type: ignore[no-any-return]

    # --- ingest (mta) ------------------------------------------------------------------

    async def submit(
        self, to: str | list[str], body: bytes, *, sender: str = "alice@example.net",
        notify: str | None = None, envid: str | None = None,
    ) -> str:
        params: list[tuple[str, str]] = [("from", sender)]
        params += [("to", t) for t in ([to] if isinstance(to, str) else to)]
        if notify:
            params.append(("notify", notify))
        if envid:
            params.append(("envid", envid))
        async with httpx.AsyncClient(base_url=self.ingest_url, headers=MTA, timeout=10) as c:
            r = await c.post("/v1/messages", params=params, content=body,
                             headers={"Content-Type": "message/rfc822"})
            assert r.status_code == 202, r.text
            return str(r.json()["id"])

    async def message(self, mid: str) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.ingest_url, headers=MTA, timeout=10) as c:
            r = await c.get(f"/v1/messages/{mid}")
            assert r.status_code == 200, r.text
            return r.json()  # type: ignore[no-any-return]

    async def wait_state(
        self, mid: str, states: tuple[str, ...] = ("delivered", "bounced"), timeout: float = 20.0,
        rcpt: int = 0,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            msg = await self.message(mid)
            r = msg["recipients"][rcpt]
            if r["state"] in states:
                return r  # type: ignore[no-any-return]
            if time.monotonic() > deadline:
                raise AssertionError(f"recipient still {r['state']} after {timeout}s: {msg}")
            await asyncio.sleep(0.1)


class EventTap:
    """An exclusive queue on ``events`` (#) that collects every event published."""

    def __init__(self, amqp_url: str) -> None:
        self.url = amqp_url
        self.events: list[dict[str, Any]] = []
        self._conn: aio_pika.abc.AbstractRobustConnection | None = None
        self._new = asyncio.Event()

    async def __aenter__(self) -> EventTap:
        self._conn = await aio_pika.connect_robust(self.url)
        ch = await self._conn.channel()
        q = await ch.declare_queue(exclusive=True, auto_delete=True)
        await q.bind("events", routing_key="#")
        self._queue = q

        async def on(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
            async with msg.process():
                ev = orjson.loads(msg.body)
                ev["_routing_key"] = msg.routing_key
                self.events.append(ev)
                self._new.set()

        await q.consume(on)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._conn is not None:
            await self._conn.close()

    async def rebind(self) -> None:
        """Bind again (after a test deleted and re-declared the `events` exchange)."""
        await self._queue.bind("events", routing_key="#")

    def matching(self, mid: str, kind: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("message_id") == mid
                and (kind is None or e["kind"] == kind)]

    async def wait_for(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float = 15.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for ev in self.events:
                if pred(ev):
                    return ev
            left = deadline - time.monotonic()
            if left <= 0:
                kinds = [(e["kind"], e.get("message_id")) for e in self.events[-10:]]
                raise AssertionError(f"no matching event after {timeout}s; last: {kinds}")
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), min(left, 0.5))
            except TimeoutError:
                pass

    async def event(self, mid: str, kind: str, timeout: float = 15.0) -> dict[str, Any]:
        return await self.wait_for(lambda e: e.get("message_id") == mid and e["kind"] == kind,
                                   timeout)


def message(subject: str = "test", body: str = "hello\n", *, crlf: bool = False,
            extra_headers: str = "") -> bytes:
    text = (f"From: alice@example.net\nTo: someone@example.org\nSubject: {subject}\n"
            f"Message-ID: <{os.urandom(6).hex()}@example.net>\n{extra_headers}\n{body}")
    data = text.encode()
    return data.replace(b"\n", b"\r\n") if crlf else data
