"""`mailexec submit` as an MTA runs it: a real process, stdin, sysexits exit codes."""

from __future__ import annotations

import hashlib
import os
import shutil
import ssl
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mailexec.submit import OPTIONS, simple_toml
from tests.cli.fake_ingest import Answer, FakeIngest
from tests.cli.helpers import mx, mx_json
from tests.conftest import free_port

MSG = b"From: alice@example.net\r\nTo: bob@example.org\r\nSubject: hi\r\n\r\nhello\r\n"


def submit(env: dict[str, str], *args: str, body: bytes = MSG, real: bool = True, **kw: Any) -> Any:
    """`mailexec submit` as the MTA runs it (a process); real=False: in-process, same code."""
    return mx(env, "submit", *args, input=body, subprocess_=real, **kw)


def test_submit_exit_codes(env: dict[str, str]) -> None:
    r = submit(
        env,
        "--from",
        "alice@example.net",
        "--to",
        "bob@example.org",
        "--to",
        "carol@example.org",
        "--notify",
        "success,failure",
        "--ret",
        "hdrs",
        "--envid",
        "E1",
        "--verbose",
    )
    assert r.returncode == 0, r.stderr
    msg_id = r.stdout.split("queued as ")[1].strip()
    msg = mx_json(env, "messages", "show", msg_id)
    assert msg["envelope"]["from"] == "alice@example.net" and msg["envelope"]["ret"] == "HDRS"
    assert sorted(x["address"] for x in msg["recipients"]) == ["bob@example.org", "carol@example.org"]
    human = mx(env, "messages", "show", msg_id)
    assert human.returncode == 0 and "bob@example.org" in human.stdout
    assert any(state in human.stdout for state in ("queued", "running", "bounced"))  # no such account
    assert msg_id in mx(env, "messages", "list").stdout

    # null sender, as Postfix passes it with null_sender= (or its default MAILER-DAEMON)
    for null in ("--from=", "--from=<>", "--from=MAILER-DAEMON"):
        r = submit(env, null, "--to=bob@example.org", "--verbose", real=False)
        assert r.returncode == 0, r.stderr
        assert mx_json(env, "messages", "show", r.stdout.split()[-1])["envelope"]["from"] == ""

    # the same idempotency key and message: one id; a different message with it: another id
    ids = {
        submit(
            env, "-f", "a@example.net", "-t", "b@example.org", "--idempotency-key", "Q1", "-v", real=False
        ).stdout
        for _ in range(2)
    }
    assert len(ids) == 1
    other = submit(
        env,
        "-f",
        "a@example.net",
        "-t",
        "b@example.org",
        "--idempotency-key",
        "Q1",
        "-v",
        body=MSG + b"x\r\n",
        real=False,
    ).stdout
    assert other not in ids

    # 64: usage
    assert submit(env, "--to", "bob@example.org").returncode == 64
    assert submit(env, "--from", "a@example.net", real=False).returncode == 64
    assert submit(env, "--from", "a@example.net", "--to", "bob@example.org", "--bogus").returncode == 64
    r = submit(env, "--from", "a@example.net", "--to", "bob@example.org", "--ret", "SOME", real=False)
    assert r.returncode == 64 and r.stderr.startswith("5.3.5 ")

    # 65: ingest refuses the data
    r = submit(env, "--from", "a@example.net", "--to", "bob@example.org", body=b"", real=False)
    assert r.returncode == 65 and "HTTP 400" in r.stderr
    r = submit(env, "--from", "a@example.net", "--to", "bob@example.org", body=MSG + b"x" * 5000)
    assert r.returncode == 65 and r.stderr.startswith("5.2.3 ") and "413" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

    # 77: wrong mta token (or 75 when the admin prefers retrying)
    r = submit(env, "--from", "a@example.net", "--to", "bob@example.org", "--token", "nope")
    assert r.returncode == 77 and "MAILEXEC_INGEST_TOKEN" in r.stderr
    r = submit(
        env,
        "--from",
        "a@example.net",
        "--to",
        "bob@example.org",
        "--token",
        "nope",
        "--defer-auth-errors",
        real=False,
    )
    assert r.returncode == 75 and r.stderr.startswith("4.7.0 ")
    # an admin token is not an mta token... but admin may do everything: accepted
    r = submit(
        env,
        "-f",
        "a@example.net",
        "-t",
        "bob@example.org",
        "--token",
        env["MAILEXEC_ADMIN_TOKEN"],
        real=False,
    )
    assert r.returncode == 0, r.stderr


