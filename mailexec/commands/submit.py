"""`mailexec submit`: the MTA's side (Postfix pipe(8), sendmail prog mailer, Exim pipe transport).

Reads one message on stdin, spools it (memory up to 1 MiB, then a temporary file), and
POSTs it to ingest ``/v1/messages`` with a Content-Length, authenticated with the mta token
(``--token``, ``MAILEXEC_INGEST_TOKEN``, or ``ingest_token`` in the CLI config file).

Exit status follows sysexits.h, which every MTA understands, and one line on stderr that
starts with an RFC 3463 status code (pipe(8) puts it in the bounce or the log):

====  ==============  ============================================================
0     EX_OK           ingest answered 202: stored durably, every job queued
64    EX_USAGE        bad command line (missing --to, bad --ret/--notify, …)
65    EX_DATAERR      ingest refused the message: 400, 411, 413 (5.2.3), 415, 422
67    EX_NOUSER       ingest said a recipient does not exist
75    EX_TEMPFAIL     ingest unreachable, timed out, 429 or any 5xx (503 = its DB or
                      broker is down): nothing was accepted, the MTA retries later
77    EX_NOPERM       401/403: the mta token is wrong (``--defer-auth-errors`` → 75)
====  ==============  ============================================================

Nothing accepted is lost: exit 0 only after the 202. After a timeout ingest may have
stored the message anyway; ``--idempotency-key`` (Postfix: ``${queue_id}``) makes the MTA's
retry return the same id instead of queueing twice. The key sent is a hash of the given
key with the envelope and the body's SHA-256, so a recycled queue id never merges two
different messages.
"""

from __future__ import annotations

import hashlib
import re
import sys
import tempfile
from collections.abc import Iterator
from typing import IO, Annotated, Any

import typer
from typer import core as typer_core
from typer.core import TyperCommand

from mailexec.client import (
    EX_DATAERR,
    EX_NOPERM,
    EX_NOUSER,
    EX_OK,
    EX_TEMPFAIL,
    EX_USAGE,
    ApiError,
    Client,
    ClientConfig,
)

SPOOL_MEMORY_BYTES = 1 << 20
CHUNK = 64 * 1024
NOTIFY_WORDS = {"SUCCESS", "FAILURE", "DELAY"}
NOUSER_CODES = {"unknown_recipient", "unknown_account", "no_such_user", "nouser", "user_unknown"}
_BAD_ADDR = re.compile(r"[\x00-\x20\x7f<>]")


