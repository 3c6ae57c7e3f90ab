"""The bad-token limiter's per-address table stays bounded (shared.auth).

An attacker with many source addresses (an IPv6 /64 has plenty) must not be able to
grow the table without end: addresses whose failures left the window are forgotten,
and the table never holds more than ``BAD_TOKEN_MAX_ADDRESSES`` addresses; the limit
itself still works for the address that keeps guessing.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared import auth
from shared.errors import TooManyRequests, Unauthorized


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    c = Clock()

    class FakeTime:
        monotonic = staticmethod(c.monotonic)

    monkeypatch.setattr(auth, "time", FakeTime)
    auth.reset_rate_limit()
    yield c
    auth.reset_rate_limit()


async def _guess(client: str) -> None:
    with pytest.raises((Unauthorized, TooManyRequests)):
        await auth.authenticate_token("not-a-token-" + client, client)


def _fail(client: str) -> None:
    auth._check_rate(client)
    auth._note_failure(client)


def test_table_shrinks_back_after_many_addresses(clock: Clock) -> None:
    for i in range(5000):
        _fail(f"2001:db8::{i:x}")
    assert auth.bad_token_addresses() == 5000
    clock.now += auth.BAD_TOKEN_WINDOW_S + 1
    _fail("192.0.2.1")
    assert auth.bad_token_addresses() == 1


def test_table_is_bounded_inside_the_window(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "BAD_TOKEN_MAX_ADDRESSES", 100)
    for i in range(1000):
        clock.now += 0.001
        _fail(f"2001:db8::{i:x}")
    assert auth.bad_token_addresses() == 100


def test_the_limit_still_holds_for_the_guessing_address(clock: Clock) -> None:
    for i in range(auth.BAD_TOKEN_LIMIT):
        _fail("198.51.100.7")
        _fail(f"2001:db8::{i:x}")  # other addresses failing meanwhile change nothing
    with pytest.raises(TooManyRequests):
        auth._check_rate("198.51.100.7")
    clock.now += auth.BAD_TOKEN_WINDOW_S + 1
    auth._check_rate("198.51.100.7")  # the window passed: allowed again, entry forgotten
    assert "198.51.100.7" not in auth._bad


async def test_failures_through_authenticate_are_pruned(
    clock: Clock, mx_env: dict[str, str]
) -> None:
    """The same, through the real entry point (a DB lookup per unknown token)."""
    for i in range(50):
        await _guess(f"203.0.113.{i}")
    assert auth.bad_token_addresses() == 50
    clock.now += auth.BAD_TOKEN_WINDOW_S + 1
    await _guess("203.0.113.200")
    assert auth.bad_token_addresses() == 1
