"""LMTP (RFC 2033) in ingest: the MTA-native form of ``POST /v1/messages``.

Trusts
    Nothing a client sends. The only trust decision is *who* may submit without AUTH:
    clients whose address is in ``MAILEXEC_LMTP_TRUSTED_NETWORKS`` and clients of the
    Unix socket (``MAILEXEC_LMTP_SOCKET``), which its mode and group keep closed to
    account uids. Everyone else must ``STARTTLS`` and then ``AUTH PLAIN`` as ``mta`` with
    an mta token (the HTTP path's token check, ``shared.auth.authenticate_token``, with
    the same bad-token rate limit).

Defends against (test of each in ``tests/ingest/test_lmtp.py`` unless named)
    - unauthenticated submission from outside the trusted networks: ``530 5.7.0`` at MAIL
      (``test_untrusted_client_must_authenticate``); AUTH in clear: ``538 5.7.11``
      (``test_auth_needs_tls``); a wrong token: ``535 5.7.8``, then ``454 4.7.0`` once the
      rate limit trips (``test_wrong_token_is_535_and_rate_limited``);
    - account uids reaching the Unix socket (``test_socket_refuses_account_uid``);
    - memory exhaustion: command lines over ``MAX_LINE`` get ``500 5.5.2``
      (``test_overlong_line``), a message over the size limit is discarded as it streams
      in and answered ``552 5.2.3`` per recipient (``test_oversized_message``), at most
      ``MAILEXEC_LMTP_MAX_CONNECTIONS`` connections (``421 4.3.2``,
      ``test_connection_limit``), idle connections closed (``test_idle_timeout``), too
      many errors end the session (``test_error_limit``);
    - SMTP smuggling: only ``<CRLF>.<CRLF>`` ends the data; a bare-LF dot line is data
      (``test_bare_lf_dot_is_not_the_end``);
    - STARTTLS command injection: bytes pipelined after ``STARTTLS`` are discarded, and
      the session starts over (``test_starttls_discards_pipelined_commands``).

Guarantees (SPEC §2)
    A recipient's ``250`` after DATA only once the message is stored and its job
    confirmed by RabbitMQ (``Outbox.submit``, shared with HTTP); any failure there is
    ``451 4.3.0`` for every recipient and nothing is half-stored. RCPT-time refusals come
    from ``recipients.AccountCheck`` (policy unreachable → ``451``, never a 5xx).
    RET/ENVID are kept per message, NOTIFY/ORCPT per recipient. The body is stored with
    LF line ends, the bytes a program also gets through pipe(8).

Does not
    Deduplicate: a connection dropped after the final dot but before the replies makes
    the MTA send again, and the program may then run twice (never zero times;
    docs/mta-integration.md, "The duplicate window"). No CHUNKING/BINARYMIME, no VRFY.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import ipaddress
import logging
import os
import socket
import ssl
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

from shared.auth import authenticate_token
from shared.bodybudget import BodyBudget, Hold
from shared.errors import BadRequest, MailexecError, TooManyRequests, Unauthorized
from shared.settings import Settings

from . import metrics
from .envelope import (
    DEFAULT_NOTIFY,
    MAX_RECIPIENTS,
    SUBMIT_ROLES,
    Envelope,
    Recipient,
    make_recipient,
    parse_envid,
    parse_notify,
    parse_orcpt,
    parse_ret,
    parse_sender,
)
from .publish_outbox import Outbox
from .recipients import AccountCheck, Answer

log = logging.getLogger("mailexec.lmtp")

MAX_LINE = 4096  # RFC 5321 allows 512 + 40 per extension; ORCPT/ENVID make lines long
MAX_ERRORS = 20
HIGH_WATER = 256 * 1024  # command bytes buffered before we stop reading (pipelining flood)
DATA_SLACK = 64 * 1024  # stuffing and CRLFs: bytes over the limit before we stop keeping data
SHUTDOWN_GRACE_S = 10.0


@dataclass(frozen=True, slots=True)
class Listener:
    """How one listening socket's clients are treated."""

    name: str  # "tcp" or "unix" (metrics label)
    local: bool  # the Unix socket: trusted by its file permissions


