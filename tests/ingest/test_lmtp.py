"""LMTP (RFC 2033) in ingest, spoken to a real `mailexec serve ingest` over TCP and its
Unix socket, with a real policy service deciding at RCPT time.

RFC behaviours covered here: LHLO only (HELO/EHLO refused), the extensions announced
(PIPELINING, ENHANCEDSTATUSCODES, 8BITMIME, SIZE, DSN, SMTPUTF8, STARTTLS), one reply per
accepted recipient after the final dot (RFC 2033 §4.2) with the same queue id, 503 for
DATA without a valid recipient, RSET/NOOP/QUIT and many transactions per connection, a
whole pipelined transaction (RFC 2920), SIZE at MAIL and over-size data (RFC 1870, 552
5.2.3), dot-stuffing and the one terminator (RFC 5321 §4.5.2), RET/ENVID per message
and NOTIFY/ORCPT per recipient stored and carried in the job (RFC 3461), SMTPUTF8 needed
for non-ASCII addresses (RFC 6531), STARTTLS discarding pipelined commands (RFC 3207
§4.2), AUTH PLAIN only under TLS (RFC 4954: 538, 535, 454), and the 4xx replies for a
dependency that is down (policy at RCPT, broker or database at DATA).
"""

from __future__ import annotations

import asyncio
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from base64 import b64encode
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from shared.auth import BAD_TOKEN_LIMIT
from testing.mailrows import BODY_OF_M
from tests.conftest import ADMIN_TOKEN, MTA_TOKEN, ServiceProcess, db_conn, free_port
from tests.ingest.conftest import drain_jobs
from tests.ingest.lmtp_client import LMTPClient

MAX_BYTES = 200_000
SOCKET_GID = 64991
OUTSIDER_UID = 64990
MSG = b"From: a@example.net\nSubject: lmtp\n\n.dotline\nbody\n"


@dataclass
class World:
    policy: ServiceProcess
    ingest: ServiceProcess
    strict: ServiceProcess
    tcp: tuple[str, int]
    unix: str
    strict_tcp: tuple[str, int]


def _cert(where: Path) -> tuple[str, str]:
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=mx.test.example", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return str(cert), str(key)


def _env(mx_env: dict[str, str], policy_port: int, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(mx_env)
    env.update({
        "MAILEXEC_POLICY_PORT": str(policy_port),
        "MAILEXEC_POLICY_URL": f"http://127.0.0.1:{policy_port}",
        "MAILEXEC_INGEST_PORT": str(free_port()),
        "MAILEXEC_MAX_MESSAGE_BYTES": str(MAX_BYTES),
        "MAILEXEC_LMTP_PORT": str(free_port()),
    })
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def world(mx_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("lmtp")
    # The socket's own directory must be open to every uid (pytest's base is 0700), so
    # the test shows the socket's mode and group at work, not a directory's.
    sockdir = Path(tempfile.mkdtemp(prefix="mailexec-lmtp-", dir="/tmp"))
    os.chmod(sockdir, 0o755)
    policy_port = free_port()
    policy = ServiceProcess("policy", _env(mx_env, policy_port), tmp / "policy.log").start()
    sock = str(sockdir / "lmtp.sock")
    env = _env(mx_env, policy_port, MAILEXEC_LMTP_SOCKET=sock,
               MAILEXEC_LMTP_SOCKET_GROUP=str(SOCKET_GID))
    ingest = ServiceProcess("ingest", env, tmp / "ingest.log").start()
    cert, key = _cert(tmp)
    senv = _env(mx_env, policy_port, MAILEXEC_LMTP_TRUSTED_NETWORKS="192.0.2.0/24",
                MAILEXEC_LMTP_TLS_CERT=cert, MAILEXEC_LMTP_TLS_KEY=key,
                MAILEXEC_LMTP_IDLE_TIMEOUT_S="1.5", MAILEXEC_LMTP_MAX_CONNECTIONS="3")
    strict = ServiceProcess("ingest", senv, tmp / "strict.log").start()
    yield World(policy, ingest, strict, ("127.0.0.1", int(env["MAILEXEC_LMTP_PORT"])), sock,
                ("127.0.0.1", int(senv["MAILEXEC_LMTP_PORT"])))
    for p in (strict, ingest, policy):
        p.stop()
    shutil.rmtree(sockdir, ignore_errors=True)


def put_account(policy_url: str, address: str, enabled: bool = True) -> None:
    r = httpx.put(f"{policy_url}/v1/accounts/{address}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                  json={"owner": {"name": "u", "uid": 64901, "gid": 64901, "home": "/tmp",
                                  "shell": "/bin/sh"},
                        "program_delivery": {"enabled": enabled, "programs": ["prog"]},
                        "mailbox_delivery": not enabled}, timeout=10)
    assert r.status_code in (200, 201), r.text


