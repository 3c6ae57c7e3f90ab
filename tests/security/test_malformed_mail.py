"""A corpus of malformed mail POSTed to the real ingest: 202 and delivered byte-exact to a
program that copies its stdin to a file (compared after the Return-Path/Delivered-To
prefix), or 400; never a 5xx, never a changed byte.

mailexec is a transport: it must not "repair" a message (Postfix's pipe(8) hands over
what it got). Whether a message is well-formed is the receiving program's business.
"""

from __future__ import annotations

import random

import httpx
import pytest

from tests.executor.helpers import Homes, Pipeline
from tests.security.conftest import MTA, service_url

pytestmark = pytest.mark.timeout(180)

_rng = random.Random(6)
CORPUS: dict[str, bytes] = {
    "no-headers": b"just a body line, no header section at all\n",
    "bare-lf": b"Subject: bare LF\nFrom: a@example.net\n\nbody\n",
    "mixed-crlf-cr": b"Subject: mixed\r\nX: y\n\r\nline\rwith a bare CR\r\nand LF\n",
    "nul-bytes": b"Subject: nul\n\nbefore\x00after\x00\x00\n",
    "nul-in-header": b"Subject: a\x00b\n\nbody\n",
    "line-5000": b"Subject: long\n\n" + b"x" * 5000 + b"\n",
    "header-line-20000": b"X-Long: " + b"y" * 20000 + b"\n\nbody\n",
    "broken-mime": (b"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"zz\n\n--zz\n"
                    b"Content-Type: text/plain\nContent-Transfer-Encoding: base64\n\n!!notbase64!!\n"
                    b"--zz\nContent-Type: multipart/alternative; boundary=\n\n--\n"),
    "8bit-headers": b"Subject: caf\xc3\xa9 \xff\xfe\nFrom: \xe9ric <e@example.net>\n\nbody \xe9\n",
    "huge-header-section": b"".join(b"X-H%05d: %s\n" % (i, b"v" * 40) for i in range(20000))
    + b"\nbody\n",
    "only-newline": b"\n",
    "no-final-newline": b"Subject: x\n\nno newline at the end",
    "mbox-from-line": b"From alice@example.net Mon Jan  1 00:00:00 2026\nSubject: x\n\n"
                      b"From here on\n>From quoted\n",
    "dot-lines": b"Subject: dots\n\n.\n..\n.leading\n",
    "continuation-first": b" folded first line\nSubject: x\n\nbody\n",
    "binary-100k": bytes(_rng.getrandbits(8) for _ in range(100_000)),
    "big-200k-text": b"Subject: big\n\n" + b"0123456789abcdef" * 12800,
    "header-injection-looking": b"Subject: x\r\nBcc: victim@example.com\r\n\r\nDelivered-To: other@x\r\n",
    "empty": b"",
}


async def test_malformed_mail_delivered_byte_exact_or_400(
    stack: Pipeline, homes: Homes, executor: object
) -> None:
    base = service_url(stack, "ingest")
    accepted: dict[str, tuple[str, object, bytes]] = {}
    problems: list[str] = []
    async with httpx.AsyncClient(timeout=30) as c:
        for name, body in CORPUS.items():
            uid, gid, home = homes.make()
            addr = f"corpus-{uid}@example.org"
            await stack.account(addr, uid, gid, home, ["copy"])
            r = await c.post(base + "/v1/messages", params={"from": "a@example.net", "to": addr},
                             content=body, headers={**MTA, "Content-Type": "message/rfc822"})
            if r.status_code >= 500 or r.status_code not in (202, 400):
                problems.append(f"{name}: {r.status_code} {r.text[:200]}")
            elif r.status_code == 202:
                accepted[name] = (r.json()["id"], home, body)
            elif name != "empty":
                problems.append(f"{name}: refused (400) {r.text[:200]}")
    for name, (mid, home, body) in accepted.items():
        rcpt = await stack.wait_state(mid, timeout=60)
        if rcpt["state"] != "delivered":
            problems.append(f"{name}: {rcpt['state']} {rcpt['diagnostic']}")
            continue
        got = (home / "stdin.copy").read_bytes()  # type: ignore[operator]
        first = got.index(b"\n") + 1
        second = got.index(b"\n", first) + 1
        assert got[:first].rstrip(b"\r\n") == b"Return-Path: <a@example.net>", got[:first]
        assert got[first:second].startswith(b"Delivered-To: corpus-"), got[first:second]
        if got[second:] != body:
            problems.append(f"{name}: delivered bytes differ ({len(got) - second} vs {len(body)})")
    print(f"\nmalformed corpus: {len(CORPUS)} messages, {len(accepted)} accepted and "
          f"delivered byte-exact, {len(CORPUS) - len(accepted)} refused with 400")
    assert not problems, "\n".join(problems)
    assert "empty" not in accepted
