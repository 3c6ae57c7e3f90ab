"""One address grammar for accounts (shared.addresses.normalize_account), used alike by
ingest (HTTP and LMTP recipients), policy (every ``{address}``, ``postmaster``) and the
executor's lookups.

The property: whatever text an MTA gives ingest as a recipient, ingest queues it under
an account key policy would accept for that same text, or ingest and policy both refuse
it. So no message is queued for an address no account can ever have (before, a UTF-8,
quoted or ``/`` recipient was queued and deferred for days, as policy answered 400).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from services.ingest.envelope import account_filter, make_recipient, parse_envelope
from services.ingest.recipients import AccountCheck, Answer
from services.policy.errors import InvalidAddress
from services.policy.validation import account_key
from shared.addresses import (
    MAX_ADDRESS_OCTETS,
    MAX_LOCAL_OCTETS,
    AddressError,
    normalize_account,
    parse_recipient,
)
from shared.contract import AccountAddress
from shared.errors import BadRequest

ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+/=?^_`{|}~-"
atom = st.text(st.sampled_from(ATEXT) | st.characters(min_codepoint=0xA0, max_codepoint=0x2FFF,
                                                     categories=("L", "N")),
               min_size=1, max_size=12)
ascii_atom = st.text(st.sampled_from(ATEXT.replace("/", "")), min_size=1, max_size=12)
dot_atom = st.lists(st.one_of(ascii_atom, atom), min_size=1, max_size=4).map(".".join)
quoted = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1,
                 max_size=20).map(lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"')
label = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,10}[A-Za-z0-9])?", fullmatch=True)
domain = st.one_of(
    st.lists(label, min_size=1, max_size=4).map(".".join),
    st.lists(label, min_size=1, max_size=3).map(lambda ls: ".".join(ls) + "."),
    st.ip_addresses(v=4).map(lambda ip: f"[{ip}]"),
    st.ip_addresses(v=6).map(lambda ip: f"[IPv6:{ip}]"),
    st.ip_addresses(v=6).map(lambda ip: f"[ipv6:{str(ip).upper()}]"),
)
well_formed = st.builds(lambda lp, d: f"{lp}@{d}", st.one_of(dot_atom, quoted), domain)
recipient_text = st.one_of(
    well_formed,
    well_formed.map(lambda a: f"<{a}>"),
    st.text(max_size=80),
    st.builds(lambda a, b: a + "@" + b, st.text(max_size=30), st.text(max_size=30)),
    st.sampled_from([
        "bob@example.org", "Bob@Example.ORG", "<bob@example.org>", '"bob"@example.org',
        "bö@example.org", "bob@bücher.example", '"a b"@example.org', '"a>b"@example.org',
        "a/b@example.org", "bob@example.org.", "bob@[1.2.3.4]", "bob@[IPv6:2001:DB8::1]",
        "x" * 64 + "@example.org", "x" * 65 + "@example.org", "", "<>", "@a:b@c",
        "a@b\r\nBcc: victim@example.com", "bob@exa_mple.org", "bo..b@example.org",
    ]),
)


def http_key(raw: str) -> str | None:
    """The account ingest's POST /v1/messages would queue ``raw`` under, None if refused."""
    try:
        envelope = parse_envelope("", [raw])
    except BadRequest as exc:
        assert exc.code == "bad_recipient" and exc.message.startswith("to: ")
        return None
    return envelope.recipients[0].account


def lmtp_key(raw: str) -> str | None:
    """The account of LMTP's RCPT TO:<raw>, None if refused (501 syntax, 550 5.1.1)."""
    try:
        rcpt = make_recipient(raw)
    except BadRequest:
        return None
    return rcpt.account or None  # "": AccountCheck answers NO_SUCH_ACCOUNT, policy unasked