@pytest.fixture
def accounts(world: World, clean_db: None, jobs_queue: str) -> World:
    for a in ("bob@example.org", "carol@example.org"):
        put_account(world.policy.url, a)
    put_account(world.policy.url, "mbox@example.org", enabled=False)
    return world


@pytest.fixture
def client(accounts: World) -> Iterator[LMTPClient]:
    c = LMTPClient(accounts.tcp)
    c.lhlo()
    yield c
    c.close()


async def stored() -> list[dict[str, Any]]:
    conn = await db_conn()
    try:
        rows = await conn.fetch(
            f"SELECT m.id, {BODY_OF_M} AS body, m.envid, m.ret, r.address, r.notify, r.orcpt "
            "FROM mail.messages m JOIN mail.recipients r ON r.message_id = m.id ORDER BY r.address")
        return [dict(r) for r in rows]
    finally:
        await conn.close()


def test_greeting_and_lhlo_announce_what_the_server_does(accounts: World) -> None:
    c = LMTPClient(accounts.tcp)
    try:
        assert c.greeting[0] == 220 and "LMTP" in c.greeting[1]
        assert c.cmd("EHLO client.test")[0] == 500  # LMTP: LHLO only (RFC 2033 §4.1)
        assert c.cmd("MAIL FROM:<a@example.net>")[0] == 503  # LHLO first
        ext = c.lhlo()
        for want in ("PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME", f"SIZE {MAX_BYTES}", "DSN",
                     "SMTPUTF8"):
            assert want in ext
        assert "STARTTLS" not in ext  # no certificate configured on this one
        assert not any(e.startswith("AUTH") for e in ext)
        assert c.cmd("QUIT")[0] == 221
    finally:
        c.close()


async def test_two_recipients_get_two_replies_and_one_message_is_stored(
    client: LMTPClient, jobs_queue: str
) -> None:
    rcpt, data = client.deliver("a@example.net", ["bob@example.org", "Carol@Example.org"], MSG)
    assert [c for c, _ in rcpt] == [250, 250]
    assert [c for c, _ in data] == [250, 250]
    ids = {text.rsplit(" ", 1)[-1] for _, text in data}
    assert len(ids) == 1 and all(t.startswith("2.0.0 <") for _, t in data)
    rows = await stored()
    assert [r["address"] for r in rows] == ["Carol@example.org", "bob@example.org"]
    assert rows[0]["body"] == MSG  # unstuffed, LF line ends: what pipe(8) would give a program
    assert str(rows[0]["id"]) in ids
    jobs = await drain_jobs(jobs_queue, expect=2)
    assert sorted(j["recipient"] for j in jobs) == ["Carol@example.org", "bob@example.org"]


async def test_unknown_and_non_program_accounts_are_refused_at_rcpt(client: LMTPClient) -> None:
    rcpt, data = client.deliver(
        "a@example.net", ["nobody@example.org", "mbox@example.org", "bob@example.org"], MSG)
    assert rcpt[0][0] == 550 and rcpt[0][1].startswith("5.1.1")
    assert rcpt[1][0] == 550 and rcpt[1][1].startswith("5.3.0")
    assert rcpt[2][0] == 250
    assert len(data) == 1 and data[0][0] == 250  # one reply: one accepted recipient
    assert [r["address"] for r in await stored()] == ["bob@example.org"]
    # DATA with no accepted recipient: 503, nothing stored
    rcpt, data = client.deliver("a@example.net", ["nobody@example.org"], MSG)
    assert rcpt[0][0] == 550 and data == []
    assert client.cmd("RSET")[0] == 250
    assert len(await stored()) == 1


