"""Fixtures of the console's browser tests: Debian's chromium driven by Playwright (sync
API) against one real pipeline (policy, ingest, notifier, executor, console) that every
browser test of this package shares — starting five services costs tens of seconds.

Playwright cannot download a browser here: the tests use ``/usr/bin/chromium`` (Debian's
``chromium``), installed with apt-get when it is missing, or skip saying why.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from tests.conftest import _truncate
from tests.console.browser.harness import DESKTOP, Account, ConsoleStack, sign_in
from tests.executor.helpers import build_tprog

CHROMIUM = Path("/usr/bin/chromium")
# Queues that may keep jobs or events of ours after the services stopped.
QUEUES = ("deliveries", "deliveries.held", "deliveries.dead", "notifier.events", "notifier.dead")


async def purge_queues(amqp_url: str) -> None:
    """Leave no job or event of ours for a later module's executor or notifier."""
    conn = await aio_pika.connect(amqp_url)
    try:
        for name in QUEUES:
            ch = await conn.channel()
            try:
                await (await ch.get_queue(name, ensure=True)).purge()
            except aio_pika.exceptions.ChannelClosed:
                pass  # nobody declared it
            finally:
                if not ch.is_closed:
                    await ch.close()
    finally:
        await conn.close()


def _say(text: str) -> None:
    """Shown even while pytest captures output: installing a browser takes a while."""
    print(f"\n[browser tests] {text}", file=sys.__stderr__, flush=True)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed here if it is missing (root and apt-get needed)."""
    if CHROMIUM.exists():
        return str(CHROMIUM)
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"{CHROMIUM} is missing and this run cannot install it "
                    "(needs root and apt-get: apt-get install chromium)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _say("installing Debian's chromium (apt-get install -y chromium) for the console's "
         "browser tests")
    out = ""
    for cmd in (["apt-get", "install", "-y", "-qq", "chromium"],
                ["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "chromium"]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
        out = (r.stdout + r.stderr)[-1500:]
        if CHROMIUM.exists():
            break
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing and apt-get could not install it:\n{out}")
    _say(f"installed {CHROMIUM}")
    return str(CHROMIUM)


def in_thread(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` to its end in a thread of its own: Playwright's sync API marks this
    thread's asyncio loop as running between its calls, so no fixture of this package may
    be async (pytest-asyncio could not run it) and asyncio.run can't be used here."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coro).result()


@pytest.fixture(scope="package")
def stack(mx_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[ConsoleStack]:
    """The five services, started once for every browser test, with clean tables."""
    if os.geteuid() != 0:
        pytest.skip("the browser tests run the executor, which runs programs as account "
                    "uids: they need root")
    in_thread(_truncate())
    program = build_tprog(tmp_path_factory.mktemp("console-tprog"))
    s = ConsoleStack(mx_env, tmp_path_factory.mktemp("console-browser-logs"))
    try:
        s.start(program)
        yield s
    finally:
        s.stop()
        in_thread(purge_queues(mx_env["MAILEXEC_AMQP_URL"]))


@pytest.fixture(scope="package")
def browser(chromium: str) -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser profile (no cookies) with a 1280 px wide window."""
    ctx = browser.new_context(viewport=DESKTOP)
    ctx.set_default_timeout(10_000)
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


@pytest.fixture
def base(stack: ConsoleStack) -> str:
    return stack.console_url


@pytest.fixture
def admin_page(page: Page, stack: ConsoleStack) -> Page:
    """A page signed in with the admin token."""
    sign_in(page, stack.console_url, stack.pipe.env["MAILEXEC_ADMIN_TOKEN"])
    return page


@pytest.fixture
def account(stack: ConsoleStack) -> Account:
    """An account of its own for the test (program delivery off, no programs)."""
    return stack.account("user")