class SubmitCommand(TyperCommand):
    """Command-line errors exit 64 (EX_USAGE), not click's 2: MTAs read sysexits."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except typer_core._click.exceptions.UsageError as exc:  # typer vendors its click
            exc.exit_code = EX_USAGE
            raise


def _die(code: int, status: str, text: str) -> typer.Exit:
    sys.stderr.write(f"{status} mailexec submit: {' '.join(text.split())}\n")
    sys.stderr.flush()
    return typer.Exit(code)


def normalise_sender(sender: str) -> str:
    s = sender.strip()
    if s in ("<>", "") or s.upper() == "MAILER-DAEMON":  # pipe(8)'s default null_sender text
        return ""
    return s[1:-1] if s.startswith("<") and s.endswith(">") else s


def validate(sender: str, rcpts: list[str], ret: str | None, notify: str | None) -> str | None:
    for addr in [sender, *rcpts] if sender else rcpts:
        if _BAD_ADDR.search(addr) or "@" not in addr:
            return f"invalid address {addr!r} (expected local@domain)"
    if ret is not None and ret.upper() not in ("FULL", "HDRS"):
        return f"--ret must be FULL or HDRS, not {ret!r}"
    if notify is not None:
        words = {w.strip().upper() for w in notify.split(",") if w.strip()}
        if not words or (words != {"NEVER"} and not words <= NOTIFY_WORDS):
            return f"--notify must be NEVER or a list of SUCCESS,FAILURE,DELAY, not {notify!r}"
    return None


def spool(stream: IO[bytes]) -> tuple[IO[bytes], int, str]:
    """Copy stdin to a spool; return it rewound, its size and its SHA-256."""
    buf: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)  # noqa: SIM115
    digest = hashlib.sha256()
    size = 0
    while chunk := stream.read(CHUNK):
        buf.write(chunk)
        digest.update(chunk)
        size += len(chunk)
    buf.seek(0)
    return buf, size, digest.hexdigest()


def _chunks(buf: IO[bytes]) -> Iterator[bytes]:
    while chunk := buf.read(CHUNK):
        yield chunk


def idempotency(key: str, sender: str, rcpts: list[str], body_sha: str) -> str:
    h = hashlib.sha256("\0".join([key, sender, *sorted(rcpts), body_sha]).encode("utf-8", "surrogateescape"))
    return "mx1-" + h.hexdigest()


def classify(exc: ApiError, defer_auth_errors: bool) -> tuple[int, str]:
    """(exit code, status code) for a failed submission."""
    st = exc.status
    if st is None or st == 429 or st >= 500:
        return EX_TEMPFAIL, "4.3.0" if st != 503 else "4.3.2"
    if st in (401, 403):
        return (EX_TEMPFAIL, "4.7.0") if defer_auth_errors else (EX_NOPERM, "5.7.0")
    if (exc.code or "") in NOUSER_CODES:
        return EX_NOUSER, "5.1.1"
    if st in (411, 413):
        return EX_DATAERR, "5.2.3"
    if st in (400, 415, 422):
        return EX_DATAERR, "5.6.0"
    return EX_TEMPFAIL, "4.3.0"  # anything unexpected (a 404 means a wrong URL): retry


def submit(
    sender: Annotated[
        str | None,
        typer.Option("--from", "-f", help="envelope sender; empty, <> or MAILER-DAEMON = null sender"),
    ] = None,
    rcpts: Annotated[
        list[str] | None, typer.Option("--to", "-t", help="envelope recipient (repeat for several)")
    ] = None,
    envid: Annotated[str | None, typer.Option(help="DSN ENVID (RFC 3461)")] = None,
    ret: Annotated[str | None, typer.Option(help="DSN RET: FULL or HDRS")] = None,
    notify: Annotated[
        str | None, typer.Option(help="DSN NOTIFY: NEVER or SUCCESS,FAILURE,DELAY (default FAILURE,DELAY)")
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option("--idempotency-key", help="same key + same message = same id (Postfix: ${queue_id})"),
    ] = None,
    token: Annotated[
        str | None, typer.Option("--token", help="mta token (default MAILEXEC_INGEST_TOKEN / ingest_token)")
    ] = None,
    ingest_url: Annotated[
        str | None, typer.Option("--ingest-url", help="default MAILEXEC_INGEST_URL")
    ] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for ingest")] = 120.0,
    defer_auth_errors: Annotated[
        bool, typer.Option("--defer-auth-errors", help="exit 75 (retry) instead of 77 on 401/403")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="print the message id on stdout")] = False,
) -> None:
    """Submit the message on stdin to ingest (for MTAs); exit status per sysexits."""
    if sender is None:
        raise _die(EX_USAGE, "5.3.5", "--from is required (use --from= for the null sender)")
    if not rcpts:
        raise _die(EX_USAGE, "5.3.5", "at least one --to is required")
    from_addr = normalise_sender(sender)
    to = [r.strip() for r in rcpts]
    problem = validate(from_addr, to, ret, notify)
    if problem:
        raise _die(EX_USAGE, "5.3.5", problem)
    try:
        config = ClientConfig.load(
            token=token,
            token_env="MAILEXEC_INGEST_TOKEN",
            token_key="ingest_token",
            urls={"ingest": ingest_url},
            timeout=timeout,
        )
    except ApiError as exc:
        raise _die(EX_TEMPFAIL, "4.3.5", exc.message) from None
    if not config.token:
        raise _die(
            EX_TEMPFAIL, "4.3.5", "no mta token: set MAILEXEC_INGEST_TOKEN or ingest_token in the CLI config"
        )
    try:
        buf, size, body_sha = spool(sys.stdin.buffer)
    except OSError as exc:
        raise _die(EX_TEMPFAIL, "4.3.0", f"cannot read the message: {exc}") from None
    params: list[tuple[str, str]] = [("from", from_addr), *(("to", r) for r in to)]
    if envid is not None:
        params.append(("envid", envid))
    if ret is not None:
        params.append(("ret", ret.upper()))
    if notify is not None:
        params.append(("notify", ",".join(w.strip().upper() for w in notify.split(",") if w.strip())))
    headers = {"Content-Type": "message/rfc822", "Content-Length": str(size)}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency(idempotency_key, from_addr, to, body_sha)
    body: Any = None
    with Client(config) as client, buf:
        try:
            resp = client.request(
                "POST",
                "ingest",
                "/v1/messages",
                params=params,
                content=_chunks(buf),
                headers=headers,
                ok=(200, 201, 202),
            )
        except ApiError as exc:
            code, status = classify(exc, defer_auth_errors)
            if exc.status in (401, 403):
                text = f"ingest refused the mta token (HTTP {exc.status}): check MAILEXEC_INGEST_TOKEN"
            elif exc.status is None:
                text = f"{exc.message}; will retry"
            else:
                text = f"ingest answered HTTP {exc.status}: {exc.message}"
                if code == EX_TEMPFAIL:
                    text += "; will retry"
            raise _die(code, status, text) from None
        try:
            body = resp.json()
        except ValueError:
            body = {}
    if verbose:
        sys.stdout.write(f"queued as {body.get('id', '?')}\n")
    raise typer.Exit(EX_OK)