def test_refusals_are_not_cached(client: LMTPClient, accounts: World) -> None:
    assert client.cmd("MAIL FROM:<a@example.net>")[0] == 250
    assert client.cmd("RCPT TO:<new@example.org>")[0] == 550
    put_account(accounts.policy.url, "new@example.org")
    assert client.cmd("RCPT TO:<new@example.org>")[0] == 250


async def test_dsn_parameters_are_kept_where_they_belong(
    client: LMTPClient, accounts: World, jobs_queue: str
) -> None:
    assert client.cmd("MAIL FROM:<a@example.net> RET=HDRS ENVID=QQ+2Bid-1 BODY=8BITMIME")[0] == 250
    assert client.cmd("RCPT TO:<bob@example.org> NOTIFY=NEVER ORCPT=rfc822;bob+2Bx@example.org")[0] == 250
    assert client.cmd("RCPT TO:<carol@example.org> NOTIFY=SUCCESS,DELAY")[0] == 250
    assert client.cmd("DATA")[0] == 354
    client.send(b"Subject: x\r\n\r\nhi\r\n.\r\n")
    replies = [client.reply(), client.reply()]
    assert [c for c, _ in replies] == [250, 250]
    mid = replies[0][1].rsplit(" ", 1)[-1]
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.get(f"{accounts.ingest.url}/v1/messages/{mid}",
                           headers={"Authorization": f"Bearer {MTA_TOKEN}"})
    got = r.json()
    assert got["envelope"]["envid"] == "QQ+2Bid-1" and got["envelope"]["ret"] == "HDRS"
    by = {x["address"]: x for x in got["recipients"]}
    assert by["bob@example.org"]["notify"] == ["NEVER"]
    assert by["bob@example.org"]["orcpt"] == "rfc822;bob+2Bx@example.org"
    assert by["carol@example.org"]["notify"] == ["SUCCESS", "DELAY"]
    jobs = {j["recipient"]: j for j in await drain_jobs(jobs_queue, expect=2)}
    assert jobs["bob@example.org"]["notify"] == ["NEVER"]
    assert jobs["bob@example.org"]["orcpt"] == "rfc822;bob+2Bx@example.org"
    assert jobs["carol@example.org"]["notify"] == ["SUCCESS", "DELAY"]
    assert jobs["carol@example.org"]["envid"] == "QQ+2Bid-1" and jobs["carol@example.org"]["ret"] == "HDRS"


async def test_many_transactions_rset_and_noop_on_one_connection(client: LMTPClient) -> None:
    for _ in range(3):
        _, data = client.deliver("a@example.net", ["bob@example.org"], MSG)
        assert data[0][0] == 250
    assert client.cmd("MAIL FROM:<a@example.net>")[0] == 250
    assert client.cmd("RSET")[0] == 250
    assert client.cmd("NOOP")[0] == 250
    assert client.cmd("RCPT TO:<bob@example.org>")[0] == 503  # RSET ended the transaction
    assert len(await stored()) == 3


async def test_a_whole_pipelined_transaction(accounts: World) -> None:
    c = LMTPClient(accounts.tcp)
    try:
        c.send(b"LHLO a.test\r\nMAIL FROM:<>\r\nRCPT TO:<bob@example.org>\r\n"
               b"RCPT TO:<nobody@example.org>\r\nRCPT TO:<carol@example.org>\r\nDATA\r\n")
        assert [c.reply()[0] for _ in range(5)] == [250, 250, 250, 550, 250]
        assert c.reply()[0] == 354
        c.send(b"Subject: p\r\n\r\nx\r\n.\r\nQUIT\r\n")
        assert [c.reply()[0] for _ in range(3)] == [250, 250, 221]
    finally:
        c.close()
    rows = await stored()
    assert len(rows) == 2 and rows[0]["body"] == b"Subject: p\n\nx\n"


