"""Handing notifications to the SMTP relay named by ``MAILEXEC_SMTP_URL``.

What it does: one SMTP transaction per notification, envelope sender always empty
(``MAIL FROM:<>``: a DSN or notice must never be bounced back to us, RFC 3464 §2 /
RFC 5321 §4.5.5), exactly one recipient, the stored bytes sent unchanged.
:class:`SmtpSession` keeps its connection for the next notification, as Postfix's
connection cache does: RSET after a refused transaction, closed after
:data:`IDLE_LIMIT_S` idle (Postfix ``smtp_connection_cache_time_limit``), reopened
after :data:`REUSE_LIMIT_S` (``smtp_connection_reuse_time_limit``) and after any
connection-level error. A kept connection the relay closed meanwhile is noticed at
``MAIL FROM`` (before any of the message was sent) and the transaction is retried
once on a new connection. :func:`send` is a one-shot session.

URL forms (``user:pass@`` optional everywhere, percent-encoded):

- ``smtp://host[:25]``                 plain SMTP, no TLS at all
- ``smtp://host:587?starttls=true``     STARTTLS required (also ``smtp+starttls://``)
- ``smtps://host[:465]``                TLS from the first byte
- ``?verify=false`` disables certificate checks, ``?cafile=/path`` trusts that CA bundle,
  ``?timeout=30`` overrides ``notifier_smtp_timeout_s``, ``?helo=name`` sets the EHLO name.

Guarantees: credentials only travel after TLS when TLS is configured; errors are
translated once, here, into :class:`SmtpError` with ``permanent`` telling the outbox
whether to retry (no reply / 4xx / TLS or AUTH trouble) or give up (5xx for the
message). It does not guarantee exactly-once: a relay that accepted the DATA but whose
"250" never reached us gets the message again on the next attempt (RFC 1047).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib

IDLE_LIMIT_S = 2.0
REUSE_LIMIT_S = 300.0

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class SmtpError(Exception):
    """Sending failed. ``permanent``: the relay refused this message for good (5xx)."""

    def __init__(self, message: str, *, permanent: bool, code: int | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.code = code


class SmtpUrlError(ValueError):
    """``MAILEXEC_SMTP_URL`` cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class SmtpTarget:
    host: str
    port: int
    implicit_tls: bool = False
    starttls: bool = False
    username: str | None = None
    password: str | None = None
    verify: bool = True
    cafile: str | None = None
    timeout: float = 60.0
    helo: str | None = None

    def describe(self) -> str:
        """For logs: no password."""
        mode = "smtps" if self.implicit_tls else ("smtp+starttls" if self.starttls else "smtp")
        user = f"{self.username}@" if self.username else ""
        return f"{mode}://{user}{self.host}:{self.port}"

    def tls_context(self) -> ssl.SSLContext | None:
        if not (self.implicit_tls or self.starttls):
            return None
        ctx = ssl.create_default_context(cafile=self.cafile)
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


def _flag(query: dict[str, list[str]], name: str, default: bool) -> bool:
    if name not in query:
        return default
    value = query[name][-1].lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SmtpUrlError(f"MAILEXEC_SMTP_URL: {name}={value!r} is not true/false")


def parse_smtp_url(url: str, *, default_timeout: float = 60.0) -> SmtpTarget:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("smtp", "smtps", "smtp+starttls"):
        raise SmtpUrlError(
            f"MAILEXEC_SMTP_URL scheme {scheme!r} unknown; use smtp://, smtp+starttls:// or smtps://"
        )
    if not parts.hostname:
        raise SmtpUrlError("MAILEXEC_SMTP_URL has no host (example: smtp://127.0.0.1:25)")
    query = parse_qs(parts.query)
    implicit = scheme == "smtps"
    starttls = scheme == "smtp+starttls" or _flag(query, "starttls", False)
    if implicit and starttls:
        raise SmtpUrlError("MAILEXEC_SMTP_URL: smtps:// already uses TLS; drop starttls=true")
    try:
        port = parts.port or (465 if implicit else 25)
        timeout = float(query["timeout"][-1]) if "timeout" in query else default_timeout
    except ValueError as exc:
        raise SmtpUrlError(f"MAILEXEC_SMTP_URL: {exc}") from exc
    return SmtpTarget(
        host=parts.hostname,
        port=port,
        implicit_tls=implicit,
        starttls=starttls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        verify=_flag(query, "verify", True),
        cafile=query["cafile"][-1] if "cafile" in query else None,
        timeout=timeout,
        helo=query["helo"][-1] if "helo" in query else None,
    )