def policy_key(raw: str) -> str | None:
    """The account key policy gives ``raw`` as an ``{address}``, None if it answers 400."""
    try:
        return account_key(raw)
    except InvalidAddress as exc:
        assert exc.status_code == 400 and "address" in exc.message
        return None


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recipient_text)
def test_ingest_queues_only_account_keys_policy_accepts(raw: str) -> None:
    key = http_key(raw)
    assert lmtp_key(raw) == key, "HTTP and LMTP disagree"
    assert policy_key(raw) == key, "ingest and policy disagree"
    if key is None:
        return
    # A key is its own normal form, plain lower-case ASCII without '/' in the local part,
    # and the same whichever spelling of the recipient the executor later looks up.
    assert normalize_account(key) == key == key.lower()
    assert key == parse_recipient(raw).lower()  # the quick path for bare keys agrees
    assert key.isascii() and "/" not in key.rsplit("@", 1)[0] and '"' not in key
    assert len(key) <= MAX_ADDRESS_OCTETS and key.rfind("@") <= MAX_LOCAL_OCTETS
    assert normalize_account(make_recipient(raw).address) == key
    assert TypeAdapter(AccountAddress).validate_python(raw) == key  # postmaster, models


@settings(max_examples=300, deadline=None)
@given(well_formed)
def test_valid_mail_that_no_account_can_have_is_refused_by_both_with_a_reason(addr: str) -> None:
    try:
        canonical = parse_recipient(addr)
    except AddressError:
        return  # over a length limit: the envelope parser's own tests cover it
    key = http_key(addr)
    plain = canonical.isascii() and not canonical.startswith('"') and "/" not in canonical
    assert (key is not None) == plain
    if key is None:
        with pytest.raises(AddressError, match="no account can have the address"):
            normalize_account(addr)
        assert policy_key(addr) is None


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("Bob@Example.ORG", "bob@example.org"),
        ("<Bob@Example.ORG>", "bob@example.org"),
        ('"bob"@example.org', "bob@example.org"),
        ("o'hara+tag@example.org", "o'hara+tag@example.org"),
        ("bob@[1.2.3.4]", "bob@[1.2.3.4]"),
        ("bob@[IPv6:2001:DB8::1]", "bob@[ipv6:2001:db8::1]"),
        ("x" * 64 + "@example.org", "x" * 64 + "@example.org"),
    ],
)
def test_account_keys(raw: str, key: str) -> None:
    assert normalize_account(raw) == key
    assert normalize_account(key) == key
    assert http_key(raw) == lmtp_key(raw) == policy_key(raw) == key


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("bö@example.org", "UTF-8"),
        ("bob@bücher.example", "UTF-8"),
        ('"a b"@example.org', "quotes"),
        ('"a>b"@example.org', "quotes"),
        ("a/b@example.org", "'/'"),
    ],
)
def test_valid_mail_never_an_account(raw: str, why: str) -> None:
    """Behaviour change (issue 14): ingest refuses these at once (HTTP 400, LMTP 550 5.1.1)."""
    parse_recipient(raw)  # valid in SMTP
    with pytest.raises(AddressError) as refused:
        normalize_account(raw)
    assert why in str(refused.value) and "an account address is ASCII local@domain" in str(refused.value)
    with pytest.raises(BadRequest) as http:
        parse_envelope("", ["ok@example.org", raw])
    assert http.value.status_code == 400 and http.value.code == "bad_recipient"
    assert "no account can have the address" in http.value.message
    assert make_recipient(raw).account == ""  # LMTP: known to be nobody's, policy unasked
    assert policy_key(raw) is None


@pytest.mark.parametrize(
    "raw", ["", "<>", "nobody", "bob@", "bob@example.org.", "bo..b@example.org", "x" * 65 + "@a.b"]
)
def test_invalid_mail(raw: str) -> None:
    with pytest.raises(AddressError, match="^invalid address"):
        normalize_account(raw)
    assert http_key(raw) is lmtp_key(raw) is policy_key(raw) is None


def test_contract_addresses_use_the_grammar() -> None:
    with pytest.raises(ValidationError, match="no account can have"):
        TypeAdapter(AccountAddress).validate_python("bö@example.org")


async def test_lmtp_refuses_a_non_account_without_asking_policy() -> None:
    check = AccountCheck("http://127.0.0.1:9", "token")  # a closed port: asking would be 451
    try:
        assert check.cached("") is Answer.NO_SUCH_ACCOUNT
        assert await check.check("") is Answer.NO_SUCH_ACCOUNT
        assert check.cached("bob@example.org") is None
    finally:
        await check.close()


def test_message_listing_filters_by_the_account_key() -> None:
    """``GET /v1/messages?recipient=`` names an account in any spelling of its address."""
    assert account_filter(None) is None and account_filter("") is None
    assert account_filter("<Bob@Example.ORG>") == "bob@example.org"
    with pytest.raises(BadRequest, match="no account can have"):
        account_filter("bö@example.org")