async def test_oversized_message(client: LMTPClient) -> None:
    code, text = client.cmd(f"MAIL FROM:<a@example.net> SIZE={MAX_BYTES + 1}")
    assert code == 552 and text.startswith("5.2.3")
    big = b"Subject: big\n\n" + (b"x" * 998 + b"\n") * (MAX_BYTES // 999 + 100)
    rcpt, data = client.deliver("a@example.net", ["bob@example.org", "carol@example.org"], big)
    assert [c for c, _ in data] == [552, 552] and data[0][1].startswith("5.2.3")
    assert client.cmd("NOOP")[0] == 250  # the session goes on
    assert await stored() == []


async def test_data_waits_for_room_in_the_body_budget(accounts: World, mx_env: dict[str, str],
                                                    tmp_path: Path) -> None:
    """MAILEXEC_INGEST_BODY_MEMORY_BYTES holds LMTP bodies too: with room for one
    message of the declared SIZE=, a second client's DATA gets its 354 only once the
    first message is stored — it waits, it is not refused — and both are delivered."""
    env = _env(mx_env, int(accounts.policy.env["MAILEXEC_POLICY_PORT"]),
               MAILEXEC_INGEST_BODY_MEMORY_BYTES="150000")
    ingest = ServiceProcess("ingest", env, tmp_path / "ingest.log").start()
    where = ("127.0.0.1", int(env["MAILEXEC_LMTP_PORT"]))
    body = b"Subject: big\r\n\r\n" + b"b" * 99_000 + b"\r\n"
    a, b = LMTPClient(where), LMTPClient(where)
    try:
        for c in (a, b):
            c.lhlo()
            assert c.cmd(f"MAIL FROM:<a@example.net> SIZE={len(body)}")[0] == 250
            assert c.cmd("RCPT TO:<bob@example.org>")[0] == 250
        assert a.cmd("DATA")[0] == 354
        b.send(b"DATA\r\n")
        ready, _, _ = select.select([b.sock], [], [], 1.0)
        assert not ready  # no 354 for b while a's body holds the budget
        a.send(body + b".\r\n")
        assert a.reply()[0] == 250
        assert b.reply()[0] == 354
        b.send(body + b".\r\n")
        assert b.reply()[0] == 250
    finally:
        a.close()
        b.close()
        ingest.stop()
    assert [m["body"] for m in await stored()] == [body.replace(b"\r\n", b"\n")] * 2


def test_overlong_line(client: LMTPClient) -> None:
    code, text = client.cmd("NOOP " + "x" * 5000)
    assert code == 500 and text.startswith("5.5.2")
    assert client.cmd("NOOP")[0] == 250


def test_error_limit(client: LMTPClient) -> None:
    codes = [client.cmd("BOGUS")[0] for _ in range(20)]
    assert codes[:19] == [500] * 19
    assert client.reply()[0] == 421  # after the 20th error
    assert client.reply() == (0, "")  # and closed


def test_command_syntax_errors(client: LMTPClient) -> None:
    assert client.cmd("RCPT TO:<bob@example.org>")[0] == 503
    assert client.cmd("MAIL FROM:a@example.net")[0] == 501
    assert client.cmd("MAIL FROM:<a@example.net> FOO=1")[0] == 555
    assert client.cmd("MAIL FROM:<a@example.net> RET=ALL")[0] == 501
    assert client.cmd("MAIL FROM:<a b@example.net>")[0] == 553
    assert client.cmd("MAIL FROM:<a@example.net>")[0] == 250
    assert client.cmd("MAIL FROM:<a@example.net>")[0] == 503  # nested
    assert client.cmd("RCPT TO:<bob@example.org> FOO=1")[0] == 555
    assert client.cmd("RCPT TO:<bob@example.org> NOTIFY=NEVER,SUCCESS")[0] == 501
    assert client.cmd("RCPT TO:<bob@example.org> ORCPT=bob@example.org")[0] == 501
    assert client.cmd("RCPT TO:<>")[0] == 501
    assert client.cmd("RCPT TO:<bö@example.org>")[0] == 553  # needs SMTPUTF8
    assert client.cmd("BDAT 10 LAST")[0] == 502
    assert client.cmd("DATA")[0] == 503  # no recipient accepted


async def test_smtputf8_and_quoted_local_parts(client: LMTPClient) -> None:
    assert client.cmd("MAIL FROM:<sé@example.net> SMTPUTF8")[0] == 250
    # Valid SMTP, but no account can have these addresses (policy's account grammar):
    # refused for good at RCPT, never deferred.
    code, text = client.cmd("RCPT TO:<bö@example.org>")
    assert code == 550 and text.startswith("5.1.1")
    code, text = client.cmd('RCPT TO:<"a>b"@example.org>')
    assert code == 550 and text.startswith("5.1.1")
    assert client.cmd("RCPT TO:<bob@example.org>")[0] == 250
    assert client.cmd("DATA")[0] == 354
    client.send(b"Subject: u\r\n\r\nx\r\n.\r\n")
    assert client.reply()[0] == 250
    rows = await stored()
    assert [(r["address"]) for r in rows] == ["bob@example.org"]


async def test_bare_lf_dot_is_not_the_end(client: LMTPClient) -> None:
    assert client.cmd("MAIL FROM:<a@example.net>")[0] == 250
    assert client.cmd("RCPT TO:<bob@example.org>")[0] == 250
    assert client.cmd("DATA")[0] == 354
    # An SMTP-smuggling attempt: "\n.\n" and "\r\n.\n" must not end the message here.
    client.send(b"Subject: s\r\n\r\nbefore\n.\nMAIL FROM:<evil@x>\r\n.\nafter\r\n.\r\n")
    assert client.reply()[0] == 250
    rows = await stored()
    assert len(rows) == 1 and b"after" in rows[0]["body"] and b"evil" in rows[0]["body"]


async def test_delivery_over_the_unix_socket(accounts: World) -> None:
    c = LMTPClient(accounts.unix)
    try:
        c.lhlo()
        _, data = c.deliver("a@example.net", ["bob@example.org"], MSG)
        assert data[0][0] == 250
    finally:
        c.close()
    assert len(await stored()) == 1


def _connect_as(uid: int, gid: int, path: str) -> subprocess.CompletedProcess[str]:
    code = ("import socket,sys\ns=socket.socket(socket.AF_UNIX)\n"
            "try:\n s.connect(sys.argv[1]); print(s.recv(100).decode().strip())\n"
            "except OSError as e: print(type(e).__name__)\n")
    return subprocess.run(["/usr/bin/python3", "-c", code, path], user=uid, group=gid,
                          extra_groups=[], capture_output=True, text=True, timeout=30)


def test_socket_refuses_account_uid(world: World) -> None:
    if not os.access("/usr/bin/python3", os.X_OK) or os.geteuid() != 0:
        pytest.skip("needs root and /usr/bin/python3 to act as another uid")
    mode = os.stat(world.unix).st_mode & 0o777
    assert mode == 0o660 and os.stat(world.unix).st_gid == SOCKET_GID
    outsider = _connect_as(OUTSIDER_UID, OUTSIDER_UID, world.unix)
    assert outsider.stdout.strip() == "PermissionError", outsider
    member = _connect_as(OUTSIDER_UID, SOCKET_GID, world.unix)  # the MTA's group may
    assert member.stdout.startswith("220"), member


# --- a client outside the trusted networks (the "strict" ingest trusts 192.0.2.0/24 only)


def _plain(token: str) -> str:
    return b64encode(b"\x00mta\x00" + token.encode()).decode()


def test_untrusted_client_must_authenticate(accounts: World) -> None:
    c = LMTPClient(accounts.strict_tcp)
    try:
        ext = c.lhlo()
        assert "STARTTLS" in ext and not any(e.startswith("AUTH") for e in ext)
        code, text = c.cmd("MAIL FROM:<a@example.net>")
        assert code == 530 and text.startswith("5.7.0")
    finally:
        c.close()


def test_auth_needs_tls(accounts: World) -> None:
    c = LMTPClient(accounts.strict_tcp)
    try:
        c.lhlo()
        code, text = c.cmd(f"AUTH PLAIN {_plain(MTA_TOKEN)}")
        assert code == 538 and text.startswith("5.7.11")
    finally:
        c.close()


def test_starttls_discards_pipelined_commands(accounts: World) -> None:
    c = LMTPClient(accounts.strict_tcp)
    try:
        c.lhlo()
        c.send(b"STARTTLS\r\nMAIL FROM:<evil@example.net>\r\n")
        assert c.reply()[0] == 220
        c.starttls_after_reply()
        ext = c.lhlo()
        assert "AUTH PLAIN" in ext and "STARTTLS" not in ext
        assert c.cmd(f"AUTH PLAIN {_plain(MTA_TOKEN)}")[0] == 235
        assert c.cmd("RCPT TO:<bob@example.org>")[0] == 503  # the injected MAIL never counted
    finally:
        c.close()


async def test_auth_plain_after_starttls_submits(accounts: World) -> None:
    c = LMTPClient(accounts.strict_tcp)
    try:
        c.lhlo()
        c.starttls()
        c.lhlo()
        assert c.cmd("AUTH PLAIN")[0] == 334  # the response on a line of its own
        assert c.cmd(_plain(MTA_TOKEN))[0] == 235
        _, data = c.deliver("a@example.net", ["bob@example.org"], MSG)
        assert data[0][0] == 250
    finally:
        c.close()
    assert len(await stored()) == 1


def test_wrong_token_is_535_and_rate_limited(accounts: World) -> None:
    codes: list[int] = []
    while len(codes) < BAD_TOKEN_LIMIT + 1:
        c = LMTPClient(accounts.strict_tcp)
        try:
            c.lhlo()
            c.starttls()
            c.lhlo()
            for _ in range(10):
                codes.append(c.cmd(f"AUTH PLAIN {_plain('not-the-token')}")[0])
        finally:
            c.close()
    assert codes[0] == 535
    assert codes[-1] == 454  # the HTTP path's bad-token limit, per client address
    c = LMTPClient(accounts.strict_tcp)  # the right token still passes
    try:
        c.lhlo()
        c.starttls()
        c.lhlo()
        assert c.cmd(f"AUTH PLAIN {_plain(MTA_TOKEN)}")[0] == 235
    finally:
        c.close()


def test_idle_timeout(accounts: World) -> None:
    c = LMTPClient(accounts.strict_tcp)
    try:
        started = time.monotonic()
        code, text = c.reply()
        assert code == 421 and text.startswith("4.4.2")
        assert time.monotonic() - started < 5
        assert c.reply() == (0, "")
    finally:
        c.close()


def test_connection_limit(accounts: World) -> None:
    held = [LMTPClient(accounts.strict_tcp) for _ in range(3)]
    try:
        extra = LMTPClient(accounts.strict_tcp)
        assert extra.greeting[0] == 421 and extra.greeting[1].startswith("4.3.2")
        extra.close()
    finally:
        for c in held:
            c.close()


# --- dependencies down: 4xx, never 5xx, nothing half-stored


def test_policy_down_is_451_at_rcpt(mx_env: dict[str, str], tmp_path: Path) -> None:
    env = _env(mx_env, free_port())  # nothing listens on that policy port
    ingest = ServiceProcess("ingest", env, tmp_path / "ingest.log").start()
    try:
        c = LMTPClient(("127.0.0.1", int(env["MAILEXEC_LMTP_PORT"])))
        c.lhlo()
        assert c.cmd("MAIL FROM:<a@example.net>")[0] == 250
        code, text = c.cmd("RCPT TO:<bob@example.org>")
        assert code == 451 and text.startswith("4.3.0")
        c.close()
    finally:
        ingest.stop()


@pytest.mark.parametrize("dependency", ["broker", "database"])
async def test_dependency_down_at_data_is_451_and_nothing_is_stored(
    dependency: str, accounts: World, mx_env: dict[str, str], proxy_factory: Any, tmp_path: Path,
) -> None:
    extra: dict[str, str] = {}
    if dependency == "broker":
        proxy = proxy_factory(5672)
        extra["MAILEXEC_AMQP_URL"] = mx_env["MAILEXEC_AMQP_URL"].replace(":5672/", f":{proxy.port}/")
    else:
        proxy = proxy_factory(5432)
        url = make_url(mx_env["MAILEXEC_DATABASE_URL"]).set(port=proxy.port)
        extra["MAILEXEC_DATABASE_URL"] = url.render_as_string(hide_password=False)
    env = _env(mx_env, accounts.policy.port, **extra)
    ingest = ServiceProcess("ingest", env, tmp_path / "ingest.log").start()
    where = ("127.0.0.1", int(env["MAILEXEC_LMTP_PORT"]))
    try:
        c = LMTPClient(where)
        c.lhlo()
        assert c.deliver("a@example.net", ["bob@example.org"], MSG)[1][0][0] == 250
        proxy.cut()
        await asyncio.sleep(0.3)
        _, data = c.deliver("a@example.net", ["bob@example.org", "carol@example.org"], MSG)
        assert [code for code, _ in data] == [451, 451], data
        assert all(text.startswith("4.3.0") for _, text in data)
        c.close()
        assert len(await stored()) == 1  # only the first message
        proxy.restore()
        deadline = time.monotonic() + 30
        while True:  # the MTA's retry succeeds once the dependency is back
            c = LMTPClient(where)
            c.lhlo()
            _, data = c.deliver("a@example.net", ["bob@example.org"], MSG)
            c.close()
            if data[0][0] == 250 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert data[0][0] == 250, data
    finally:
        ingest.stop()


def test_shutdown_tells_connected_clients(mx_env: dict[str, str], accounts: World,
                                           tmp_path: Path) -> None:
    env = _env(mx_env, accounts.policy.port)
    ingest = ServiceProcess("ingest", env, tmp_path / "ingest.log").start()
    c = LMTPClient(("127.0.0.1", int(env["MAILEXEC_LMTP_PORT"])))
    try:
        c.lhlo()
        ingest.stop()
        code, text = c.reply()
        assert code == 421 and text.startswith("4.3.2")
    finally:
        c.close()


async def test_several_workers_share_tcp_and_the_socket(
    mx_env: dict[str, str], accounts: World, tmp_path: Path
) -> None:
    sock = str(tmp_path / "w.sock")
    env = _env(mx_env, accounts.policy.port, MAILEXEC_INGEST_WORKERS="2", MAILEXEC_LMTP_SOCKET=sock)
    ingest = ServiceProcess("ingest", env, tmp_path / "ingest.log").start()
    assert ingest.proc is not None
    try:
        def workers() -> list[int]:
            out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(ingest.proc.pid)],  # type: ignore[union-attr]
                                 capture_output=True, text=True).stdout
            return [int(p) for p in out.split()]

        first = workers()
        assert len(first) == 2
        for where in [("127.0.0.1", int(env["MAILEXEC_LMTP_PORT"])), sock] * 5:
            c = LMTPClient(where)
            c.lhlo()
            assert c.deliver("a@example.net", ["bob@example.org"], MSG)[1][0][0] == 250
            c.close()
        assert len(await stored()) == 10
        os.kill(first[0], signal.SIGKILL)  # a worker dies: the other serves, a new one starts
        c = LMTPClient(sock)
        c.lhlo()
        assert c.deliver("a@example.net", ["bob@example.org"], MSG)[1][0][0] == 250
        c.close()
        deadline = time.monotonic() + 20
        while (len(workers()) != 2 or first[0] in workers()) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        assert len(workers()) == 2 and first[0] not in workers()
    finally:
        ingest.stop()
    assert not Path(sock).exists()  # noqa: ASYNC240 - the supervisor removes the socket it bound


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_second_ingest_on_the_same_lmtp_port_refuses_to_start(
    mx_env: dict[str, str], accounts: World, tmp_path: Path, workers: str
) -> None:
    """SO_REUSEPORT is for one ingest's own workers: a second ingest (same uid) pointed at a
    port already served must not silently take half of the MTA's connections."""
    port = accounts.tcp[1]
    env = _env(mx_env, accounts.policy.port, MAILEXEC_LMTP_PORT=str(port),
               MAILEXEC_INGEST_WORKERS=workers)
    second = ServiceProcess("ingest", env, tmp_path / "second.log")
    with pytest.raises(RuntimeError, match="in use"):
        second.start(timeout=30)
    second.stop()
    c = LMTPClient(accounts.tcp)  # the first one still serves every connection
    try:
        c.lhlo()
        assert c.deliver("a@example.net", ["bob@example.org"], MSG)[1][0][0] == 250
    finally:
        c.close()


def _swaks() -> str | None:
    if shutil.which("swaks"):
        return shutil.which("swaks")
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y", "-q", "swaks"],
                       capture_output=True, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    return shutil.which("swaks")


async def test_swaks_delivers_over_lmtp(accounts: World) -> None:
    swaks = _swaks()
    if swaks is None:
        pytest.skip("swaks is not installed and could not be installed (Debian package swaks)")
    host, port = accounts.tcp
    r = subprocess.run([swaks, "--protocol", "LMTP", "--server", f"{host}:{port}",  # noqa: ASYNC221
                        "--from", "a@example.net", "--to", "bob@example.org,carol@example.org",
                        "--body", "hello from swaks"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("<-  250 2.0.0 <") == 2, r.stdout  # one reply per recipient
    assert len(await stored()) == 2
