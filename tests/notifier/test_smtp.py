"""services.notifier.smtp against a real aiosmtpd server: URL forms, STARTTLS, implicit
TLS, AUTH, and how relay answers are classified (retry vs give up)."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest

from services.notifier.smtp import SmtpError, SmtpUrlError, parse_smtp_url, send
from tests.conftest import free_port
from tests.notifier.conftest import SmtpSink, accept_any_login

MESSAGE = b"From: MAILER-DAEMON@mx.test.example\r\nTo: a@example.net\r\nSubject: t\r\n\r\nhello\r\n"


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    key, crt = d / "key.pem", d / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(crt),
        ],
        check=True,
        capture_output=True,
    )
    return crt, key


def _server_ctx(cert: tuple[Path, Path]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


def test_url_forms() -> None:
    t = parse_smtp_url("smtp://127.0.0.1")
    assert (t.host, t.port, t.implicit_tls, t.starttls, t.username) == ("127.0.0.1", 25, False, False, None)
    t = parse_smtp_url("smtp://relay.example:587?starttls=true&timeout=7&helo=mx.example")
    assert (t.port, t.starttls, t.timeout, t.helo) == (587, True, 7.0, "mx.example")
    t = parse_smtp_url("smtp+starttls://u%40x:p%3Aw@relay.example:2525?verify=false")
    assert (t.starttls, t.username, t.password, t.verify) == (True, "u@x", "p:w", False)
    assert "p:w" not in t.describe() and "u@x@relay.example" in t.describe()
    t = parse_smtp_url("smtps://relay.example?cafile=/etc/ca.pem")
    assert (t.port, t.implicit_tls, t.cafile) == (465, True, "/etc/ca.pem")
    for bad in (
        "http://x",
        "smtp://",
        "smtps://x?starttls=true",
        "smtp://x?starttls=maybe",
        "smtp://x:99999",
    ):
        with pytest.raises(SmtpUrlError):
            parse_smtp_url(bad)


async def test_plain_send_uses_null_sender(sink: SmtpSink) -> None:
    reply = await send(parse_smtp_url(sink.url), "a@example.net", MESSAGE)
    assert "OK" in reply
    (got,) = sink.received
    assert got.mail_from == "<>" and got.rcpt_tos == ["a@example.net"] and not got.tls
    assert got.data.endswith(b"hello\r\n")


async def test_starttls_with_auth(cert: tuple[Path, Path]) -> None:
    sink = await SmtpSink(
        tls_context=_server_ctx(cert),
        require_starttls=True,
        auth_required=True,
        authenticator=accept_any_login,
    ).start()
    try:
        base = f"smtp+starttls://dsn:s3cret@127.0.0.1:{sink.port}?cafile={cert[0]}"
        await send(parse_smtp_url(base), "a@example.net", MESSAGE)
        (got,) = sink.received
        assert got.tls and got.auth.login == b"dsn"

        with pytest.raises(SmtpError) as wrong:  # wrong password: the operator's to fix, retry
            await send(parse_smtp_url(base.replace("s3cret", "wrong")), "a@example.net", MESSAGE)
        assert not wrong.value.permanent

        with pytest.raises(SmtpError) as untrusted:  # certificate not trusted: retry, never plain
            await send(
                parse_smtp_url(f"smtp://dsn:s3cret@127.0.0.1:{sink.port}?starttls=true"),
                "a@example.net",
                MESSAGE,
            )
        assert not untrusted.value.permanent
        assert len(sink.received) == 1
    finally:
        await sink.stop()


async def test_implicit_tls(cert: tuple[Path, Path]) -> None:
    sink = await SmtpSink().start(ssl=_server_ctx(cert))
    try:
        await send(parse_smtp_url(f"smtps://127.0.0.1:{sink.port}?verify=false"), "a@example.net", MESSAGE)
        assert len(sink.received) == 1
    finally:
        await sink.stop()


async def test_answers_are_classified(sink: SmtpSink) -> None:
    target = parse_smtp_url(sink.url)
    sink.handler.data_replies = ["452 4.3.1 insufficient storage", "554 5.6.0 content rejected"]
    with pytest.raises(SmtpError) as soft:
        await send(target, "a@example.net", MESSAGE)
    assert not soft.value.permanent and soft.value.code == 452
    with pytest.raises(SmtpError) as hard:
        await send(target, "a@example.net", MESSAGE)
    assert hard.value.permanent and hard.value.code == 554

    sink.handler.refuse_rcpt["gone@example.net"] = "550 5.1.1 no such user"
    with pytest.raises(SmtpError) as rcpt:
        await send(target, "gone@example.net", MESSAGE)
    assert rcpt.value.permanent and "550 5.1.1" in str(rcpt.value)

    with pytest.raises(SmtpError) as down:
        await send(parse_smtp_url(f"smtp://127.0.0.1:{free_port()}"), "a@example.net", MESSAGE)
    assert not down.value.permanent
    assert sink.received == []
