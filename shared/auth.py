"""Bearer-token authentication and roles (SPEC §2 "Auth").

What it guarantees:
- Tokens are never stored or logged in clear: bootstrap tokens are compared by their
  SHA-256 with :func:`hmac.compare_digest`; issued tokens live as SHA-256 hex in
  ``policy.tokens`` and are looked up by hash.
- Roles: ``admin`` (everything), ``mta`` (submit, read message status), ``user`` (its own
  account only), ``service`` (executor/notifier reading policy). A missing or wrong token
  is 401, a wrong role 403.
- A client that presents many bad tokens is slowed down: after ``BAD_TOKEN_LIMIT``
  failures in ``BAD_TOKEN_WINDOW_S`` from one address its bad tokens get 429 until the
  window passes; valid tokens from that address still pass (shared proxies).
- The per-address failure table cannot grow without bound: addresses whose failures all
  left the window are dropped whenever a failure is noted, and at most
  ``BAD_TOKEN_MAX_ADDRESSES`` addresses are tracked (the least recently failing go
  first). Tested in tests/shared/test_auth_limits.py.
- A request's token is checked before its body is read (``shared.httpapp.BodyGuard``
  calls :func:`authenticate` first and leaves the principal in the ASGI scope, so the
  route's dependency does not check it twice).

Settings: ``MAILEXEC_ADMIN_TOKEN``, ``MAILEXEC_INGEST_TOKEN`` (role mta),
``MAILEXEC_SERVICE_TOKEN``; empty means that bootstrap token does not exist.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import text

from shared.db import get_engine, translate_db_errors
from shared.errors import Forbidden, TooManyRequests, Unauthorized
from shared.settings import get_settings

BAD_TOKEN_LIMIT = 30
BAD_TOKEN_WINDOW_S = 60.0
BAD_TOKEN_MAX_ADDRESSES = 10000
# The ASGI scope key under which the principal of an already authenticated request waits.
PRINCIPAL_SCOPE_KEY = "mailexec.principal"
_CACHE_TTL_S = 5.0


@dataclass(frozen=True)
class Principal:
    role: str
    name: str  # for the audit log: "admin", "mta", "service" or "user:<address>"
    account: str | None = None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def new_token(prefix: str = "mxu") -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


# address -> times of its recent failures; ordered by each address's latest failure
# (oldest first), so expired addresses are always at the front.
_bad: OrderedDict[str, deque[float]] = OrderedDict()
_cache: dict[str, tuple[float, Principal | None]] = {}


def _prune(now: float) -> None:
    """Forget addresses with no failure inside the window, then the oldest over the cap."""
    horizon = now - BAD_TOKEN_WINDOW_S
    while _bad:
        client, q = next(iter(_bad.items()))
        if q and q[-1] >= horizon and len(_bad) <= BAD_TOKEN_MAX_ADDRESSES:
            break
        del _bad[client]


def _note_failure(client: str) -> None:
    now = time.monotonic()
    q = _bad.pop(client, None)
    if q is None:
        q = deque(maxlen=BAD_TOKEN_LIMIT)
    q.append(now)
    _bad[client] = q  # to the end: the most recent failure
    _prune(now)


def bad_token_addresses() -> int:
    """How many addresses the bad-token limiter tracks (for tests and metrics)."""
    return len(_bad)


def _check_rate(client: str) -> None:
    now = time.monotonic()
    q = _bad.get(client)
    if not q:
        return
    while q and q[0] < now - BAD_TOKEN_WINDOW_S:
        q.popleft()
    if not q:
        del _bad[client]
        return
    if len(q) >= BAD_TOKEN_LIMIT:
        raise TooManyRequests(
            "too many requests with a bad token from this address; wait a minute and "
            "check the token you are using",
            code="auth_rate_limited",
        )


def reset_rate_limit() -> None:
    _bad.clear()
    _cache.clear()


def _bootstrap(digest: str) -> Principal | None:
    s = get_settings()
    for token, role in ((s.admin_token, "admin"), (s.ingest_token, "mta"), (s.service_token, "service")):
        if token and hmac.compare_digest(hash_token(token), digest):
            return Principal(role=role, name=role)
    return None


async def _lookup(digest: str) -> Principal | None:
    now = time.monotonic()
    hit = _cache.get(digest)
    if hit and hit[0] > now:
        return hit[1]
    with translate_db_errors():
        async with get_engine().connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT role, account FROM policy.tokens "
                        "WHERE token_hash = :h AND revoked_at IS NULL"
                    ),
                    {"h": digest},
                )
            ).first()
    principal = None
    if row is not None:
        role, account = row
        principal = Principal(
            role=role, name=f"user:{account}" if account else role, account=account
        )
    if len(_cache) > 10000:
        _cache.clear()
    _cache[digest] = (now + _CACHE_TTL_S, principal)
    return principal


def forget_token(digest: str) -> None:
    _cache.pop(digest, None)


async def authenticate(request: Request) -> Principal:
    """The request's principal from its bearer token (401 missing/wrong, 429 limited).

    Reads the headers only, never the body. A principal found earlier for this request
    (``BodyGuard``, before the body) is reused.
    """
    known = request.scope.get(PRINCIPAL_SCOPE_KEY)
    if isinstance(known, Principal):
        return known
    client = request.client.host if request.client else "?"
    token = _bearer(request)
    if token is None:
        _check_rate(client)
        raise Unauthorized(
            "missing bearer token: send 'Authorization: Bearer <token>'", code="missing_token"
        )
    principal = await authenticate_token(token, client)
    request.scope[PRINCIPAL_SCOPE_KEY] = principal
    return principal


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def presented_token_hash(request: Request) -> str:
    """SHA-256 hex of the bearer token this (already authenticated) request presented:
    what binds a console session to the token that created it. 401 without one."""
    token = _bearer(request)
    if token is None:
        raise Unauthorized(
            "missing bearer token: send 'Authorization: Bearer <token>'", code="missing_token"
        )
    return hash_token(token)


async def authenticate_token(token: str, client: str) -> Principal:
    """The principal of ``token`` presented by ``client`` (an address, for the rate limit).

    The one check behind every way a token arrives: HTTP bearer tokens and LMTP's
    ``AUTH PLAIN`` password. Raises Unauthorized (wrong token) or TooManyRequests.
    """
    digest = hash_token(token)
    principal = _bootstrap(digest) or await _lookup(digest)
    if principal is None:
        # Only failures are limited: behind a shared proxy every client has one address, and
        # one client guessing tokens must not lock the MTA (and so all mail) out. Guessing a
        # 256-bit token is hopeless anyway; the limit keeps floods out of logs and the DB cache.
        _check_rate(client)
        _note_failure(client)
        raise Unauthorized("invalid or revoked token", code="invalid_token")
    return principal


def check_role(principal: Principal, roles: tuple[str, ...]) -> Principal:
    """403 unless the principal has one of ``roles``."""
    if principal.role not in roles:
        raise Forbidden(
            f"this endpoint needs role {' or '.join(roles)}; your token has role "
            f"{principal.role}",
            code="wrong_role",
        )
    return principal


def require(*roles: str):  # type: ignore[no-untyped-def]
    """A FastAPI dependency admitting only the given roles."""

    async def dep(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        return check_role(principal, roles)

    return dep
