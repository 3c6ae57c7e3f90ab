"""The one policy client (shared/policy_client.py) against a real HTTP server on loopback
that answers what each test says: the guarantees its docstring lists, without policy,
PostgreSQL or RabbitMQ."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import orjson
import pytest

from shared import policy_client
from shared.contract import PolicySettings
from shared.errors import Unavailable
from shared.policy_client import NoticeSettingsReader, PolicyClient, PolicyUnavailable
from shared.settings import Settings

STAMP = "2026-01-01T00:00:00Z"
ACCOUNT = {
    "address": "bob@example.org",
    "owner": {"name": "bob", "uid": 64101, "gid": 64101, "home": "/home/bob", "shell": "/bin/sh"},
    "program_delivery": {"enabled": True, "programs": ["mymail"]},
    "mailbox_delivery": False, "created_at": STAMP, "updated_at": STAMP,
}
PROGRAM = {
    "name": "mymail", "sha256": "ab" * 32, "size": 12, "interpreter": False,
    "registered_by": "admin", "registered_at": STAMP, "updated_at": STAMP, "network": "egress",
}
Reply = tuple[int, bytes]


@dataclass
class FakePolicy:
    """An HTTP/1.1 server answering GETs from ``routes`` (path → status, body); what isn't
    there is a 404. ``gate`` holds every answer while it is clear."""

    routes: dict[str, Reply | Callable[[], Reply]] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                path = line.split()[1].decode()
                while (await reader.readline()) not in (b"\r\n", b""):
                    pass
                self.asked.append(path)
                self.arrived.set()
                await self.gate.wait()
                route = self.routes.get(path, (404, b'{"error": {"code": "not_found"}}'))
                status, body = route() if callable(route) else route
                writer.write(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (status, len(body), body))
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


def doc(data: object) -> Reply:
    return 200, orjson.dumps(data)


@pytest.fixture
async def policy() -> AsyncIterator[FakePolicy]:
    fake = FakePolicy()
    fake.gate.set()
    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    fake.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield fake
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def client(policy: FakePolicy) -> AsyncIterator[PolicyClient]:
    c = PolicyClient(policy.url, "svc", connect_timeout_s=1.0, timeout_s=2.0)
    try:
        yield c
    finally:
        await c.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_answers_are_parsed_with_the_contract_and_cached(
    policy: FakePolicy, client: PolicyClient
) -> None:
    policy.routes["/v1/accounts/bob@example.org"] = doc({**ACCOUNT, "added_later": 1})
    policy.routes["/v1/programs/mymail"] = doc(PROGRAM)
    policy.routes["/v1/settings"] = doc({"suspended": True})
    policy.routes["/v1/status"] = doc({"program_delivery": "enabled", "mode": "secure",
                                       "suspended": False, "programs": 1, "accounts": 1})
    account = await client.account("<Bob@Example.ORG>")  # any spelling: one key
    assert account is not None and account.uid == 64101 and account.programs == ["mymail"]
    assert await client.account("bob@example.org") is account
    program = await client.program("mymail")
    assert program is not None and program.network == "egress"
    settings = await client.settings()
    assert settings.suspended and settings.valid_shells == PolicySettings().valid_shells
    assert (await client.status()).program_delivery == "enabled"
    await client.settings()
    await client.status()
    assert policy.asked == ["/v1/accounts/bob@example.org", "/v1/programs/mymail",
                            "/v1/settings", "/v1/status"]


async def test_404_is_none_everything_else_unavailable(
    policy: FakePolicy, client: PolicyClient
) -> None:
    assert await client.account("nobody@example.org") is None
    assert await client.program("gone") is None
    with pytest.raises(PolicyUnavailable, match="disappeared"):
        await client.program_content("gone")
    for status in (500, 503, 401, 403, 400):
        policy.routes["/v1/settings"] = (status, b"{}")
        with pytest.raises(PolicyUnavailable, match=str(status)):
            await client.settings()
    for body, why in ((b"not json", "settings"), (b'{"program_timeout_s": "60"}', "program_timeout_s")):
        policy.routes["/v1/settings"] = (200, body)
        with pytest.raises(PolicyUnavailable, match=why):
            await client.settings()
    policy.routes["/v1/programs/wide"] = doc({**PROGRAM, "name": "wide", "network": "host"})
    with pytest.raises(PolicyUnavailable, match="network"):
        await client.program("wide")  # never guess wider access than we understand
    assert issubclass(PolicyUnavailable, Unavailable)


async def test_unreachable_is_unavailable() -> None:
    c = PolicyClient(f"http://127.0.0.1:{closed_port()}", "svc", connect_timeout_s=1.0)
    try:
        with pytest.raises(PolicyUnavailable, match="unreachable"):
            await c.account("bob@example.org")
    finally:
        await c.close()


async def test_an_address_no_account_can_have_is_not_asked(
    policy: FakePolicy, client: PolicyClient
) -> None:
    assert await client.account("bö@example.org") is None
    assert await client.account('"a b"@example.org') is None
    assert policy.asked == []


async def test_invalidation_beats_a_slow_answer(policy: FakePolicy, client: PolicyClient) -> None:
    """An answer fetched before a policy.changed is never cached after it."""
    policy.routes["/v1/programs/mymail"] = doc(PROGRAM)
    policy.gate.clear()
    slow = asyncio.create_task(client.program("mymail"))
    await asyncio.wait_for(policy.arrived.wait(), 5)
    client.invalidate("program", "mymail")
    policy.routes["/v1/programs/mymail"] = doc({**PROGRAM, "network": "none"})
    policy.gate.set()
    assert (await slow) is not None
    fresh = await client.program("mymail")
    assert fresh is not None and fresh.network == "none"
    assert len(policy.asked) == 2


async def test_concurrent_misses_share_one_request(policy: FakePolicy, client: PolicyClient) -> None:
    policy.routes["/v1/accounts/bob@example.org"] = doc(ACCOUNT)
    policy.gate.clear()
    waiting = [asyncio.create_task(client.account("bob@example.org")) for _ in range(5)]
    await asyncio.sleep(0.05)
    policy.gate.set()
    assert len({id(await w) for w in waiting}) == 1
    assert policy.asked == ["/v1/accounts/bob@example.org"]


async def test_invalidate_what_the_event_names(policy: FakePolicy, client: PolicyClient) -> None:
    policy.routes["/v1/accounts/bob@example.org"] = doc(ACCOUNT)
    policy.routes["/v1/accounts/eve@example.org"] = doc({**ACCOUNT, "address": "eve@example.org"})
    policy.routes["/v1/settings"] = doc({})
    for _ in range(2):
        await client.account("bob@example.org")
        await client.account("eve@example.org")
        await client.settings()
        client.invalidate("account", "Bob@Example.ORG")  # the event's key, normalised alike
        client.invalidate("token", "x")
    assert policy.asked.count("/v1/accounts/bob@example.org") == 2
    assert policy.asked.count("/v1/accounts/eve@example.org") == 1
    assert policy.asked.count("/v1/settings") == 1
    client.invalidate("settings")
    client.invalidate("account", "bö@example.org")  # not a key: forget everything
    await client.settings()
    await client.account("eve@example.org")
    assert policy.asked.count("/v1/settings") == 2
    assert policy.asked.count("/v1/accounts/eve@example.org") == 2


async def test_the_notifiers_reading_never_fails(
    policy: FakePolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(policy_client, "RETRY_AFTER_FAILURE_S", 0.3)
    settings = Settings(policy_url=policy.url, service_token="svc", reporting_mta="mx.example")
    reader = NoticeSettingsReader(settings)
    try:
        policy.routes["/v1/settings"] = (503, b"{}")
        first = await reader.get()  # SPEC defaults while policy has never answered
        assert (first.include_output, first.postmaster, first.delay_warning_after_s) == (
            True, "postmaster@mx.example", 14400)
        policy.routes["/v1/settings"] = doc({"dsn_include_output": False, "postmaster": "PM@x.org",
                                             "delay_warning_after_s": 60})
        assert await reader.get() is first and policy.asked == ["/v1/settings"]  # quiet a while
        await asyncio.sleep(0.35)
        got = await reader.get()
        assert (got.include_output, got.postmaster, got.delay_warning_after_s) == (
            False, "pm@x.org", 60)
        policy.routes["/v1/settings"] = (503, b"{}")
        reader._client.invalidate()  # as after the TTL
        assert await reader.get() is got  # the last known values, not the defaults
    finally:
        await reader.close()