def test_submit_tempfails_when_ingest_is_down(env: dict[str, str]) -> None:
    env["MAILEXEC_INGEST_URL"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    r = submit(env, "--from", "a@example.net", "--to", "bob@example.org")
    assert r.returncode == 75
    assert r.stderr.startswith("4.3.0 ") and "cannot reach ingest" in r.stderr and "retry" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# ---- the same command against a stand-in ingest: what goes over the wire, odd answers ----
# (no pipeline needed; the installed console script, as an MTA runs it)

MAILEXEC = Path(sys.executable).with_name("mailexec")


def light(
    url: str, *args: str, body: bytes = MSG, token: str | None = "mta-token", **env: str
) -> subprocess.CompletedProcess[str]:
    e = {"PATH": "/usr/bin:/bin", "MAILEXEC_CLI_CONFIG": os.devnull, "MAILEXEC_INGEST_URL": url, **env}
    if token is not None:
        e["MAILEXEC_INGEST_TOKEN"] = token
    proc = subprocess.run(
        [str(MAILEXEC), "submit", *args], input=body, capture_output=True, env=e, timeout=60
    )
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def one_line(r: subprocess.CompletedProcess[str], status: str) -> bool:
    return r.stderr.startswith(status + " mailexec submit: ") and r.stderr.count("\n") == 1


def expected_key(key: str, sender: str, rcpts: list[str], body: bytes) -> str:
    """The idempotency key as the typer command computed it (the hash must never change)."""
    material = "\0".join([key, sender, *sorted(rcpts), hashlib.sha256(body).hexdigest()])
    return "mx1-" + hashlib.sha256(material.encode()).hexdigest()


def test_submit_sends_what_ingest_expects() -> None:
    with FakeIngest() as ingest:
        r = light(
            ingest.url,
            "-fa@example.net",
            "-t",
            "carol@example.org",
            "--to=bob@example.org",
            "--envid",
            "E 1+x",
            "--ret=hdrs",
            "--notify",
            "success, delay",
            "--idempotency-key=Q1",
            "-v",
        )
        assert r.returncode == 0 and r.stderr == "", r.stderr
        got = ingest.received[-1]
        assert r.stdout.startswith("queued as ") and len(r.stdout.split()[-1]) == 36
        assert got.path == "/v1/messages" and got.body == MSG
        assert got.query == {
            "from": ["a@example.net"],
            "to": ["carol@example.org", "bob@example.org"],
            "envid": ["E 1+x"],
            "ret": ["HDRS"],
            "notify": ["SUCCESS,DELAY"],
        }
        assert got.headers["Content-Type"] == "message/rfc822"
        assert got.headers["Content-Length"] == str(len(MSG))
        assert got.headers["Authorization"] == "Bearer mta-token"
        assert got.headers["Idempotency-Key"] == expected_key(
            "Q1", "a@example.net", ["carol@example.org", "bob@example.org"], MSG
        )

        # the null sender in each spelling pipe(8) may use; short options bundled like click's
        for null in (["--from="], ["--from", "<>"], ["-fMAILER-DAEMON"], ["-vf", ""]):
            r = light(ingest.url, *null, "--to", "bob@example.org")
            assert r.returncode == 0, r.stderr
            assert ingest.received[-1].query["from"] == [""]

        # over 1 MiB: spooled to a temporary file, sent whole, hashed the same way
        big = os.urandom(3 << 20)
        r = light(
            ingest.url, "-f", "a@example.net", "-t", "b@example.org", "--idempotency-key", "K", body=big
        )
        assert r.returncode == 0, r.stderr
        got = ingest.received[-1]
        assert got.body == big and got.headers["Content-Length"] == str(len(big))
        assert got.headers["Idempotency-Key"] == expected_key("K", "a@example.net", ["b@example.org"], big)


@pytest.mark.parametrize(
    ("answer", "flags", "exit_code", "status", "text"),
    [
        (
            Answer(503, b'{"error": {"code": "unavailable", "message": "db down"}}'),
            [],
            75,
            "4.3.2",
            "db down",
        ),
        (Answer(500, b"<html>oops</html>"), [], 75, "4.3.0", "HTTP 500: <html>oops</html>; will retry"),
        (Answer(429, b"{}"), [], 75, "4.3.0", "HTTP 429"),
        (Answer(404, b'{"detail": "Not Found"}'), [], 75, "4.3.0", "HTTP 404: Not Found; will retry"),
        (Answer(401, b"{}"), [], 77, "5.7.0", "MAILEXEC_INGEST_TOKEN"),
        (Answer(403, b"{}"), ["--defer-auth-errors"], 75, "4.7.0", "HTTP 403"),
        (Answer(413, b'{"error": {"code": "too_large", "message": "too big"}}'), [], 65, "5.2.3", "too big"),
        (Answer(400, b'{"error": {"code": "bad_address", "message": "bad to"}}'), [], 65, "5.6.0", "bad to"),
        (Answer(400, b'{"error": {"code": "unknown_recipient", "message": "who"}}'), [], 67, "5.1.1", "who"),
        (Answer(202, chunked=True), ["-v"], 0, "", ""),
        (Answer(202, delay=3), ["--timeout", "0.5"], 75, "4.3.0", "did not answer in time (ReadTimeout)"),
    ],
)
def test_submit_answers(answer: Answer, flags: list[str], exit_code: int, status: str, text: str) -> None:
    with FakeIngest(answer) as ingest:
        r = light(ingest.url, "-f", "a@example.net", "-t", "b@example.org", *flags)
    assert r.returncode == exit_code, r.stderr
    if exit_code == 0:
        assert r.stdout.startswith("queued as ") and len(r.stdout.split()[-1]) == 36
    else:
        assert one_line(r, status) and text in r.stderr, r.stderr


def test_submit_hears_an_early_refusal() -> None:
    """A server may answer 413 and close before reading a big body: its answer counts."""
    refuse = Answer(413, b'{"error": {"message": "exceeds 4000 bytes"}}', read_body=False)
    with FakeIngest(refuse) as ingest:
        r = light(ingest.url, "-f", "a@example.net", "-t", "b@example.org", body=b"x" * (8 << 20))
    assert r.returncode == 65 and one_line(r, "5.2.3") and "exceeds 4000 bytes" in r.stderr, r.stderr


def test_submit_config_and_usage(tmp_path: Path) -> None:
    with FakeIngest() as ingest:
        cfg = tmp_path / "cli.toml"
        cfg.write_text(f'ingest_url = "{ingest.url}"\ningest_token = "from-file"\n')
        r = light("", "-f", "a@example.net", "-t", "b@example.org", token=None, MAILEXEC_CLI_CONFIG=str(cfg))
        assert r.returncode == 0 and ingest.received[-1].headers["Authorization"] == "Bearer from-file"
        # the flag beats the environment, which beats the file
        r = light(
            "http://127.0.0.1:1",
            "-f",
            "a@example.net",
            "-t",
            "b@example.org",
            "--ingest-url",
            ingest.url,
            "--token",
            "flag",
            MAILEXEC_CLI_CONFIG=str(cfg),
        )
        assert r.returncode == 0 and ingest.received[-1].headers["Authorization"] == "Bearer flag"
    cfg.write_text("ingest_token = \n")
    r = light("", "-f", "a@example.net", "-t", "b@example.org", token=None, MAILEXEC_CLI_CONFIG=str(cfg))
    assert r.returncode == 75 and one_line(r, "4.3.5") and "cannot parse the CLI config file" in r.stderr
    r = light("http://127.0.0.1:1", "-f", "a@example.net", "-t", "b@example.org", token=None)
    assert r.returncode == 75 and one_line(r, "4.3.5") and "no mta token" in r.stderr

    for bad in (
        ["--to", "b@example.org"],
        ["--from=a@example.net"],
        ["--from"],
        ["-f", "a@example.net", "-t", "b@example.org", "--bogus"],
        ["-f", "a@example.net", "-t", "b@example.org", "--verbose=yes"],
        ["-f", "a@example.net", "-t", "b@example.org", "extra"],
        ["-f", "a@example.net", "-t", "b@example.org", "--timeout", "soon"],
        ["-f", "a@example.net", "-t", "b@example.org", "--ret", "SOME"],
        ["-f", "a@example.net", "-t", "b@example.org", "--notify", "never,success"],
        ["-f", "a b@example.net", "-t", "b@example.org"],
    ):
        r = light("http://127.0.0.1:1", *bad)
        assert r.returncode == 64 and one_line(r, "5.3.5"), (bad, r.stderr)

    r = light("http://127.0.0.1:1", "--help")
    assert r.returncode == 0 and r.stderr == ""
    for option, *_ in OPTIONS:
        assert option in r.stdout


def test_submit_over_https(tmp_path: Path) -> None:
    if not shutil.which("openssl"):
        pytest.skip("no openssl to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
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
            "/CN=ingest",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    with FakeIngest(tls=tls) as ingest:
        assert ingest.url.startswith("https://")
        r = light(ingest.url, "-f", "a@example.net", "-t", "b@example.org", SSL_CERT_FILE=str(cert))
        assert r.returncode == 0, r.stderr
        assert ingest.received[-1].body == MSG
        r = light(ingest.url, "-f", "a@example.net", "-t", "b@example.org")  # not in certifi's bundle
        assert r.returncode == 75 and one_line(r, "4.3.0") and "CERTIFICATE_VERIFY_FAILED" in r.stderr


def test_submit_is_registered_once() -> None:
    """`mailexec --help` lists submit; typer's entry hands every argument to the same function."""
    from typer.main import get_command
    from typer.testing import CliRunner

    from mailexec.cli import app

    group = get_command(app)
    assert list(group.commands).count("submit") == 1  # type: ignore[attr-defined]
    assert [c.name for c in app.registered_commands].count("submit") == 1
    r = CliRunner().invoke(app, ["submit", "--help"])
    assert r.exit_code == 0 and "--idempotency-key" in r.stdout and "--defer-auth-errors" in r.stdout
    r = CliRunner().invoke(app, ["submit", "--from=a@example.net"])
    assert r.exit_code == 64 and r.stderr.startswith("5.3.5 ")


@given(
    st.lists(
        st.one_of(
            st.text(alphabet="ab_-1 \t=\"'#\\\r.[]\x01\x7f€", max_size=14),
            st.builds(
                lambda k, q, v: f"{k} = {q}{v}",
                st.sampled_from(["k", "a_b", "1", "k.x", "k k"]),
                st.sampled_from(['"', "'", '"""']),
                st.text(alphabet="ab \t=\"'#\\\r\x01\x7f€", max_size=10),
            ),
        ),
        max_size=4,
    )
)
@example(['ingest_url = "http://ingest:8025"  # c', "", "\tingest_token = 'x\"y'\r", "# done"])
def test_the_simple_config_reader_agrees_with_tomllib(lines: list[str]) -> None:
    text = "\n".join(lines)
    simple = simple_toml(text)
    if simple is not None:  # None: tomllib reads it
        assert simple == tomllib.loads(text)
