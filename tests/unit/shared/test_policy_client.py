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

from services.ingest.recipients import AccountCheck, Answer
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


# --- ingest's reading: what the cache keeps, a 400 invalid_address, short reasons -----------


async def test_keep_account_decides_what_the_cache_keeps(policy: FakePolicy) -> None:
    """A client made with ``keep_account`` asks again for what it didn't keep; by default a
    404 is cached like any answer."""
    policy.routes["/v1/accounts/bob@example.org"] = doc(ACCOUNT)
    off = {**ACCOUNT, "address": "off@example.org",
           "program_delivery": {"enabled": False, "programs": []}}
    policy.routes["/v1/accounts/off@example.org"] = doc(off)
    picky = PolicyClient(policy.url, "svc", connect_timeout_s=1.0,
                         keep_account=lambda a: a is not None and a.program_delivery.enabled)
    default = PolicyClient(policy.url, "svc", connect_timeout_s=1.0)
    try:
        for _ in range(2):
            for address in ("bob@example.org", "off@example.org", "nobody@example.org"):
                await picky.account(address)
        assert policy.asked == ["/v1/accounts/bob@example.org", "/v1/accounts/off@example.org",
                                "/v1/accounts/nobody@example.org", "/v1/accounts/off@example.org",
                                "/v1/accounts/nobody@example.org"]
        bob = picky.cached_account("bob@example.org")
        assert bob is not None and bob.uid == 64101
        assert picky.cached_account("off@example.org") is None
        assert picky.cached_account("nobody@example.org") is None
        picky.invalidate("account", "BOB@example.org")
        assert picky.cached_account("bob@example.org") is None

        policy.asked.clear()
        assert await default.account("nobody@example.org") is None
        assert await default.account("nobody@example.org") is None
        assert policy.asked == ["/v1/accounts/nobody@example.org"]
        assert default.cached_account("nobody@example.org") is None  # cached, but not an account
    finally:
        await picky.close()
        await default.close()


async def test_invalid_address_is_missing_only_when_asked_for(policy: FakePolicy) -> None:
    """A policy of another version refusing the key's grammar: "no such account" for a
    client that says so (ingest), unavailable for the others (the executor defers)."""
    refusal = (400, b'{"error": {"code": "invalid_address", "message": "no"}}')
    policy.routes["/v1/accounts/odd@example.org"] = refusal
    policy.routes["/v1/accounts/bad@example.org"] = (400, b'{"error": {"code": "bad_request"}}')
    lenient = PolicyClient(policy.url, "svc", connect_timeout_s=1.0, invalid_address_is_missing=True)
    strict = PolicyClient(policy.url, "svc", connect_timeout_s=1.0)
    try:
        assert await lenient.account("odd@example.org") is None
        with pytest.raises(PolicyUnavailable, match="400"):
            await lenient.account("bad@example.org")
        with pytest.raises(PolicyUnavailable, match="400"):
            await strict.account("odd@example.org")
        policy.routes["/v1/settings"] = refusal  # accounts only
        with pytest.raises(PolicyUnavailable, match="400"):
            await lenient.settings()
    finally:
        await lenient.close()
        await strict.close()


async def test_unavailable_says_why_in_a_few_words(policy: FakePolicy, client: PolicyClient) -> None:
    policy.routes["/v1/accounts/bob@example.org"] = (503, b"{}")
    with pytest.raises(PolicyUnavailable) as down:
        await client.account("bob@example.org")
    assert down.value.reason == "policy service answered 503"
    assert "/v1/accounts/bob@example.org" in str(down.value)
    policy.routes["/v1/accounts/eve@example.org"] = (200, b"not json")
    with pytest.raises(PolicyUnavailable) as garbled:
        await client.account("eve@example.org")
    assert garbled.value.reason == "policy service sent an unusable account record"
    gone = PolicyClient(f"http://127.0.0.1:{closed_port()}", "svc", connect_timeout_s=1.0)
    try:
        with pytest.raises(PolicyUnavailable) as unreachable:
            await gone.account("bob@example.org")
        assert unreachable.value.reason == "policy service unreachable: ConnectError"
    finally:
        await gone.close()
    assert PolicyUnavailable("plain").reason == "plain"


async def test_ingest_rcpt_check_answers_and_caches_only_acceptance(policy: FakePolicy) -> None:
    """services/ingest/recipients.py on this client (SPEC §2 LMTP): the decision table,
    positive answers cached and dropped on policy.changed, refusals asked again."""
    policy.routes["/v1/accounts/bob@example.org"] = doc(ACCOUNT)
    policy.routes["/v1/accounts/off@example.org"] = doc(
        {**ACCOUNT, "address": "off@example.org", "program_delivery": {"enabled": False, "programs": []}})
    policy.routes["/v1/accounts/odd@example.org"] = (400, b'{"error": {"code": "invalid_address"}}')
    policy.routes["/v1/accounts/tok@example.org"] = (401, b"{}")
    policy.routes["/v1/accounts/junk@example.org"] = (200, b'{"program_delivery": {}}')
    check = AccountCheck(policy.url, "svc")
    try:
        assert check.cached("") is Answer.NO_SUCH_ACCOUNT and await check.check("") is Answer.NO_SUCH_ACCOUNT
        assert check.cached("bob@example.org") is None
        assert await check.check("bob@example.org") is Answer.ACCEPT
        assert check.cached("bob@example.org") is Answer.ACCEPT
        for key, answer, why in (
            ("nobody@example.org", Answer.NO_SUCH_ACCOUNT, ""),
            ("odd@example.org", Answer.NO_SUCH_ACCOUNT, ""),
            ("off@example.org", Answer.NOT_PROGRAM_DELIVERY, ""),
            ("tok@example.org", Answer.POLICY_UNAVAILABLE, "policy service answered 401"),
            ("junk@example.org", Answer.POLICY_UNAVAILABLE,
             "policy service sent an unusable account record"),
        ):
            check.last_error = ""
            for _ in range(2):
                assert await check.check(key) is answer
                assert check.cached(key) is None  # a refusal is never cached
            assert check.last_error == why
            assert policy.asked.count(f"/v1/accounts/{key}") == 2

        for body, forgets in (({"what": "program", "key": "mymail"}, False),
                              ({"what": "token", "key": "1"}, False),
                              ({"what": "settings"}, False),  # an account record doesn't read them
                              ({"what": "account", "key": "eve@example.org"}, False),
                              ({"what": "account", "key": "Bob@Example.ORG"}, True),
                              ({"what": "account", "key": "bö@example.org"}, True),
                              ({"what": "account", "key": 5}, True),
                              ({"what": "something new"}, True),
                              ({}, True)):
            await check.check("bob@example.org")
            check.invalidate(body)
            assert (check.cached("bob@example.org") is None) is forgets, body
    finally:
        await check.close()
    unreachable = AccountCheck(f"http://127.0.0.1:{closed_port()}", "svc")
    try:
        assert await unreachable.check("bob@example.org") is Answer.POLICY_UNAVAILABLE
        assert unreachable.last_error == "policy service unreachable: ConnectError"
    finally:
        await unreachable.close()