def _translate(exc: Exception) -> SmtpError:
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in exc.recipients]
        detail = "; ".join(f"{r.code} {r.message}" for r in exc.recipients)
        permanent = bool(codes) and all(500 <= c < 600 for c in codes)
        return SmtpError(f"recipient refused: {detail}", permanent=permanent, code=codes[0])
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        # A credentials problem is the operator's to fix; keep the mail and retry.
        return SmtpError(f"authentication failed: {exc.code} {exc.message}", permanent=False, code=exc.code)
    if isinstance(exc, aiosmtplib.SMTPResponseException) and not isinstance(
        exc, aiosmtplib.SMTPConnectResponseError | aiosmtplib.SMTPHeloError
    ):
        stage = type(exc).__name__.removeprefix("SMTP")
        return SmtpError(
            f"{stage}: {exc.code} {exc.message}", permanent=500 <= exc.code < 600, code=exc.code
        )
    # Connection refused, greeting/HELO trouble, timeouts, TLS failures, disconnects:
    # the relay as a whole is not taking mail right now.
    return SmtpError(f"relay unavailable: {type(exc).__name__}: {exc}", permanent=False)


_fqdn: list[str] = []


async def _helo_name(target: SmtpTarget) -> str:
    """``?helo=`` or this host's FQDN, looked up once (aiosmtplib would per connection)."""
    if target.helo:
        return target.helo
    if not _fqdn:
        _fqdn.append(await asyncio.get_running_loop().run_in_executor(None, socket.getfqdn))
    return _fqdn[0]


class _StaleConnection(Exception):
    """A kept connection turned out closed before this message's transaction began."""


class SmtpSession:
    """One connection to the relay, used for one transaction at a time."""

    def __init__(self, target: SmtpTarget) -> None:
        self.target = target
        self._client: aiosmtplib.SMTP | None = None
        self._opened_at = 0.0
        self._used_at = 0.0

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected

    def _reusable(self) -> bool:
        now = time.monotonic()
        return (
            self.connected
            and now - self._used_at < IDLE_LIMIT_S
            and now - self._opened_at < REUSE_LIMIT_S
        )

    async def send(self, rcpt: str, content: bytes) -> str:
        """Send ``content`` to ``rcpt`` with ``MAIL FROM:<>``; return the relay's DATA reply."""
        reused = self._reusable()
        if not reused:
            await self.close()
            await self._open()
        try:
            return await self._transaction(rcpt, content, reused=reused)
        except _StaleConnection:
            self._drop()
            await self._open()
            return await self._transaction(rcpt, content, reused=False)

    async def _open(self) -> None:
        target = self.target
        client = aiosmtplib.SMTP(
            hostname=target.host,
            port=target.port,
            use_tls=target.implicit_tls,
            start_tls=target.starttls,  # False: never upgrade a plain smtp:// session
            tls_context=target.tls_context(),
            validate_certs=target.verify,
            timeout=target.timeout,
            local_hostname=await _helo_name(target),
        )
        try:
            await client.connect()
            if client.is_ehlo_or_helo_needed:  # EHLO now: 8BITMIME is known before MAIL
                try:
                    await client.ehlo()
                except aiosmtplib.SMTPHeloError:
                    if not client.is_connected:
                        raise
                    await client.helo()
            if target.username:
                await client.login(target.username, target.password or "")
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError, TimeoutError) as exc:
            client.close()
            raise _translate(exc) from exc
        self._client = client
        self._opened_at = self._used_at = time.monotonic()

    async def _transaction(self, rcpt: str, content: bytes, *, reused: bool) -> str:
        client = self._client
        assert client is not None
        options = []
        if not content.isascii() and client.supports_extension("8bitmime"):
            options.append("BODY=8BITMIME")
        try:
            try:
                await client.mail("", options=options)
            except (aiosmtplib.SMTPServerDisconnected, ConnectionError) as exc:
                if reused:
                    raise _StaleConnection from exc
                raise
            except aiosmtplib.SMTPResponseException as exc:
                if reused and exc.code == 421:  # the relay is closing this connection
                    raise _StaleConnection from exc
                raise
            try:
                await client.rcpt(rcpt)
            except aiosmtplib.SMTPRecipientRefused as exc:
                raise aiosmtplib.SMTPRecipientsRefused([exc]) from exc
            response = await client.data(content)
        except _StaleConnection:
            raise
        except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused) as exc:
            await self._reset()
            raise _translate(exc) from exc
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError, TimeoutError) as exc:
            self._drop()  # mid-transaction: the connection's state is unknown
            raise _translate(exc) from exc
        self._used_at = time.monotonic()
        return response.message

    async def _reset(self) -> None:
        """RSET after a refused transaction, so the connection can take the next one."""
        client = self._client
        if client is None or not client.is_connected:
            self._drop()
            return
        try:
            await client.rset()
            self._used_at = time.monotonic()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            self._drop()

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None

    async def close(self) -> None:
        """QUIT (briefly) and close; a no-op when not connected."""
        client, self._client = self._client, None
        if client is None:
            return
        if client.is_connected:
            try:
                await client.quit(timeout=min(5.0, self.target.timeout))
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                pass
        client.close()


async def send(target: SmtpTarget, rcpt: str, content: bytes) -> str:
    """Send ``content`` to ``rcpt`` with ``MAIL FROM:<>`` on a connection of its own."""
    session = SmtpSession(target)
    try:
        return await session.send(rcpt, content)
    finally:
        await session.close()
