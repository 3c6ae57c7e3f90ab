"""The one client of the policy API: settings, status, accounts, program metadata and bytes.

What it does
    Reads ``GET /v1/settings``, ``/v1/status``, ``/v1/accounts/{address}``,
    ``/v1/programs/{name}`` and ``/v1/programs/{name}/content`` with the service
    token over one HTTP/1.1 keep-alive pool (httpx), parses every answer with the
    contract's models (:mod:`shared.contract`, the ones policy serialises with) and
    caches it in process: dropped when a ``policy.changed`` event names it (see
    :meth:`PolicyClient.invalidate`) and after :data:`POLICY_CACHE_TTL_S` anyway.
    Concurrent misses for the same key share one request (no thundering herd); the
    cache itself is :class:`shared.cache.AsyncCache`, so a delivery parses a document
    only on a cache miss. Used by the executor (every delivery), through
    :class:`NoticeSettingsReader` by the notifier, and by ingest's RCPT-time account
    check (``services/ingest/recipients.py``), which caches only the accounts it
    accepts (``keep_account``) and reads an account policy's grammar refuses as "no
    such account" (``invalid_address_is_missing``).

What it guarantees
    - An answer fetched before an invalidation is never cached after it (a
      generation counter), so a change seen on ``policy.changed`` is never undone
      by a slow in-flight response.
    - Every failure to get an answer (connection refused, timeout, 5xx, 401/403 –
      our own token being wrong is our problem, not the sender's – invalid JSON, a
      document the contract refuses, a program ``network`` it doesn't know) raises
      :class:`PolicyUnavailable`: the caller defers, it never bounces on it.
      Only a 404 means "no such account/program" (and, for a client made with
      ``invalid_address_is_missing``, a 400 ``invalid_address`` for an account).
      :attr:`PolicyUnavailable.reason` says which failure it was in a few words.
    - An address no account can have (outside the account grammar of
      :func:`shared.addresses.normalize_account`) is "no such account", without asking.
    - :class:`NoticeSettingsReader` never raises: the last settings it got, else the
      SPEC defaults, and after a failure it waits :data:`RETRY_AFTER_FAILURE_S`
      before asking again.

What it does not do
    Cache program *bytes* (the executor's ``ProgramStore`` keeps sealed copies keyed
    by SHA-256).

Settings
    ``policy_url``, ``service_token`` (and ``reporting_mta`` for the notifier's
    default postmaster).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from shared.addresses import AddressError, normalize_account
from shared.cache import AsyncCache
from shared.contract import Account, PolicySettings, ProgramMeta, Status
from shared.errors import Unavailable
from shared.settings import Settings

log = logging.getLogger("mailexec.policy_client")

POLICY_CACHE_TTL_S = 30.0
RETRY_AFTER_FAILURE_S = 5.0

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


class PolicyUnavailable(Unavailable):
    """The policy service could not answer; the delivery must be deferred, not bounced.

    ``reason``: the kind of failure without its particulars (no path, no exception
    text), short enough for a protocol reply line such as LMTP's ``451 4.3.0``.
    """

    code = "policy_unavailable"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


def _always(_answer: object) -> bool:
    return True


class PolicyClient:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        ttl_s: float = POLICY_CACHE_TTL_S,
        timeout_s: float = 10.0,
        connect_timeout_s: float = 3.0,
        max_connections: int = 32,
        keep_account: Callable[[Account | None], bool] = _always,
        invalid_address_is_missing: bool = False,
    ) -> None:
        """``keep_account``: which answers of :meth:`account` the cache keeps (all of
        them by default, "no such account" included); the others are asked again on the
        next call. ``invalid_address_is_missing``: a 400 ``invalid_address`` for an
        account (a policy of another version whose account grammar refuses the key)
        reads as "no such account" instead of :class:`PolicyUnavailable`."""
        self._keep_account = keep_account
        self._invalid_address_is_missing = invalid_address_is_missing
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=max_connections,
                                max_keepalive_connections=max_connections),
        )
        self._cache = AsyncCache(ttl_s)

    async def close(self) -> None:
        await self._http.aclose()

    # --- cached reads ------------------------------------------------------------------

    async def settings(self) -> PolicySettings:
        return await self._cached(("settings", ""), self._fetch_settings)

    async def status(self) -> Status:
        return await self._cached(("status", ""), self._fetch_status)

    async def account(self, address: str) -> Account | None:
        """The account of ``address`` (any spelling of it), None when there is none."""
        try:
            key = normalize_account(address)
        except AddressError:
            return None  # no account can have this address
        return await self._cache.get(("account", key), lambda: self._fetch_account(key),
                                     keep=self._keep_account)

    def cached_account(self, key: str) -> Account | None:
        """The live cached account of ``key`` (an account key, as
        :func:`~shared.addresses.normalize_account` returns it), without asking policy;
        None when there is none (a cached "no such account" included)."""
        account: Account | None = self._cache.peek(("account", key))
        return account

    async def program(self, name: str) -> ProgramMeta | None:
        return await self._cached(("program", name), lambda: self._fetch_program(name))

    async def program_content(self, name: str) -> bytes:
        """The registered bytes (not cached here: ProgramStore keeps verified copies)."""
        resp = await self._request(f"/v1/programs/{_quote(name)}/content")
        if resp is None:
            raise PolicyUnavailable(f"program {name!r} disappeared from the registry")
        return resp.content

    def invalidate(self, what: str | None = None, key: str | None = None) -> None:
        """Forget cached answers a ``policy.changed`` event makes stale (all when unsure)."""
        if what == "account" and key:
            try:
                gone = ("account", normalize_account(key))
            except AddressError:
                self._cache.invalidate()
                return
            self._cache.invalidate(lambda k: k == gone)
        elif what == "program":
            self._cache.invalidate(lambda k: k[0] in ("program", "status"))  # type: ignore[index]
        elif what == "settings":
            self._cache.invalidate(lambda k: k[0] in ("settings", "status"))  # type: ignore[index]
        elif what == "token":
            return
        else:
            self._cache.invalidate()

    # --- plumbing ----------------------------------------------------------------------

    async def _cached(self, key: tuple[str, str], fetch: Callable[[], Awaitable[T]]) -> T:
        return await self._cache.get(key, fetch)

    async def _request(self, path: str, *, invalid_is_missing: bool = False) -> httpx.Response | None:
        """The 200 answer to ``GET path``; None on 404 (and on a 400 ``invalid_address``
        when ``invalid_is_missing``); :class:`PolicyUnavailable` for anything else."""
        try:
            resp = await self._http.get(path)
        except httpx.HTTPError as exc:
            raise PolicyUnavailable(f"policy service unreachable: {type(exc).__name__}: {exc}",
                                    reason=f"policy service unreachable: {type(exc).__name__}") from exc
        if resp.status_code == 404:
            return None
        if invalid_is_missing and resp.status_code == 400 and b"invalid_address" in resp.content:
            return None
        if resp.status_code != 200:
            raise PolicyUnavailable(f"policy service answered {resp.status_code} for GET {path}",
                                    reason=f"policy service answered {resp.status_code}")
        return resp

    async def _get(self, path: str, model: type[M], what: str, kind: str,
                   *, invalid_is_missing: bool = False) -> M | None:
        """``model`` parsed from the answer to ``GET path``; None on 404. ``what``: the
        document asked for, named in the error; ``kind``: the same without particulars."""
        resp = await self._request(path, invalid_is_missing=invalid_is_missing)
        if resp is None:
            return None
        try:
            return model.model_validate_json(resp.content)
        except ValidationError as exc:
            raise PolicyUnavailable(f"unusable {what} from policy: {_first_error(exc)}",
                                    reason=f"policy service sent an unusable {kind}") from exc

    async def _fetch_settings(self) -> PolicySettings:
        settings = await self._get("/v1/settings", PolicySettings, "settings", "settings")
        if settings is None:
            raise PolicyUnavailable("policy service has no settings")
        return settings

    async def _fetch_status(self) -> Status:
        status = await self._get("/v1/status", Status, "status", "status")
        if status is None:
            raise PolicyUnavailable("policy service has no status")
        return status

    async def _fetch_account(self, key: str) -> Account | None:
        return await self._get(f"/v1/accounts/{_quote(key)}", Account, f"account record for {key}",
                               "account record",
                               invalid_is_missing=self._invalid_address_is_missing)

    async def _fetch_program(self, name: str) -> ProgramMeta | None:
        return await self._get(f"/v1/programs/{_quote(name)}", ProgramMeta,
                               f"program record for {name}", "program record")


def _quote(segment: str) -> str:
    return quote(segment, safe="@+")


def _first_error(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in err.get("loc", ()))
    return f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid"))


# --- the notifier's reading -------------------------------------------------------------


@dataclass(frozen=True)
class NoticeSettings:
    """What DSN and notice rendering read of the settings, defaults filled in."""

    include_output: bool  # dsn_include_output
    postmaster: str  # the setting, else postmaster@<reporting MTA>
    delay_warning_after_s: int
    record_retention_days: int
    # False while these are the SPEC defaults because policy never answered: nothing is
    # deleted by a guessed retention (the admin may have set a longer one)
    from_policy: bool = True


class NoticeSettingsReader:
    """The settings the notifier needs, never failing: it must not stop sending because
    policy is down. The last values it got, else the SPEC defaults; after a failure it
    asks again only after :data:`RETRY_AFTER_FAILURE_S` (no timeout per event)."""

    def __init__(self, settings: Settings) -> None:
        self._client = PolicyClient(settings.policy_url, settings.service_token,
                                    timeout_s=3.0, connect_timeout_s=2.0, max_connections=4)
        self._default_postmaster = f"postmaster@{settings.reporting_mta}"
        self._current = self._view(PolicySettings(), from_policy=False)
        self._quiet_until = 0.0

    def _view(self, ps: PolicySettings, *, from_policy: bool = True) -> NoticeSettings:
        return NoticeSettings(include_output=ps.dsn_include_output,
                              postmaster=ps.postmaster or self._default_postmaster,
                              delay_warning_after_s=ps.delay_warning_after_s,
                              record_retention_days=ps.record_retention_days,
                              from_policy=from_policy)

    async def get(self) -> NoticeSettings:
        now = time.monotonic()
        if now < self._quiet_until:
            return self._current
        try:
            self._current = self._view(await self._client.settings())
        except PolicyUnavailable as exc:
            log.warning("policy settings unavailable; using last known values",
                        extra={"error": str(exc)[:300]})
            self._quiet_until = now + RETRY_AFTER_FAILURE_S
        return self._current

    def invalidate(self, what: str | None = None, key: str | None = None) -> None:
        """A ``policy.changed`` broadcast: the next notice reads the settings anew (a new
        postmaster gets the very next notice, not one after the cache's TTL)."""
        self._client.invalidate(what, key)
        self._quiet_until = 0.0

    async def close(self) -> None:
        await self._client.close()
