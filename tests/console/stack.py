"""One set of real services (policy, ingest, notifier, console) shared by the tests of a
module of tests/console, and an httpx client that uses the console as a browser would:
no redirects followed, cookies kept, forms read from the HTML."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx

from tests.conftest import ADMIN_TOKEN, ServiceProcess, _truncate, free_port

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PROGRAM_BYTES = b"\x7fELF\x02\x01\x01" + b"\x00" * 57 + b"a harmless filter" * 10
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
_ids = itertools.count(1)


def stack_env(mx_env: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(mx_env)
    env.update({
        "MAILEXEC_INGEST_PORT": str(free_port()),
        "MAILEXEC_POLICY_PORT": str(free_port()),
        "MAILEXEC_NOTIFIER_PORT": str(free_port()),
        "MAILEXEC_EXECUTOR_METRICS_PORT": str(free_port()),
        "MAILEXEC_CONSOLE_PORT": str(free_port()),
        "MAILEXEC_CONSOLE_SECRET": "test-console-secret-" + os.urandom(8).hex(),
        "MAILEXEC_CONSOLE_COOKIE_SECURE": "never",
        "MAILEXEC_LOG_LEVEL": "info",  # the console's sign-in lines are in the checked log
    })
    for svc in ("policy", "ingest", "notifier"):
        env[f"MAILEXEC_{svc.upper()}_URL"] = f"http://127.0.0.1:{env[f'MAILEXEC_{svc.upper()}_PORT']}"
    return env


class Stack:
    def __init__(self, mx_env: dict[str, str], log_dir: Path) -> None:
        self.env = stack_env(mx_env)
        self.log_dir = log_dir
        self.procs: dict[str, ServiceProcess] = {}
        self.tokens: list[str] = []

    def start(self) -> Stack:
        for name in ("policy", "ingest", "notifier", "console"):
            self.procs[name] = ServiceProcess(name, dict(self.env),
                                              self.log_dir / f"{name}.log").start()
        return self

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.stop()

    @property
    def console(self) -> ServiceProcess:
        return self.procs["console"]

    def api(self, service: str) -> httpx.Client:
        return httpx.Client(base_url=self.procs[service].url, headers=ADMIN, timeout=10)

    def program(self, name: str, description: str | None = None) -> None:
        with self.api("policy") as c:
            r = c.put(f"/v1/programs/{name}", content=PROGRAM_BYTES,
                      headers={"Content-Type": "application/octet-stream"})
            assert r.status_code in (200, 201), r.text
            if description:
                r = c.patch(f"/v1/programs/{name}", json={"description": description})
                assert r.status_code == 200, r.text

    def account(self, prefix: str = "user") -> tuple[str, str]:
        """A new account and a user token for it: (address, token)."""
        address = f"{prefix}{next(_ids)}-{os.getpid()}@example.org"
        body = {"owner": {"name": prefix.title(), "uid": 1000, "gid": 1000,
                          "home": "/home/x", "shell": "/bin/sh"},
                "program_delivery": {"enabled": False, "programs": []},
                "mailbox_delivery": True}
        with self.api("policy") as c:
            r = c.put(f"/v1/accounts/{address}", json=body)
            assert r.status_code in (200, 201), r.text
            r = c.post(f"/v1/accounts/{address}/tokens")
            assert r.status_code == 201, r.text
            token = str(r.json()["token"])
        self.tokens.append(token)
        return address, token

    def programs_of(self, address: str) -> dict[str, Any]:
        with self.api("policy") as c:
            r = c.get(f"/v1/accounts/{address}/programs")
            assert r.status_code == 200, r.text
            return dict(r.json())

    def console_log(self) -> str:
        return (self.log_dir / "console.log").read_text(errors="replace")


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]*)"', html)
    assert found, "no CSRF field in the page"
    return unescape(found.group(1))


def hidden_programs(html: str) -> list[str]:
    return [unescape(v) for v in re.findall(r'name="programs" value="([^"]*)"', html)]


class Browser:
    """A console client: cookies kept, redirects not followed, every body remembered."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.http = httpx.Client(base_url=stack.console.url, follow_redirects=False,
                                 timeout=15)
        self.bodies: list[str] = []

    def close(self) -> None:
        self.http.close()

    def get(self, path: str, **kw: Any) -> httpx.Response:
        r = self.http.get(path, **kw)
        self.bodies.append(r.text)
        return r

    def post(self, path: str, fields: list[tuple[str, str]] | dict[str, str]) -> httpx.Response:
        items = list(fields.items()) if isinstance(fields, dict) else fields
        r = self.http.post(path, content=urlencode(items), headers=FORM)
        self.bodies.append(r.text)
        return r

    def sign_in(self, token: str, next_path: str = "/") -> httpx.Response:
        form = self.get("/signin")
        assert form.status_code == 200, form.text
        return self.post("/signin", {"token": token, "csrf": csrf_of(form.text),
                                     "next": next_path})

    def csrf(self, path: str) -> str:
        r = self.get(path)
        assert r.status_code == 200, (r.status_code, r.headers, r.text[:500])
        return csrf_of(r.text)


def module_stack(mx_env: dict[str, str], log_dir: Path) -> Iterator[Stack]:
    """For a module-scoped fixture: empty tables, the four services, stopped at the end."""
    asyncio.run(_truncate())
    stack = Stack(mx_env, log_dir).start()
    try:
        yield stack
    finally:
        stack.stop()
