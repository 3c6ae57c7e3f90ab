"""``render_dsn_bytes`` (what the consumer stores) gives exactly the bytes of
``to_bytes(render_dsn(...))`` (what the golden files pin), for every kind of event and
every kind of original, well-formed or not."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from services.notifier.dsn import render_dsn, render_dsn_bytes, to_bytes
from shared.schemas import Event
from tests.notifier.test_dsn import (
    BOUNCE_TWO,
    DELAYED,
    DELIVERED,
    HOST,
    MALFORMED,
    MSGID,
    NOW,
    ORIGINAL,
    SIGNALLED,
    _rcpt,
    make_event,
)

MULTIPART = (
    b"From: Alice <alice@example.net>\r\n"
    b"To: bob@example.org\r\n"
    b"Subject: with attachment\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="XYZ"\r\n'
    b"\r\n"
    b"preamble text\r\n"
    b"--XYZ\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"hello\r\n"
    b"--XYZ\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"AAECAwQFBgcICQ==\r\n"
    b"--XYZ--\r\n"
    b"epilogue\r\n"
)

ORIGINALS: dict[str, bytes | None] = {
    "none": None,
    "plain": ORIGINAL,
    "multipart": MULTIPART,
    "multipart_no_close": MULTIPART.split(b"--XYZ--")[0],
    "multipart_no_epilogue": MULTIPART.split(b"epilogue")[0],
    "multipart_blank_epilogue": MULTIPART.split(b"epilogue")[0] + b"\r\n\r\n",
    "multipart_no_preamble": MULTIPART.replace(b"preamble text\r\n", b""),
    "multipart_close_no_eol": MULTIPART.split(b"\r\nepilogue")[0],
    "multipart_nested": MULTIPART.replace(
        b"Content-Type: text/plain\r\n\r\nhello\r\n",
        b'Content-Type: multipart/alternative; boundary="in"\r\n\r\n--in\r\n'
        b"Content-Type: text/plain\r\n\r\nhi\r\n--in\r\nContent-Type: text/html\r\n\r\n"
        b"<p>hi</p>\r\n--in--\r\n",
    ),
    "multipart_empty_parts": (
        b'Subject: x\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n\r\n--b\r\n'
        b"\r\n\r\n--b--\r\n"
    ),
    "nested_rfc822": (
        b"Subject: fwd\r\nMIME-Version: 1.0\r\nContent-Type: message/rfc822\r\n\r\n" + ORIGINAL
    ),
    "no_space_after_colon": b"Subject:x\r\nFrom:  a@b.c\r\nX-Empty:\r\n\r\nbody\r\n",
    "trailing_space": b"Subject: x \r\nFrom: a@b.c\t\r\n\r\nbody  \r\n\r\n\r\n",
    "folded_header": b"Subject: a\r\n  very long\r\n\tfolded one\r\nFrom: a@b.c\r\n\r\nb\r\n",
    "empty_body": b"Subject: x\r\n\r\n",
    "blank_lines_body": b"Subject: x\r\n\r\n\r\n\r\n",
    "from_line_in_body": b"Subject: x\r\n\r\nFrom here on\r\n>From there\r\n",
    "boundary_like_body": b"Subject: x\r\n\r\n--XYZ\r\n--\r\n",
    "bad_content_type": b"Content-Type: multipart/mixed\r\nSubject: x\r\n\r\nno boundary\r\n",
    "qp_body": (
        b"Subject: x\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9 =\r\nend\r\n"
    ),
    **{f"malformed_{k}": v for k, v in MALFORMED.items()},
}

EVENTS: dict[str, Event] = {
    "bounce_two": BOUNCE_TWO,
    "bounce_ret_full": make_event(ret="FULL"),
    "signalled_hdrs": SIGNALLED,
    "delayed": DELAYED,
    "delivered": DELIVERED,
    "qp_output": make_event(recipients=[_rcpt("bob@example.org", output_excerpt="Gr\u00fc\u00dfe \u2603\n")]),
    "utf8_sender": make_event(sender="j\u00f6rg@example.net"),
    "utf8_rcpt": make_event(recipients=[_rcpt("j\u00f6rg@example.org")]),
    "long_diagnostic": make_event(
        recipients=[_rcpt("bob@example.org", output_excerpt=("word " * 400 + "\n") * 3)]
    ),
    "envid_odd": make_event(envid="a b+c=d"),
    "many": make_event(recipients=[_rcpt(f"r{n}@example.org") for n in range(25)]),
}


def _both(event: Event, original: bytes | None, **kw: Any) -> tuple[bytes, bytes]:
    args: dict[str, Any] = {
        "reporting_mta": HOST,
        "max_returned_body_bytes": 65536,
        "include_output": True,
        "now": NOW,
        "message_id": MSGID,
    }
    args.update(kw)
    return render_dsn_bytes(event, original, **args), to_bytes(render_dsn(event, original, **args))


@pytest.mark.parametrize(("event", "original"), list(itertools.product(EVENTS, ORIGINALS)))
def test_same_bytes_as_the_parsed_message(event: str, original: str) -> None:
    fast, slow = _both(EVENTS[event], ORIGINALS[original])
    assert fast == slow


@pytest.mark.parametrize("limit", [0, 10, 60, 200])
@pytest.mark.parametrize("include_output", [True, False])
def test_same_bytes_when_cut_or_hiding_output(limit: int, include_output: bool) -> None:
    original = ORIGINAL + b"more text\r\n" * 100
    fast, slow = _both(
        make_event(ret="FULL"), original, max_returned_body_bytes=limit, include_output=include_output
    )
    assert fast == slow


def test_default_clock_and_message_id_still_vary() -> None:
    one = render_dsn_bytes(BOUNCE_TWO, ORIGINAL, reporting_mta=HOST, max_returned_body_bytes=100,
                           include_output=True)
    two = render_dsn_bytes(BOUNCE_TWO, ORIGINAL, reporting_mta=HOST, max_returned_body_bytes=100,
                           include_output=True)
    assert one != two and b"Message-ID: <" in one


def test_refuses_what_render_dsn_refuses() -> None:
    with pytest.raises(ValueError):
        render_dsn_bytes(make_event(sender=""), ORIGINAL, reporting_mta=HOST,
                         max_returned_body_bytes=1, include_output=True)
    with pytest.raises(ValueError):
        render_dsn_bytes(make_event(), ORIGINAL, reporting_mta="not a host",
                         max_returned_body_bytes=1, include_output=True)


_PIECES = [
    b"Subject: x", b"From: a@b.c", b"Subject:x", b"X-E:", b"X-S:  spaced ", b" folded", b"\tfolded",
    b'Content-Type: multipart/mixed; boundary="B"', b'Content-Type: multipart/alternative; boundary="C"',
    b"Content-Type: message/rfc822", b"Content-Type: text/plain", b"Content-Type: multipart/mixed",
    b"Content-Transfer-Encoding: base64", b"MIME-Version: 1.0", b"", b"", b"", b"--B", b"--B--", b"--C",
    b"--C--", b"--B ", b"body text", b"From x", b">From y", b"=41=", b"x" * 80, b".", b"--", b"AAAA",
    b"X-T:\tv", b"X-N :v", b"X-Z: ", b" ", b"\t", b"Content-type: Message/partial", b"From : x",
    b"To: a@b.c", b"Content-Type: text/plain; charset=us-ascii", b"content-type:multipart/x",
]


def test_same_bytes_for_random_mime_shapes() -> None:
    """Shuffled headers, delimiters, blank lines and line ends (seeded, so reproducible)."""
    rng = random.Random(3464)
    events = [make_event(ret="FULL"), DELAYED, make_event(ret="HDRS")]
    for _ in range(1500):
        lines = [rng.choice(_PIECES) for _ in range(rng.randint(0, 25))]
        if rng.random() < 0.7:
            lines = [rng.choice([b"Subject: t", b"X-A: 1"]), rng.choice(_PIECES[7:12]), *lines]
        eol = rng.choice([b"\r\n", b"\n", b"\r\n"])
        original = eol.join(lines) + (eol if rng.random() < 0.8 else b"")
        fast, slow = _both(rng.choice(events), original, max_returned_body_bytes=rng.choice([65536, 50]))
        assert fast == slow, original
