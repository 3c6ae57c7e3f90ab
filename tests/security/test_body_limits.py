"""Request bodies under attack, against real service processes (``shared.httpapp.BodyGuard``).

- An unauthenticated client sends a 300 MiB body to every service, to JSON endpoints and
  to the raw uploads (ingest's message submission, policy's program bytes): it gets 401
  at once, and the server process does not grow (its RSS, read from /proc, stays within
  a few MiB while the whole body is sent).
- An authenticated client's JSON body is capped at 64 KiB, whether the length is
  declared or the body is chunked: 413 in the SPEC error shape, naming the limit; a body
  of exactly 64 KiB still works, and the raw uploads keep their own (larger) limits.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.httpapp import JSON_BODY_LIMIT
from tests.conftest import ServiceProcess
from tests.executor.helpers import Pipeline
from tests.security.conftest import ADMIN, MTA

HUGE = 300 * 1024 * 1024
CHUNK = 1024 * 1024
RSS_SLACK_KIB = 8 * 1024
ANSWER_WITHIN_S = 2.0


@pytest.fixture(scope="module")
def procs(mx_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[dict[str, ServiceProcess]]:
    """Services of their own: nothing else's traffic moves their RSS."""
    p = Pipeline(mx_env, tmp_path_factory.mktemp("body-limit-logs"))
    p.env["MAILEXEC_SMTP_URL"] = "smtp://127.0.0.1:9"
    try:
        for name in ("policy", "ingest", "notifier"):
            p.start(name)
        yield p.procs
    finally:
        p.stop_all()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def _huge_unauthenticated(proc: ServiceProcess, method: str, path: str, ctype: str
                          ) -> tuple[int, float, int]:
    """Send a 300 MiB body without a token: (status, seconds to the answer, RSS growth KiB)."""
    assert proc.proc is not None
    pid = proc.proc.pid
    # Warm the server's code paths for this request shape first, so the baseline counts.
    httpx.request(method, proc.url + path, content=b"{}", headers={"Content-Type": ctype})
    before = _rss_kib(pid)
    peak = before
    sock = socket.create_connection(("127.0.0.1", proc.port))
    sock.sendall(
        f"{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {HUGE}\r\n\r\n".encode()
    )
    sent = 0

    def pump() -> None:
        nonlocal sent
        block = b" " * CHUNK
        try:
            while sent < HUGE:
                sock.sendall(block)
                sent += CHUNK
        except OSError:
            pass  # the server may close once it answered; that is fine too

    sender = threading.Thread(target=pump, daemon=True)
    started = time.monotonic()
    sender.start()
    sock.settimeout(10)
    answer = b""
    while b"\r\n" not in answer:
        data = sock.recv(4096)
        if not data:
            break
        answer += data
    elapsed = time.monotonic() - started
    while sender.is_alive():
        peak = max(peak, _rss_kib(pid))
        sender.join(0.05)
    time.sleep(0.2)  # what the server still holds after the last byte arrived
    peak = max(peak, _rss_kib(pid))
    sock.close()
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
    return status, elapsed, peak - before


@pytest.mark.parametrize(
    ("service", "method", "path", "ctype"),
    [
        ("policy", "PUT", "/v1/accounts/victim@example.org", "application/json"),
        ("policy", "PATCH", "/v1/settings", "application/json"),
        ("policy", "POST", "/v1/accounts/victim@example.org/tokens", "application/json"),
        ("policy", "PUT", "/v1/programs/huge", "application/octet-stream"),
        ("ingest", "POST", "/v1/messages?from=&to=a@example.org", "message/rfc822"),
        ("notifier", "POST", "/v1/notifications", "application/json"),
    ],
)
def test_unauthenticated_huge_body_gets_401_without_growing_the_server(
    procs: dict[str, ServiceProcess], service: str, method: str, path: str, ctype: str
) -> None:
    status, elapsed, growth = _huge_unauthenticated(procs[service], method, path, ctype)
    assert status == 401, f"{service} {method} {path}: answered {status}"
    assert elapsed < ANSWER_WITHIN_S, f"401 only after {elapsed:.1f}s: the body was read first"
    assert growth < RSS_SLACK_KIB, f"{service} grew by {growth} KiB on an unauthenticated body"


def test_a_wrong_token_is_refused_before_the_body_too(
    procs: dict[str, ServiceProcess]
) -> None:
    """A wrong token (not only a missing one) is also refused before the body."""
    r = httpx.patch(procs["policy"].url + "/v1/settings", json={"suspended": True},
                    headers={"Authorization": "Bearer wrong-token"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"
    r = httpx.get(procs["policy"].url + "/v1/settings", headers=ADMIN)
    assert r.json()["suspended"] is False


def _assert_too_large(r: httpx.Response) -> None:
    assert r.status_code == 413, r.text
    err = r.json()["error"]
    assert err["code"] == "body_too_large"
    assert str(JSON_BODY_LIMIT) in err["message"]


def test_json_bodies_are_capped_at_64_kib(procs: dict[str, ServiceProcess]) -> None:
    url = procs["policy"].url + "/v1/settings"
    exact = b'{"suspended": false}'.ljust(JSON_BODY_LIMIT, b" ")
    r = httpx.patch(url, content=exact, headers={**ADMIN, "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    r = httpx.patch(url, content=exact + b" ",
                    headers={**ADMIN, "Content-Type": "application/json"})
    _assert_too_large(r)


def test_json_bodies_are_capped_when_chunked(procs: dict[str, ServiceProcess]) -> None:
    """No Content-Length to go by: the cap holds while the body streams in."""

    def chunks() -> Iterator[bytes]:
        yield b'{"owner": {"name": "'
        for _ in range(100):
            yield b"x" * 4096

    r = httpx.put(procs["policy"].url + "/v1/accounts/chunky@example.org", content=chunks(),
                  headers={**ADMIN, "Content-Type": "application/json"})
    _assert_too_large(r)
    r = httpx.get(procs["policy"].url + "/v1/accounts/chunky@example.org", headers=ADMIN)
    assert r.status_code == 404


def test_raw_uploads_keep_their_own_limits(procs: dict[str, ServiceProcess]) -> None:
    """The message and the program bytes are not JSON: bigger than 64 KiB is fine there."""
    program = b"\x7fELF\x02\x01\x01" + b"\x00" * 57 + b"a harmless filter " * 8000
    assert len(program) > JSON_BODY_LIMIT
    r = httpx.put(procs["policy"].url + "/v1/programs/bigfilter", content=program,
                  headers={**ADMIN, "Content-Type": "application/octet-stream"})
    assert r.status_code in (200, 201), r.text
    message = b"Subject: big\r\n\r\n" + b"0123456789abcdef\r\n" * 8000
    assert len(message) > JSON_BODY_LIMIT
    r = httpx.post(procs["ingest"].url + "/v1/messages",
                   params={"from": "a@example.org", "to": "nobody@example.org"},
                   content=message, headers={**MTA, "Content-Type": "message/rfc822"})
    assert r.status_code == 202, r.text
