"""Envelope and address validation (pure functions; no services needed)."""

from __future__ import annotations

import pytest

from services.ingest.envelope import parse_envelope
from shared.addresses import AddressError, normalize_account, parse_mailbox, parse_recipient
from shared.errors import BadRequest


@pytest.mark.parametrize(
    "raw, canonical",
    [
        ("bob@example.org", "bob@example.org"),
        ("<Bob@Example.ORG>", "Bob@example.org"),
        ("", ""),
        ("<>", ""),
        ('"bob"@example.org', "bob@example.org"),
        ('"john smith"@example.org', '"john smith"@example.org'),
        ('"a\\"b"@example.org', '"a\\"b"@example.org'),
        ('"x@y"@example.org', '"x@y"@example.org'),
        ("user+tag@example.org", "user+tag@example.org"),
        ("a@[192.0.2.1]", "a@[192.0.2.1]"),
        ("a@[IPv6:2001:DB8::1]", "a@[IPv6:2001:db8::1]"),
        ("jörg@bücher.example", "jörg@bücher.example"),
        ("x" * 64 + "@example.org", "x" * 64 + "@example.org"),
    ],
)
def test_valid_addresses(raw: str, canonical: str) -> None:
    assert parse_mailbox(raw) == canonical


@pytest.mark.parametrize(
    "raw, why",
    [
        ("bob", "missing '@domain'"),
        ("bob@", "missing domain"),
        ("@example.org", "empty local part"),
        ("b ob@example.org", "spaces"),
        ("bob@example.org\r\nBcc: x@y.z", "control"),
        ("bob\x00@example.org", "control"),
        ("x" * 65 + "@example.org", "64 octets"),
        ("a@" + ".".join(["b" * 60] * 5) + ".org", "254 octets"),
        ("a..b@example.org", "dot"),
        ("bob@exa_mple.org", "domain"),
        ("bob@-example.org", "domain"),
        ("bob@example..org", "empty label"),
        ('"unterminated@example.org', "unterminated"),
        ("a@[300.1.1.1]", "address literal"),
        ("@relay:bob@example.org", "source routes"),
    ],
)
def test_invalid_addresses(raw: str, why: str) -> None:
    with pytest.raises(AddressError, match=why) as info:
        parse_mailbox(raw)
    assert isinstance(info.value, ValueError)


def test_recipient_must_not_be_empty_and_account_is_lower_case() -> None:
    with pytest.raises(AddressError, match="null sender"):
        parse_recipient("<>")
    assert normalize_account("<Bob@Example.ORG>") == "bob@example.org"


def test_envelope_defaults_and_collapse() -> None:
    env = parse_envelope("", ["Bob@x.org", "bob@X.ORG", "c@x.org"])
    assert env.sender == "" and env.notify == ("FAILURE", "DELAY") and env.ret is None
    assert [(r.address, r.account) for r in env.recipients] == [
        ("Bob@x.org", "bob@x.org"), ("c@x.org", "c@x.org")]


@pytest.mark.parametrize(
    "notify, result",
    [("never", ("NEVER",)), ("DELAY,SUCCESS", ("SUCCESS", "DELAY")), ("failure", ("FAILURE",))],
)
def test_notify_canonical(notify: str, result: tuple[str, ...]) -> None:
    assert parse_envelope("a@b.c", ["d@e.f"], notify=notify).notify == result


@pytest.mark.parametrize("envid", ["ok", "a+2Bb", "x" * 100])
def test_envid_xtext_ok(envid: str) -> None:
    assert parse_envelope("a@b.c", ["d@e.f"], envid=envid).envid == envid


@pytest.mark.parametrize("envid", ["a b", "a=b", "a+2b", "a+", "x" * 101, "é"])
def test_envid_not_xtext(envid: str) -> None:
    with pytest.raises(BadRequest):
        parse_envelope("a@b.c", ["d@e.f"], envid=envid)
