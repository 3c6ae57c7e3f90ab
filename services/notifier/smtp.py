"""Handing one notification to the SMTP relay named by ``MAILEXEC_SMTP_URL``.

What it does: one SMTP transaction per call, envelope sender always empty
(``MAIL FROM:<>``: a DSN or notice must never be bounced back to us, RFC 3464 §2 /
RFC 5321 §4.5.5), exactly one recipient, the stored bytes sent unchanged.

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

import ssl
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib

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


async def send(target: SmtpTarget, rcpt: str, content: bytes) -> str:
    """Send ``content`` to ``rcpt`` with ``MAIL FROM:<>``; return the relay's DATA reply."""
    client = aiosmtplib.SMTP(
        hostname=target.host,
        port=target.port,
        use_tls=target.implicit_tls,
        start_tls=target.starttls,  # False: never upgrade a plain smtp:// session
        tls_context=target.tls_context(),
        validate_certs=target.verify,
        timeout=target.timeout,
        local_hostname=target.helo,
    )
    try:
        async with client:
            if target.username:
                await client.login(target.username, target.password or "")
            options = []
            if not content.isascii() and client.supports_extension("8bitmime"):
                options.append("BODY=8BITMIME")
            _, reply = await client.sendmail("", [rcpt], content, mail_options=options)
            return reply
    except (aiosmtplib.SMTPException, OSError, ssl.SSLError, TimeoutError) as exc:
        raise _translate(exc) from exc
