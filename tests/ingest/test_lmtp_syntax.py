"""The LMTP listener's pure parts, without services or root: command syntax, data
unstuffing, trusted networks, ORCPT, and the RCPT refusal table."""

from __future__ import annotations

import pytest

from services.ingest.envelope import parse_orcpt
from services.ingest.lmtp import (
    is_trusted,
    parse_networks,
    refusal,
    split_params,
    split_path,
    unstuff,
)
from services.ingest.recipients import Answer
from shared.errors import BadRequest


@pytest.mark.parametrize(
    ("arg", "keyword", "address", "params"),
    [
        ("FROM:<a@b.example>", "FROM", "a@b.example", []),
        ("from:<> SIZE=10 BODY=8BITMIME", "FROM", "", ["SIZE=10", "BODY=8BITMIME"]),
        ("FROM: <a@b.example>", "FROM", "a@b.example", []),
        ('TO:<"a>b"@x.example> NOTIFY=NEVER', "TO", '"a>b"@x.example', ["NOTIFY=NEVER"]),
        ('TO:<"a\\"> c"@x.example>', "TO", '"a\\"> c"@x.example', []),
    ],
)
def test_split_path(arg: str, keyword: str, address: str, params: list[str]) -> None:
    assert split_path(arg, keyword) == (address, params)


@pytest.mark.parametrize("arg", ["FROM:a@b", "TO:<a@b>", "FROM:<a@b", "FROM:<a@b>SIZE=1", "FROM"])
def test_split_path_refuses(arg: str) -> None:
    with pytest.raises(ValueError):
        split_path(arg, "FROM")


def test_split_params() -> None:
    assert split_params(["size=10", "SMTPUTF8"]) == {"SIZE": "10", "SMTPUTF8": None}
    with pytest.raises(ValueError):
        split_params(["SIZE=1", "size=2"])
    with pytest.raises(ValueError):
        split_params(["=x"])


@pytest.mark.parametrize(
    ("raw", "body"),
    [
        (b"", b""),
        (b"a\r\nb\r\n", b"a\nb\n"),
        (b"..leading\r\n", b".leading\n"),
        (b"x\r\n..\r\n...\r\n", b"x\n.\n..\n"),
        (b"bare\nlf\r\n", b"bare\nlf\n"),
    ],
)
def test_unstuff(raw: bytes, body: bytes) -> None:
    assert unstuff(raw) == body


def test_trusted_networks() -> None:
    nets = parse_networks("127.0.0.0/8, ::1 10.1.2.3")
    assert is_trusted(("127.5.5.5", 1), nets)
    assert is_trusted(("::ffff:127.0.0.1", 1, 0, 0), nets)  # v4-mapped from a dual-stack socket
    assert is_trusted(("::1", 1, 0, 0), nets)
    assert is_trusted(("10.1.2.3", 1), nets) and not is_trusted(("10.1.2.4", 1), nets)
    assert not is_trusted(None, nets) and not is_trusted(("192.0.2.1", 1), ())
    with pytest.raises(ValueError, match="not a network"):
        parse_networks("127.0.0.0/8,localhost")


@pytest.mark.parametrize("orcpt", ["rfc822;bob@example.org", "rfc822;a+2Bb@x", "utf-8;b\\x{F6}@x"])
def test_orcpt_accepted(orcpt: str) -> None:
    assert parse_orcpt(orcpt) == orcpt


@pytest.mark.parametrize("orcpt", ["bob@example.org", "rfc822;", ";bob@x", "rfc822;a b@x", "rfc822;a=b@x"])
def test_orcpt_refused(orcpt: str) -> None:
    with pytest.raises(BadRequest):
        parse_orcpt(orcpt)


def test_every_refusal_is_mapped_and_policy_trouble_is_never_permanent() -> None:
    table = {a: refusal(a, "bob@example.org", "down") for a in Answer if a is not Answer.ACCEPT}
    assert table[Answer.NO_SUCH_ACCOUNT].startswith("550 5.1.1 ")
    assert table[Answer.NOT_PROGRAM_DELIVERY].startswith("550 5.3.0 ")
    assert table[Answer.POLICY_UNAVAILABLE].startswith("451 4.3.0 ")
    assert len(table) == len(Answer) - 1
