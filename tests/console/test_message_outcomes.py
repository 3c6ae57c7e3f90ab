"""What the user's pages show after a real delivery: each program's outcome, exit status,
duration and output, and the DSN notifier made of the bounce (policy, ingest, executor,
notifier and console processes; the executor's test program under two names)."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from html import unescape
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, _truncate, free_port
from tests.console.stack import Browser
from tests.executor.helpers import Homes, Pipeline, build_tprog


@pytest.fixture(scope="module")
async def pipe(mx_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
               ) -> AsyncIterator[Pipeline]:
    if os.geteuid() != 0:
        pytest.skip("a real delivery needs the executor, which runs as root")
    tprog = build_tprog(tmp_path_factory.mktemp("tprog"))
    await _truncate()
    p = Pipeline(mx_env, tmp_path_factory.mktemp("logs"))
    notifier_port = p.env["MAILEXEC_NOTIFIER_PORT"]
    urls = {"MAILEXEC_INGEST_URL": p.ingest_url,
            "MAILEXEC_NOTIFIER_URL": f"http://127.0.0.1:{notifier_port}",
            # a relay nobody listens on: the DSN is made and waits in the outbox
            "MAILEXEC_SMTP_URL": f"smtp://127.0.0.1:{free_port()}"}
    try:
        p.start("policy")
        p.start("ingest")
        p.start("notifier", urls)
        p.start("executor")
        p.start("console", {**urls, "MAILEXEC_CONSOLE_PORT": str(free_port()),
                            "MAILEXEC_CONSOLE_SECRET": "outcomes-" + os.urandom(8).hex(),
                            "MAILEXEC_CONSOLE_COOKIE_SECURE": "never"})
        await p.settings(mode="secure", suspended=False, dsn_include_output=True)
        for name in ("quiet", "chatty", "exit65"):
            await p.register(name, tprog)
        yield p
    finally:
        p.stop_all()


@pytest.fixture(scope="module")
def homes() -> Any:
    h = Homes()
    yield h
    h.cleanup()


def _text(html: str) -> str:
    return unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)))


async def test_a_bounce_shows_each_program_and_the_dsn(pipe: Pipeline, homes: Homes) -> None:
    uid, gid, home = homes.make()
    address = f"outcome-{uid}@example.org"
    await pipe.account(address, uid, gid, home, ["quiet", "exit65"])
    async with httpx.AsyncClient(base_url=pipe.policy_url, timeout=10,
                                 headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as c:
        r = await c.post(f"/v1/accounts/{address}/tokens")
        assert r.status_code == 201, r.text
        token = r.json()["token"]
    mid = await pipe.submit(address, b"Subject: run them\r\n\r\nhello\r\n",
                            sender="sender@example.net")
    assert (await pipe.wait_state(mid, ("bounced",)))["state"] == "bounced"

    browser = Browser(SimpleNamespace(console=pipe.procs["console"]))  # type: ignore[arg-type]
    try:
        assert browser.sign_in(token).status_code == 303
        text = ""
        for _ in range(100):  # the DSN is made within the notifier's aggregation window
            text = _text(browser.get(f"/account/{address}").text)
            if "bounce to sender@example.net" in text:
                break
            await asyncio.sleep(0.2)
        assert "sender@example.net" in text and "bounced" in text
        assert re.search(r"quiet ?: succeeded, exit status 0, \d+ ms", text), text
        assert re.search(r"exit65 ?: failed: exit 65 \(EX_DATAERR: data format error\), "
                         r"exit status 65, \d+ ms", text), text
        assert re.search(r"bounce to sender@example\.net: \w+", text), text

        detail = browser.get(f"/account/{address}/messages/{mid}")
        assert detail.status_code == 200
        page = _text(detail.text)
        assert f"Delivery to {address}" in page and "State: bounced" in page
        assert "Output of exit65" not in page  # it wrote nothing
        assert "Delivery status notifications" in page and "No DSN was sent" not in page

        # a program that writes output fails the delivery (the executor's rule): the
        # page shows what it wrote, and the reason the executor gave
        await pipe.account(address, uid, gid, home, ["chatty"])
        mid = await pipe.submit(address, b"Subject: chatty\r\n\r\nhello\r\n",
                                sender="second@example.net")
        await pipe.wait_state(mid, ("bounced",))
        text = _text(browser.get(f"/account/{address}").text)
        assert re.search(r"chatty ?: exited 0 but wrote output, exit status 0", text), text
        assert "program chatty exited with status 0 but wrote output" in text
        page = _text(browser.get(f"/account/{address}/messages/{mid}").text)
        assert "Output of chatty (attempt 1) hello" in page  # runs numbered from 1
    finally:
        browser.close()
