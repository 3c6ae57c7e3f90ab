"""Hypothesis property tests: envelope addresses, ingest's envelope handling through the
real service, and DSN rendering from random events and random originals.

Properties:
- ``parse_mailbox`` either raises ``AddressError`` (a ``ValueError``) or returns a
  canonical address that is header-safe (no control character, no CR/LF), within the
  RFC 5321 limits, a fixed point (parsing it again returns it unchanged), and accepted by
  the schema validators the executor and notifier use. Well-formed addresses built
  from the grammar are always accepted.
- ``POST /v1/messages`` with any query string answers 202 or 400 (never 5xx); on 202
  the stored envelope is exactly what ``parse_envelope`` says.
- ``render_dsn_bytes`` with a valid event and any original either raises ``ValueError`` or
  renders a DSN that Python's ``email`` parser reads back with exactly the event's
  recipients and sender, only the headers we write (no injected header, at top level or
  in the delivery-status part), every line ≤ 998 octets and 7-bit (bar the To: of an
  SMTPUTF8 sender).
"""

from __future__ import annotations

import email
import re
import uuid
from datetime import UTC, datetime, timedelta
from email import policy as email_policy
from typing import Any

import httpx
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from services.ingest.envelope import parse_envelope
from services.notifier.dsn import render_dsn_bytes
from shared.addresses import (
    MAX_ADDRESS_OCTETS,
    MAX_LOCAL_OCTETS,
    AddressError,
    normalize_account,
    parse_mailbox,
    parse_recipient,
)
from shared.errors import BadRequest
from shared.schemas import Event, validate_address, validate_sender
from tests.executor.helpers import Pipeline
from tests.security.conftest import MTA, service_url

CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# --- strategies ---------------------------------------------------------------------------

ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+/=?^_`{|}~-"
atom = st.text(st.sampled_from(ATEXT) | st.characters(min_codepoint=0xA0, max_codepoint=0x2FFF,
                                                     categories=("L", "N")),
               min_size=1, max_size=12)
dot_atom = st.lists(atom, min_size=1, max_size=4).map(".".join)
quoted = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1,
                 max_size=20).map(lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"')
label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
domain = st.one_of(
    st.lists(label, min_size=1, max_size=4).map(".".join),
    st.ip_addresses(v=4).map(lambda ip: f"[{ip}]"),
    st.ip_addresses(v=6).map(lambda ip: f"[IPv6:{ip}]"),
)
well_formed = st.builds(lambda lp, d: f"{lp}@{d}", st.one_of(dot_atom, quoted), domain)
hostile_text = st.one_of(
    st.text(max_size=80),
    st.sampled_from([
        "a@b\r\nBcc: victim@example.com", "x\r\n\r\nbody", "<a@b>\nTo: c@d", "a@b\x00",
        '"a\r\nb"@x.org', "a@[1.2.3.4\r\n]", "@a:b@c", "<>", "", " ", "a@b.c ", "\u2028@x",
        '"Bcc: x"@example.org', "a" * 65 + "@x.org", "a@" + "b" * 64 + ".org",
        "a@" + ".".join(["b" * 60] * 5), "a@-x.org", "a@x..org", "a@[IPv6:::1]",
    ]),
    st.builds(lambda a, b: a + "@" + b, st.text(max_size=30), st.text(max_size=30)),
)


# --- addresses ----------------------------------------------------------------------------


def _check_canonical(out: str) -> None:
    assert not CONTROL.search(out), out
    assert "\r" not in out and "\n" not in out
    if out == "":
        return
    assert len(out.encode()) <= MAX_ADDRESS_OCTETS
    assert "@" in out
    assert parse_mailbox(out) == out, "canonical form is not a fixed point"
    assert parse_mailbox(f"<{out}>") == out
    local = out.rsplit("@", 1)[0] if not out.startswith('"') else out[: out.rindex('"') + 1]
    assert len(local.encode()) <= MAX_LOCAL_OCTETS + 2 * local.count("\\") + 2
    assert validate_address(out) == out  # the executor/notifier side takes what ingest takes
    try:
        assert normalize_account(out) == out.lower()
    except AddressError as exc:  # UTF-8, a quoted local part, '/': valid mail, never an account
        assert str(exc).startswith("no account can have the address")


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_text)
def test_parse_mailbox_any_text_is_rejected_clearly_or_canonical(s: str) -> None:
    try:
        out = parse_mailbox(s)
    except AddressError as exc:
        assert str(exc).startswith("invalid address")
        assert "\n" not in str(exc).split(":", 1)[1] or "\\n" in str(exc)
        return
    _check_canonical(out)


@settings(max_examples=800, deadline=None)
@given(well_formed)
def test_well_formed_addresses_are_accepted(addr: str) -> None:
    if len(addr.encode()) > MAX_ADDRESS_OCTETS or len(addr.rsplit("@", 1)[0].encode()) > MAX_LOCAL_OCTETS:
        return  # the limits are tested above; here only the grammar
    out = parse_recipient(addr)
    _check_canonical(out)
    assert out.rsplit("@", 1)[1] == addr.rsplit("@", 1)[1].lower() or "[" in out


# --- envelope, through the real ingest ----------------------------------------------------

query_value = st.one_of(well_formed, hostile_text)
notify_value = st.one_of(
    st.none(), st.just(""), st.text(max_size=20),
    st.lists(st.sampled_from(["NEVER", "SUCCESS", "FAILURE", "DELAY", "never", "bogus", ""]),
             max_size=4).map(",".join),
)
fuzz_params = st.fixed_dictionaries({
    "from": st.one_of(st.none(), st.just(""), query_value),
    "to": st.lists(query_value, max_size=4),
    "envid": st.one_of(st.none(), st.text(max_size=110),
                       st.from_regex(r"[!-*,-<>-~]{1,100}", fullmatch=True)),
    "ret": st.one_of(st.none(), st.sampled_from(["FULL", "HDRS", "full", "x", ""])),
    "notify": notify_value,
})
valid_params = st.fixed_dictionaries({
    "from": st.one_of(st.just(""), st.just("<>"), well_formed),
    "to": st.lists(well_formed, min_size=1, max_size=4),
    "envid": st.one_of(st.none(), st.from_regex(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2}){1,30}", fullmatch=True)),
    "ret": st.sampled_from([None, "FULL", "HDRS", "hdrs"]),
    "notify": st.sampled_from([None, "NEVER", "SUCCESS", "FAILURE,DELAY", "delay, success"]),
})
envelope_params = st.one_of(valid_params, fuzz_params)


def _expected(params: dict[str, Any]) -> Any:
    try:
        return parse_envelope(params["from"], params["to"], envid=params["envid"],
                              ret=params["ret"], notify=params["notify"])
    except BadRequest:
        return None


async def test_envelope_through_real_ingest_is_202_or_400(stack: Pipeline) -> None:
    base = service_url(stack, "ingest")
    seen = {"202": 0, "400": 0}
    failures: list[str] = []

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(envelope_params)
    def run(params: dict[str, Any]) -> None:
        query: list[tuple[str, str]] = []
        for key in ("from", "envid", "ret", "notify"):
            if params[key] is not None:
                query.append((key, params[key]))
        query += [("to", t) for t in params["to"]]
        # Lone surrogates can't travel in a URL; the HTTP layer refuses them before us.
        assume(all(not re.search(r"[\ud800-\udfff]", v) for _, v in query))
        r = httpx.post(base + "/v1/messages", params=query, content=b"Subject: x\n\nhi\n",
                       headers={**MTA, "Content-Type": "message/rfc822"}, timeout=15)
        expected = _expected(params)
        if r.status_code >= 500 or r.status_code not in (202, 400):
            failures.append(f"{query!r} -> {r.status_code} {r.text[:300]}")
            return
        seen[str(r.status_code)] += 1
        if expected is None:
            if r.status_code != 400:
                failures.append(f"{query!r}: parse_envelope refuses it but ingest said {r.status_code}")
            else:
                assert r.json()["error"]["code"].startswith(("bad_", "no_", "too_"))
            return
        if r.status_code != 202:
            failures.append(f"{query!r}: parse_envelope accepts it but ingest said {r.text[:300]}")
            return
        got = httpx.get(f"{base}/v1/messages/{r.json()['id']}", headers=MTA, timeout=15).json()
        env = got["envelope"]
        want = (expected.sender, sorted(rc.address for rc in expected.recipients), expected.envid,
                expected.ret, list(expected.notify))
        have = (env["from"], sorted(env["to"]), env["envid"], env["ret"], env["notify"])
        if want != have:
            failures.append(f"{query!r}: stored {have!r}, expected {want!r}")

    import asyncio

    await asyncio.to_thread(run)
    print(f"\nenvelope fuzz: {seen}")
    assert not failures, "\n".join(failures[:20])
    assert seen["202"] > 10 and seen["400"] > 10, seen


# --- DSN rendering ------------------------------------------------------------------------

HOST = "mx.test.example"
KIND_ACTION = {"bounce": "failed", "delayed": "delayed", "delivered": "delivered"}
STATUS_FOR = {"failed": st.sampled_from(["5.3.0", "5.1.1", "4.4.7", "5.7.1", "5.999.999"]),
              "delayed": st.sampled_from(["4.3.0", "4.4.7", "4.0.0"]),
              "delivered": st.just("2.0.0")}
valid_address = well_formed.filter(lambda a: _valid(a)).map(parse_recipient)
free_text = st.one_of(
    st.text(max_size=300),
    st.sampled_from(["ok\r\nBcc: victim@example.com\r\n", "\r\n\r\n--boundary\r\nX: y",
                     "=?utf-8?b?QmNjOiB2aWN0aW0=?=", "line\n" * 50, "\x1b[31mred\x00"]),
)
originals = st.one_of(
    st.none(), st.binary(max_size=3000),
    st.builds(lambda h, b: h + b"\r\n\r\n" + b, st.binary(max_size=400), st.binary(max_size=800)),
    st.sampled_from([
        b"", b"\n", b"no headers at all\n", b"Subject: x\nBcc: y\n\nbody\n",
        b"Subject: \xff\xfe\n\n\x00\x00\n", b"X: " + b"a" * 5000 + b"\n\nb\n",
        b"Content-Type: multipart/mixed; boundary=zz\n\n--zz\nbroken",
        b"Subject: hi\r\n\r\n" + b"x" * 400_000,
    ]),
)


def _valid(addr: str) -> bool:
    try:
        parse_recipient(addr)
        return True
    except ValueError:
        return False


@st.composite
def events(draw: Any) -> Event:
    kind = draw(st.sampled_from(list(KIND_ACTION)))
    action = KIND_ACTION[kind]
    addrs = draw(st.lists(valid_address, min_size=1, max_size=4, unique_by=str.lower))
    now = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=draw(st.integers(0, 10**8)))
    rcpts = [{
        "address": a,
        "orcpt": draw(st.one_of(st.none(), st.text(max_size=60).filter(lambda t: not CONTROL.search(t)),
                                st.just("rfc822;" + a))),
        "action": action,
        "status": draw(STATUS_FOR[action]),
        "diagnostic": draw(free_text),
        "last_attempt": now.isoformat(),
        "will_retry_until": (now + timedelta(days=5)).isoformat() if action == "delayed" else None,
        "program": draw(st.one_of(st.none(), st.text(max_size=80))),
        "exit_status": draw(st.one_of(st.none(), st.integers(0, 255))),
        "signal": draw(st.one_of(st.none(), st.integers(1, 64))),
        "timed_out": draw(st.booleans()),
        "output_excerpt": draw(free_text),
    } for a in addrs]
    return Event.model_validate({
        "kind": kind, "event_id": str(uuid.uuid4()), "message_id": str(uuid.uuid4()),
        "occurred_at": now.isoformat(),
        "envelope": {
            "sender": draw(valid_address),
            "envid": draw(st.one_of(st.none(), st.from_regex(r"[\x20-\x7e]{0,100}", fullmatch=True))),
            "ret": draw(st.sampled_from([None, "FULL", "HDRS"])),
            "notify": draw(st.sampled_from([["FAILURE", "DELAY"], ["SUCCESS"],
                                            ["SUCCESS", "FAILURE", "DELAY"]])),
            "arrival_date": now.isoformat(),
        },
        "recipients": rcpts,
    })


TOP_HEADERS = {"from", "to", "subject", "date", "message-id", "auto-submitted", "mime-version",
               "content-type", "content-transfer-encoding"}
PER_MESSAGE = {"original-envelope-id", "reporting-mta", "arrival-date", "x-mailexec-message-id"}
PER_RCPT = {"original-recipient", "final-recipient", "action", "status", "diagnostic-code",
            "last-attempt-date", "will-retry-until"}


def _decode_final(value: str) -> str:
    kind, _, addr = value.partition(";")
    addr = addr.strip()
    if kind.strip().lower() == "utf-8":
        return re.sub(r"\\x\{([0-9A-F]+)\}", lambda m: chr(int(m.group(1), 16)), addr)
    return addr


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.data_too_large])
@given(events(), originals, st.booleans(), st.integers(0, 100_000))
def test_render_dsn_reads_back_with_same_recipients_and_no_injection(
    event: Event, original: bytes | None, include_output: bool, max_body: int
) -> None:
    try:
        wire = render_dsn_bytes(event, original, reporting_mta=HOST,
                                max_returned_body_bytes=max_body, include_output=include_output)
    except ValueError:
        return
    sender = event.envelope.sender
    for line in wire.split(b"\r\n"):
        assert len(line) <= 998, line[:100]
        assert b"\r" not in line and b"\n" not in line and b"\0" not in line
        if not line.startswith(b"To: "):
            assert line.isascii(), line[:200]
    parsed = email.message_from_bytes(wire, policy=email_policy.default)
    names = [k.lower() for k in parsed.keys()]
    assert set(names) <= TOP_HEADERS, names
    assert len(names) == len(set(names)), names
    to_lines = [line for line in wire.split(b"\r\n\r\n", 1)[0].split(b"\r\n") if line.startswith(b"To: ")]
    assert to_lines == [b"To: " + sender.encode()], to_lines  # exactly the sender, one line
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "delivery-status"
    status = [p for p in parsed.walk() if p.get_content_type() == "message/delivery-status"]
    assert len(status) == 1
    blocks = status[0].get_payload()
    assert {k.lower() for k in blocks[0].keys()} <= PER_MESSAGE
    got = []
    for block in blocks[1:]:
        keys = [k.lower() for k in block.keys()]
        assert set(keys) <= PER_RCPT, keys
        assert len(keys) == len(set(keys)), keys
        assert block["Action"] == KIND_ACTION[event.kind]
        got.append(_decode_final(str(block["Final-Recipient"])))
    assert got == [r.address for r in event.recipients]
    assert validate_sender(sender) == sender
