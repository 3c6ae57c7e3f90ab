"""The executor's view of the policy service: settings, status, accounts, program bytes.

What it does
    Reads ``GET /v1/settings``, ``/v1/status``, ``/v1/accounts/{address}``,
    ``/v1/programs/{name}`` and ``/v1/programs/{name}/content`` with the service
    token over one HTTP/1.1 keep-alive pool (httpx), and caches the answers in
    process: dropped when a ``policy.changed`` event names them (see
    :meth:`PolicyClient.invalidate`) and after :data:`POLICY_CACHE_TTL_S` anyway.
    Concurrent misses for the same key share one request (no thundering herd); the
    cache itself is :class:`shared.cache.AsyncCache`.

What it guarantees
    - An answer fetched before an invalidation is never cached after it (a
      generation counter), so a change seen on ``policy.changed`` is never undone
      by a slow in-flight response.
    - Every failure to get an answer (connection refused, timeout, 5xx, 401/403 –
      our own token being wrong is our problem, not the sender's) raises
      :class:`PolicyUnavailable`: the caller defers, it never bounces on it.
      Only a 404 means "no such account/program".

What it does not do
    Cache program *bytes* (``ProgramStore`` keeps sealed copies keyed by SHA-256).

Settings
    ``policy_url``, ``service_token``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import orjson

from services.executor.errors import ExecutorError
from services.executor.sandbox.namespaces import NETWORKS
from shared.cache import AsyncCache
from shared.status import DEFAULT_TEMPFAIL_EXIT_CODES

POLICY_CACHE_TTL_S = 30.0
DEFAULT_SHELLS = ("/bin/sh", "/bin/csh", "/bin/ksh", "/usr/bin/sh", "/usr/bin/csh", "/usr/bin/ksh")

T = TypeVar("T")


class PolicyUnavailable(ExecutorError):
    """The policy service could not answer; the delivery must be deferred, not bounced."""


@dataclass(frozen=True)
class SafeUser:
    uid: int
    gid: int


@dataclass(frozen=True)
class PolicySettings:
    mode: str = "secure"
    suspended: bool = False
    safe_user: SafeUser | None = None
    valid_shells: tuple[str, ...] = DEFAULT_SHELLS
    program_timeout_s: float = 60.0
    max_output_bytes: int = 65536
    tempfail_exit_codes: frozenset[int] = frozenset(DEFAULT_TEMPFAIL_EXIT_CODES)
    dsn_include_output: bool = True
    delay_warning_after_s: float = 14400.0
    max_queue_lifetime_s: float = 432000.0
    postmaster: str | None = None

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> PolicySettings:
        d = data.get("settings", data)
        safe = d.get("safe_user")
        defaults = cls()
        return cls(
            mode=str(d.get("mode") or defaults.mode),
            suspended=bool(d.get("suspended", False)),
            safe_user=SafeUser(int(safe["uid"]), int(safe.get("gid", safe["uid"]))) if safe else None,
            valid_shells=tuple(d.get("valid_shells") or defaults.valid_shells),
            program_timeout_s=float(d.get("program_timeout_s") or defaults.program_timeout_s),
            max_output_bytes=int(d.get("max_output_bytes", defaults.max_output_bytes)),
            tempfail_exit_codes=frozenset(
                int(c) for c in d.get("tempfail_exit_codes", defaults.tempfail_exit_codes)
            ),
            dsn_include_output=bool(d.get("dsn_include_output", True)),
            delay_warning_after_s=float(
                d.get("delay_warning_after_s", defaults.delay_warning_after_s)
            ),
            max_queue_lifetime_s=float(d.get("max_queue_lifetime_s", defaults.max_queue_lifetime_s)),
            postmaster=d.get("postmaster"),
        )


@dataclass(frozen=True)
class Account:
    address: str
    owner_name: str
    uid: int
    gid: int
    home: str
    shell: str
    program_delivery_enabled: bool
    programs: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> Account:
        owner = data.get("owner") or {}
        pd = data.get("program_delivery") or {}
        return cls(
            address=str(data.get("address", "")),
            owner_name=str(owner.get("name", "")),
            uid=int(owner["uid"]),
            gid=int(owner["gid"]),
            home=str(owner.get("home") or ""),
            shell=str(owner.get("shell") or ""),
            program_delivery_enabled=bool(pd.get("enabled", False)),
            programs=tuple(str(p) for p in pd.get("programs") or ()),
        )



@dataclass(frozen=True)
class ProgramMeta:
    name: str
    sha256: str
    size: int
    # What the run may reach (SPEC §3 rule 6): "none" or "egress". Refetched after a
    # policy.changed naming programs, so a PATCH applies without a restart.
    network: str = "none"


class PolicyClient:
    def __init__(self, base_url: str, token: str, *, ttl_s: float = POLICY_CACHE_TTL_S) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=httpx.Timeout(10.0, connect=3.0),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=32),
        )
        self._cache = AsyncCache(ttl_s)

    async def close(self) -> None:
        await self._http.aclose()

    # --- cached reads ------------------------------------------------------------------

    async def settings(self) -> PolicySettings:
        return await self._cached(("settings", ""), self._fetch_settings)

    async def status(self) -> dict[str, Any]:
        return await self._cached(("status", ""), lambda: self._get_json("/v1/status"))

    async def account(self, address: str) -> Account | None:
        key = address.lower()
        return await self._cached(("account", key), lambda: self._fetch_account(key))

    async def program(self, name: str) -> ProgramMeta | None:
        return await self._cached(("program", name), lambda: self._fetch_program(name))

    async def program_content(self, name: str) -> bytes:
        """The registered bytes (not cached here: ProgramStore keeps verified copies)."""
        resp = await self._request(f"/v1/programs/{_quote(name)}/content")
        if resp.status_code == 404:
            raise PolicyUnavailable(f"program {name!r} disappeared from the registry")
        return resp.content

    def invalidate(self, what: str | None = None, key: str | None = None) -> None:
        """Forget cached answers a ``policy.changed`` event makes stale (all when unsure)."""
        if what == "account" and key:
            gone = ("account", key.lower())
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

    async def _request(self, path: str) -> httpx.Response:
        try:
            resp = await self._http.get(path)
        except httpx.HTTPError as exc:
            raise PolicyUnavailable(f"policy service unreachable: {type(exc).__name__}: {exc}") from exc
        if resp.status_code == 404:
            return resp
        if resp.status_code != 200:
            raise PolicyUnavailable(f"policy service answered {resp.status_code} for GET {path}")
        return resp

    async def _get_json(self, path: str) -> Any:
        resp = await self._request(path)
        if resp.status_code == 404:
            return None
        try:
            return orjson.loads(resp.content)
        except orjson.JSONDecodeError as exc:
            raise PolicyUnavailable(f"policy service sent invalid JSON for {path}") from exc

    async def _fetch_settings(self) -> PolicySettings:
        data = await self._get_json("/v1/settings")
        if not isinstance(data, dict):
            raise PolicyUnavailable("policy service has no settings")
        try:
            return PolicySettings.from_api(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise PolicyUnavailable(f"unusable settings from policy: {exc}") from exc

    async def _fetch_account(self, address: str) -> Account | None:
        data = await self._get_json(f"/v1/accounts/{_quote(address)}")
        if data is None:
            return None
        try:
            return Account.from_api(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise PolicyUnavailable(f"unusable account record for {address}: {exc}") from exc

    async def _fetch_program(self, name: str) -> ProgramMeta | None:
        data = await self._get_json(f"/v1/programs/{_quote(name)}")
        if data is None:
            return None
        try:
            network = str(data.get("network") or "none")
            if network not in NETWORKS:  # never guess wider access than we understand
                raise ValueError(f"unknown network {network!r}")
            return ProgramMeta(name=name, sha256=str(data["sha256"]), size=int(data.get("size", 0)),
                               network=network)
        except (KeyError, TypeError, ValueError) as exc:
            raise PolicyUnavailable(f"unusable program record for {name}: {exc}") from exc


def _quote(segment: str) -> str:
    from urllib.parse import quote

    return quote(segment, safe="@+")