def parse_networks(spec: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """``MAILEXEC_LMTP_TRUSTED_NETWORKS``: comma- or space-separated CIDRs or addresses."""
    nets = []
    for item in spec.replace(",", " ").split():
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(
                f"MAILEXEC_LMTP_TRUSTED_NETWORKS: {item!r} is not a network (e.g. 10.0.0.0/8, ::1)"
            ) from None
    return tuple(nets)


def is_trusted(peer: Any, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    if not isinstance(peer, tuple) or not peer:
        return False
    try:
        addr = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == n.version and addr in n for n in networks)


def split_path(arg: str, keyword: str) -> tuple[str, list[str]]:
    """``FROM:<a@b> SIZE=10`` → (``a@b``, [``SIZE=10``]); ValueError on bad syntax.

    The path is read with quoted local parts in mind (``"a>b"@x``); the rest are
    space-separated ESMTP parameters.
    """
    head = arg[: len(keyword) + 1]
    if head.upper() != keyword + ":":
        raise ValueError(f"expected {keyword}:<address>")
    rest = arg[len(keyword) + 1:].lstrip(" ")
    if not rest.startswith("<"):
        raise ValueError("the address must be in angle brackets")
    quoted = escaped = False
    for i, ch in enumerate(rest[1:], 1):
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ">" and not quoted:
            params = rest[i + 1:]
            if params and not params.startswith(" "):
                raise ValueError("parameters must follow the address after a space")
            return rest[1:i], params.split()
    raise ValueError("unterminated <address>")


def split_params(words: list[str]) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for word in words:
        key, eq, value = word.partition("=")
        if not key or key.upper() in params:
            raise ValueError(f"bad or repeated parameter {word!r}")
        params[key.upper()] = value if eq else None
    return params


def unstuff(raw: bytes) -> bytes:
    """Transmitted DATA (CRLF lines, dot-stuffed, without the final dot) → stored body."""
    body = raw.replace(b"\r\n.", b"\r\n")
    if body.startswith(b"."):
        body = body[1:]
    return body.replace(b"\r\n", b"\n")


class _Closed(Exception):
    """The client went away (or was sent away) mid-session."""


class _TooLong(Exception):
    pass


class Session(asyncio.Protocol):
    """One LMTP connection: the protocol's buffer and the session coroutine reading it."""

    def __init__(self, server: LMTPServer, listener: Listener) -> None:
        self.server = server
        self.listener = listener
        self.loop = asyncio.get_running_loop()
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.paused = False
        self.in_data = False
        self.out: list[bytes] = []
        self.last_active = time.monotonic()
        self.idle_handle: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None
        self.busy = False  # between the final dot and the replies: don't cut in a shutdown
        self.peer = "unix"
        self.trusted = listener.local
        self.tls = False
        self.authenticated = False
        self.greeted = False
        self.errors = 0
        self._reset()

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tr = cast(asyncio.Transport, transport)  # uvloop's transports are no subclasses
        self.transport = tr
        if not self.listener.local:
            peer = transport.get_extra_info("peername")
            self.peer = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
            self.trusted = is_trusted(peer, self.server.trusted_networks)
        if not self.server.admit(self):
            metrics.LMTP_CONNECTIONS.labels(listener=self.listener.name, result="refused").inc()
            tr.write(b"421 4.3.2 too many connections; try again later\r\n")
            tr.close()
            self.closed = True
            return
        metrics.LMTP_CONNECTIONS.labels(listener=self.listener.name, result="accepted").inc()
        self._arm_idle()
        self.task = self.loop.create_task(self._run())

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.last_active = time.monotonic()
        metrics.LMTP_BYTES.inc(len(data))
        if not self.in_data and len(self.buf) > HIGH_WATER and not self.paused:
            assert self.transport is not None
            self.transport.pause_reading()
            self.paused = True
        self._wake()

    def eof_received(self) -> bool | None:
        self.closed = True
        self._wake()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.idle_handle is not None:
            self.idle_handle.cancel()
        self.server.release(self)
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _arm_idle(self) -> None:
        timeout = self.server.idle_timeout_s
        if self.waiter is None:  # we are the slow side (policy, store): not the client's idling
            self.last_active = time.monotonic()
        remaining = self.last_active + timeout - time.monotonic()
        if remaining <= 0:
            self.closed = True
            self._flush(b"421 4.4.2 idle for too long; closing\r\n")
            if self.transport is not None:
                self.transport.close()
            self._wake()
            return
        self.idle_handle = self.loop.call_later(remaining, self._arm_idle)

    # --- reading ------------------------------------------------------------------------

    async def _wait(self) -> None:
        self._flush()
        if self.closed:
            raise _Closed
        if self.paused and len(self.buf) < HIGH_WATER // 2 and self.transport is not None:
            self.transport.resume_reading()
            self.paused = False
        self.waiter = self.loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    async def _readline(self) -> bytes:
        skipping = False  # an overlong line: dropped as it arrives, answered at its LF
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[: i + 1]
                if skipping or i > MAX_LINE:
                    raise _TooLong
                return line[:-1] if line.endswith(b"\r") else line
            if len(self.buf) > MAX_LINE:
                self.buf.clear()
                skipping = True
            await self._wait()

    async def _read_data(self, limit: int, hold: Hold) -> tuple[bytes | None, int]:
        """The message after ``354``: (raw data without the final dot, or None if over
        ``limit``; its size), its bytes covered by ``hold`` as they are kept. Only
        ``<CRLF>.<CRLF>`` ends it (the DATA line's own CRLF is the first one)."""
        self.in_data = True
        try:
            while len(self.buf) < 3 and b".\r\n".startswith(bytes(self.buf)):
                await self._wait()
            if self.buf.startswith(b".\r\n"):
                del self.buf[:3]
                return b"", 0
            scan = 0
            dropped = 0
            while True:
                idx = self.buf.find(b"\r\n.\r\n", scan)
                if idx >= 0:
                    size = dropped + idx + 2
                    data = None
                    if not dropped and size <= limit:
                        with memoryview(self.buf) as view:  # one copy, not a slice's too
                            data = bytes(view[: idx + 2])
                    # what follows the dot (pipelined commands) in a buffer of its own:
                    # the message's bytes go now, not when the next one overwrites them
                    self.buf = self.buf[idx + 5:]
                    return data, size
                if len(self.buf) > limit + DATA_SLACK:
                    keep = 4  # a terminator may straddle two reads
                    dropped += len(self.buf) - keep
                    del self.buf[:-keep]
                scan = max(0, len(self.buf) - 4)
                hold.cover(len(self.buf))
                await self._wait()
        finally:
            self.in_data = False

    # --- writing ------------------------------------------------------------------------

    def _reply(self, text: str) -> None:
        self.out.append(text.encode("utf-8", "replace") + b"\r\n")

    def _flush(self, extra: bytes = b"") -> None:
        if self.out or extra:
            data = b"".join(self.out) + extra
            self.out.clear()
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(data)

    # --- the session ----------------------------------------------------------------------

    def _reset(self) -> None:
        self.sender: str | None = None
        self.mail_params: dict[str, str | None] = {}
        self.recipients: list[Recipient] = []

    async def _run(self) -> None:
        self._reply(f"220 {self.server.hostname} LMTP mailexec ready")
        try:
            while not self.closed:
                try:
                    line = await self._readline()
                except _TooLong:
                    self._error("500 5.5.2 line too long")
                    continue
                if not await self._command(line):
                    break
        except _Closed:
            pass
        except Exception:
            log.exception("lmtp session failed", extra={"client": self.peer})
            self._flush(b"421 4.3.0 internal error; try again later\r\n")
        finally:
            self._flush()
            if self.transport is not None:
                self.transport.close()

    def _error(self, text: str) -> None:
        self.errors += 1
        self._reply(text)
        if self.errors >= MAX_ERRORS:
            self._reply("421 4.7.0 too many errors; closing")
            self.closed = True

    async def _command(self, raw: bytes) -> bool:
        """Handle one command line; False ends the session."""
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._error("500 5.5.2 command is not valid UTF-8")
            return True
        if "\r" in line or "\x00" in line:
            self._error("500 5.5.2 control characters in the command line")
            return True
        verb, _, arg = line.partition(" ")
        verb = verb.upper()
        if verb == "LHLO":
            return self._lhlo(arg.strip())
        if verb in ("HELO", "EHLO"):
            self._error("500 5.5.1 this is an LMTP server (RFC 2033): say LHLO")
        elif verb == "NOOP":
            self._reply("250 2.0.0 OK")
        elif verb == "RSET":
            self._reset()
            self._reply("250 2.0.0 OK")
        elif verb == "QUIT":
            self._reply(f"221 2.0.0 {self.server.hostname} closing connection")
            return False
        elif verb == "VRFY":
            self._reply("252 2.5.0 cannot verify; send the message and see")
        elif verb == "HELP":
            self._reply("214 2.0.0 LHLO MAIL RCPT DATA RSET NOOP QUIT STARTTLS AUTH (RFC 2033)")
        elif not self.greeted:
            self._error("503 5.5.1 send LHLO first")
        elif verb == "STARTTLS":
            await self._starttls(arg)
        elif verb == "AUTH":
            await self._auth(arg.strip())
        elif verb == "MAIL":
            self._mail(arg)
        elif verb == "RCPT":
            await self._rcpt(arg)
        elif verb == "DATA":
            await self._data(arg)
        elif verb in ("BDAT", "BURL"):
            self._error("502 5.5.1 CHUNKING is not offered; use DATA")
        else:
            self._error("500 5.5.2 command not recognised")
        return True

    def _lhlo(self, arg: str) -> bool:
        if not arg:
            self._error("501 5.5.4 LHLO needs the client's host name")
            return True
        self._reset()
        self.greeted = True
        lines = [self.server.hostname, "PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME",
                 f"SIZE {self.server.max_size}", "DSN", "SMTPUTF8"]
        if self.server.tls_context is not None and not self.tls:
            lines.append("STARTTLS")
        if self.tls and not self.authenticated:
            lines.append("AUTH PLAIN")
        for text in lines[:-1]:
            self._reply(f"250-{text}")
        self._reply(f"250 {lines[-1]}")
        return True

    async def _starttls(self, arg: str) -> None:
        if arg.strip():
            self._error("501 5.5.4 STARTTLS takes no parameters")
            return
        if self.server.tls_context is None:
            self._error("454 4.7.0 TLS not available (no MAILEXEC_LMTP_TLS_CERT on this server)")
            return
        if self.tls:
            self._error("503 5.5.1 TLS already active")
            return
        self.buf.clear()  # RFC 3207 §4.2: nothing pipelined before the handshake counts
        self._flush(b"220 2.0.0 ready to start TLS\r\n")
        assert self.transport is not None
        try:
            tls_transport = await self.loop.start_tls(
                self.transport, self, self.server.tls_context, server_side=True,
                ssl_handshake_timeout=30,
            )
        except (OSError, ssl.SSLError, ConnectionError, TimeoutError) as exc:
            log.info("lmtp TLS handshake failed", extra={"client": self.peer, "error": str(exc)})
            self.closed = True
            raise _Closed from None
        if tls_transport is None:
            raise _Closed
        self.transport = tls_transport
        self.tls = True
        self.greeted = False  # the client must LHLO again (RFC 3207 §4.2)
        self._reset()

    async def _auth(self, arg: str) -> None:
        if self.authenticated:
            self._error("503 5.5.1 already authenticated")
            return
        if self.sender is not None:
            self._error("503 5.5.1 AUTH is not allowed during a mail transaction")
            return
        mech, _, initial = arg.partition(" ")
        if mech.upper() != "PLAIN":
            self._error("504 5.5.4 only AUTH PLAIN is offered")
            return
        if not self.tls:
            self._error("538 5.7.11 encryption required: STARTTLS first")
            return
        response = initial.strip()
        if not response:
            self._reply("334 ")
            try:
                response = (await self._readline()).decode("ascii", "replace").strip()
            except _TooLong:
                response = ""
        if response == "*":
            self._error("501 5.0.0 authentication cancelled")
            return
        try:
            parts = base64.b64decode(response, validate=True).split(b"\x00")
        except (binascii.Error, ValueError):
            parts = []
        if len(parts) != 3:
            self._error("501 5.5.2 AUTH PLAIN: not base64 of authzid NUL authcid NUL password")
            return
        authzid, authcid, password = (p.decode("utf-8", "replace") for p in parts)
        self._flush()
        try:
            if authcid != "mta" or authzid not in ("", "mta"):
                raise Unauthorized("the user name must be mta", code="invalid_user")
            principal = await authenticate_token(password, self.peer)
            if principal.role not in SUBMIT_ROLES:
                raise Unauthorized("not an mta token", code="wrong_role")
        except TooManyRequests:
            metrics.LMTP_REPLIES.labels(stage="auth", code="454").inc()
            self._error("454 4.7.0 too many bad tokens from your address; wait a minute")
            return
        except Unauthorized as exc:
            metrics.LMTP_REPLIES.labels(stage="auth", code="535").inc()
            log.warning("lmtp authentication failed", extra={"client": self.peer, "reason": exc.code})
            self._error("535 5.7.8 authentication credentials invalid (user mta, an mta token)")
            return
        except MailexecError:  # the token store (database) is down
            metrics.LMTP_REPLIES.labels(stage="auth", code="454").inc()
            self._error("454 4.7.0 temporary authentication failure; try again later")
            return
        self.authenticated = True
        metrics.LMTP_REPLIES.labels(stage="auth", code="235").inc()
        self._reply("235 2.7.0 authentication successful")

    def _mail(self, arg: str) -> None:
        if self.sender is not None:
            self._error("503 5.5.1 nested MAIL command")
            return
        if not (self.trusted or self.authenticated):
            why = ("STARTTLS, then AUTH PLAIN as mta" if self.server.tls_context is not None
                   else "this server has no TLS certificate (MAILEXEC_LMTP_TLS_CERT), so only "
                        "MAILEXEC_LMTP_TRUSTED_NETWORKS and the Unix socket may submit")
            metrics.LMTP_REPLIES.labels(stage="mail", code="530").inc()
            self._error(f"530 5.7.0 authentication required: {why}")
            return
        try:
            address, words = split_path(arg, "FROM")
            params = split_params(words)
        except ValueError as exc:
            self._error(f"501 5.5.4 MAIL FROM syntax: {exc}")
            return
        unknown = set(params) - {"SIZE", "BODY", "RET", "ENVID", "SMTPUTF8", "AUTH"}
        if unknown:
            self._error(f"555 5.5.4 unsupported MAIL parameter {sorted(unknown)[0]}")
            return
        size = params.get("SIZE")
        if size is not None:
            if not size.isdigit():
                self._error("501 5.5.4 SIZE must be a number")
                return
            if int(size) > self.server.max_size:
                metrics.LMTP_REPLIES.labels(stage="mail", code="552").inc()
                self._error(f"552 5.2.3 message size {size} exceeds the limit of "
                            f"{self.server.max_size} bytes")
                return
        body = (params.get("BODY") or "7BIT").upper()
        if body not in ("7BIT", "8BITMIME"):
            self._error(f"555 5.5.4 BODY={body} is not offered (7BIT or 8BITMIME)")
            return
        if "SMTPUTF8" in params and params["SMTPUTF8"] is not None:
            self._error("555 5.5.4 SMTPUTF8 takes no value")
            return
        try:
            sender = parse_sender(address)
            parse_ret(params.get("RET"))
            parse_envid(params.get("ENVID"))
        except BadRequest as exc:
            code = "553 5.1.7" if exc.code == "bad_sender" else "501 5.5.4"
            self._error(f"{code} {exc.message}")
            return
        if not sender.isascii() and "SMTPUTF8" not in params:
            self._error("553 5.6.7 a non-ASCII address needs the SMTPUTF8 parameter")
            return
        self.sender = sender
        self.mail_params = params
        self._reply("250 2.1.0 OK")

    async def _rcpt(self, arg: str) -> None:
        if self.sender is None:
            self._error("503 5.5.1 MAIL first")
            return
        try:
            address, words = split_path(arg, "TO")
            params = split_params(words)
        except ValueError as exc:
            self._error(f"501 5.5.4 RCPT TO syntax: {exc}")
            return
        unknown = set(params) - {"NOTIFY", "ORCPT"}
        if unknown:
            self._error(f"555 5.5.4 unsupported RCPT parameter {sorted(unknown)[0]}")
            return
        if len(self.recipients) >= MAX_RECIPIENTS:
            self._reply(f"452 4.5.3 too many recipients; at most {MAX_RECIPIENTS} per message")
            return
        try:
            notify = parse_notify(params["NOTIFY"]) if "NOTIFY" in params else None
            orcpt = parse_orcpt(params.get("ORCPT"))
            rcpt = make_recipient(address, notify=notify, orcpt=orcpt)
        except BadRequest as exc:
            code = "501 5.1.3" if exc.code == "bad_recipient" else "501 5.5.4"
            self._error(f"{code} {exc.message}")
            return
        if not rcpt.address.isascii() and "SMTPUTF8" not in self.mail_params:
            self._error("553 5.6.7 a non-ASCII address needs SMTPUTF8 on MAIL FROM")
            return
        answer = self.server.accounts.cached(rcpt.account)
        if answer is None:
            self._flush()  # RFC 2920 §3.1: send what is pending before a reply that may wait
            answer = await self.server.accounts.check(rcpt.account)
        if answer is Answer.ACCEPT:
            self.recipients.append(rcpt)
            metrics.LMTP_REPLIES.labels(stage="rcpt", code="250").inc()
            self._reply("250 2.1.5 OK")
            return
        reply = refusal(answer, rcpt.address, self.server.accounts.last_error)
        metrics.LMTP_REPLIES.labels(stage="rcpt", code=reply[:3]).inc()
        log.info("lmtp recipient refused",
                 extra={"recipient": rcpt.address, "sender": self.sender, "reply": reply,
                        "client": self.peer})
        self._reply(reply)

    async def _data(self, arg: str) -> None:
        if arg.strip():
            self._error("501 5.5.4 DATA takes no parameters")
            return
        if self.sender is None:
            self._error("503 5.5.1 MAIL first")
            return
        if not self.recipients:
            self._error("503 5.5.1 no valid recipients")
            return
        # the message is read only once the budget has room for it (its SIZE= if the
        # client declared one); until then the client waits for the 354
        size_param = self.mail_params.get("SIZE")
        hold = await self.server.body_budget.hold(int(size_param) if size_param else None)
        try:
            self._reply("354 2.0.0 send the message, end with <CRLF>.<CRLF>")
            limit = self.server.max_size
            raw, size = await self._read_data(limit, hold)
            recipients, sender, params = self.recipients, self.sender, self.mail_params
            self._reset()
            if raw is None:
                metrics.LMTP_REPLIES.labels(stage="data", code="552").inc(len(recipients))
                for r in recipients:
                    self._reply(f"552 5.2.3 <{r.address}>: message exceeds the size limit of "
                                f"{limit} bytes")
                return
            envelope = Envelope(
                sender=sender,
                recipients=tuple(_unique(recipients)),
                envid=params.get("ENVID") or None,
                ret=parse_ret(params.get("RET")),
                notify=DEFAULT_NOTIFY,
            )
            self._flush()
            self.busy = True
            body = [unstuff(raw)]
            raw = None  # the transmitted form is not kept beside the stored one
            try:
                accepted = await self.server.outbox.submit(envelope, body, None)
            except Exception as exc:
                reason = exc.message if isinstance(exc, MailexecError) else "internal error"
                if not isinstance(exc, MailexecError):
                    log.exception("lmtp submission failed", extra={"sender": sender})
                metrics.LMTP_REPLIES.labels(stage="data", code="451").inc(len(recipients))
                log.warning("lmtp message deferred", extra={
                    "sender": sender, "recipients": [r.address for r in recipients],
                    "reply": "451 4.3.0", "error": reason, "client": self.peer})
                for r in recipients:
                    self._reply(f"451 4.3.0 <{r.address}>: not stored ({reason}); "
                                "try again later")
                return
            finally:
                self.busy = False
                self.server.not_busy()
        finally:
            hold.release()
        metrics.LMTP_REPLIES.labels(stage="data", code="250").inc(len(recipients))
        for r in recipients:
            self._reply(f"250 2.0.0 <{r.address}> queued as {accepted.message_id}")


def refusal(answer: Answer, address: str, why: str) -> str:
    """The RCPT reply for an account check that did not accept (SPEC §2; never a 5xx when
    policy could not be asked)."""
    if answer is Answer.NO_SUCH_ACCOUNT:
        return f"550 5.1.1 <{address}>: no such account for program delivery"
    if answer is Answer.NOT_PROGRAM_DELIVERY:
        return f"550 5.3.0 <{address}>: program delivery is not configured for this account"
    return f"451 4.3.0 <{address}>: cannot check the recipient now ({why}); try again later"


def _unique(recipients: list[Recipient]) -> Iterable[Recipient]:
    """The same account named twice is one job (and two ``250`` replies, RFC 2033)."""
    seen: set[str] = set()
    for r in recipients:
        if r.account not in seen:
            seen.add(r.account)
            yield r


def bind_unix_socket(path: str, mode: str, group: str) -> socket.socket:
    """The listening Unix socket at ``path``, mode ``mode`` (octal) and group ``group``.

    A stale socket file is replaced; a live one (another server answering) is an error,
    as is any other kind of file at ``path``.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise RuntimeError(f"MAILEXEC_LMTP_SOCKET {path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale: nobody listens
        else:
            raise RuntimeError(f"MAILEXEC_LMTP_SOCKET {path}: another server is listening on it")
        finally:
            probe.close()
    gid = -1
    if group:
        import grp

        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise RuntimeError(f"MAILEXEC_LMTP_SOCKET_GROUP: no group {group!r}") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # never world-connectable, not even between bind and chmod
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chown(path, -1, gid)
    os.chmod(path, int(mode, 8))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class LMTPServer:
    """The LMTP listeners of one ingest process (TCP with SO_REUSEPORT, the Unix socket)."""

    def __init__(self, settings: Settings, outbox: Outbox, accounts: AccountCheck,
                 body_budget: BodyBudget, unix_socket: socket.socket | None = None) -> None:
        self.settings = settings
        self.outbox = outbox
        self.body_budget = body_budget
        self.accounts = accounts
        self.hostname = settings.reporting_mta
        self.max_size = settings.max_message_bytes
        self.trusted_networks = parse_networks(settings.lmtp_trusted_networks)
        self.idle_timeout_s = settings.lmtp_idle_timeout_s
        self.max_connections = settings.lmtp_max_connections
        self.tls_context = _tls_context(settings)
        self._unix_socket = unix_socket
        self._servers: list[asyncio.AbstractServer] = []
        self._sessions: set[Session] = set()
        self._bound_path: str | None = None
        self._quiet = asyncio.Event()  # set when no session is between its dot and replies

    def not_busy(self) -> None:
        if not any(s.busy for s in self._sessions):
            self._quiet.set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        s = self.settings
        if s.lmtp_port:
            tcp = Listener("tcp", local=False)
            # SO_REUSEPORT only between this ingest's own workers (the kernel spreads the
            # MTA's connections over them); the supervisor checked that nobody else holds
            # the port. A single process binds it alone: a second ingest fails loudly.
            self._servers.append(await loop.create_server(
                lambda: Session(self, tcp), host=s.bind_host, port=s.lmtp_port,
                reuse_port=s.ingest_workers > 1, backlog=1024,
            ))
        sock = self._unix_socket
        if sock is None and s.lmtp_socket:
            sock = bind_unix_socket(s.lmtp_socket, s.lmtp_socket_mode, s.lmtp_socket_group)
            self._bound_path = s.lmtp_socket  # ours to remove at stop
        if sock is not None:
            unix = Listener("unix", local=True)
            self._servers.append(await loop.create_unix_server(lambda: Session(self, unix), sock=sock))
        if self._servers:
            log.info("lmtp listening", extra={
                "port": s.lmtp_port or None, "socket": s.lmtp_socket or None,
                "tls": self.tls_context is not None,
                "trusted_networks": [str(n) for n in self.trusted_networks]})

    def admit(self, session: Session) -> bool:
        if len(self._sessions) >= self.max_connections:
            return False
        self._sessions.add(session)
        metrics.LMTP_OPEN.inc()
        return True

    def release(self, session: Session) -> None:
        if session in self._sessions:
            self._sessions.discard(session)
            metrics.LMTP_OPEN.dec()

    async def stop(self) -> None:
        """Stop listening; wait for messages between their final dot and their replies."""
        for server in self._servers:
            server.close()
        if any(s.busy for s in self._sessions):
            self._quiet.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._quiet.wait(), SHUTDOWN_GRACE_S)
        for session in list(self._sessions):
            session.closed = True
            session._flush(b"421 4.3.2 mailexec ingest shutting down; try again later\r\n")
            if session.transport is not None:
                session.transport.close()
            if session.task is not None:
                session.task.cancel()
        tasks = [s.task for s in self._sessions if s.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        if self._bound_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._bound_path)


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    cert, key = settings.lmtp_tls_cert, settings.lmtp_tls_key
    if not cert and not key:
        return None
    if not (cert and key):
        raise RuntimeError("set both MAILEXEC_LMTP_TLS_CERT and MAILEXEC_LMTP_TLS_KEY, or neither")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx
