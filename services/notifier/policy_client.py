"""The few policy settings the notifier needs, read from ``GET /v1/settings``.

Cached for ``CACHE_TTL_S``; when policy is unreachable or answers garbage the last
known values are used, else the SPEC defaults (output included in DSNs, postmaster
``postmaster@<reporting_mta>``). The notifier never stops sending because policy is down.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx

from shared.schemas import validate_address
from shared.settings import Settings

log = logging.getLogger("mailexec.notifier.policy")

CACHE_TTL_S = 30.0
RETRY_AFTER_FAILURE_S = 5.0
DEFAULT_DELAY_WARNING_AFTER_S = 14400


@dataclass(frozen=True)
class NotifierPolicy:
    include_output: bool
    postmaster: str
    delay_warning_after_s: int


def defaults(reporting_mta: str) -> NotifierPolicy:
    return NotifierPolicy(
        include_output=True,
        postmaster=f"postmaster@{reporting_mta}",
        delay_warning_after_s=DEFAULT_DELAY_WARNING_AFTER_S,
    )


def _from_body(body: Any, fallback: NotifierPolicy) -> NotifierPolicy:
    if not isinstance(body, dict):
        raise ValueError("settings body is not an object")
    include = body.get("dsn_include_output", fallback.include_output)
    postmaster = body.get("postmaster") or fallback.postmaster
    delay = body.get("delay_warning_after_s", fallback.delay_warning_after_s)
    if not isinstance(include, bool):
        raise ValueError("dsn_include_output is not a boolean")
    if not isinstance(delay, int) or isinstance(delay, bool) or delay <= 0:
        raise ValueError("delay_warning_after_s is not a positive integer")
    validate_address(postmaster)  # it goes into RCPT TO and a To: header
    return NotifierPolicy(include_output=include, postmaster=postmaster, delay_warning_after_s=delay)


class PolicyClient:
    def __init__(self, settings: Settings) -> None:
        self._url = settings.policy_url.rstrip("/") + "/v1/settings"
        self._token = settings.service_token
        self._current = defaults(settings.reporting_mta)
        self._defaults = self._current
        self._fresh_until = 0.0
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(3.0, connect=2.0))

    async def get(self) -> NotifierPolicy:
        now = time.monotonic()
        if now < self._fresh_until:
            return self._current
        try:
            resp = await self._client.get(
                self._url, headers={"Authorization": f"Bearer {self._token}"}
            )
            resp.raise_for_status()
            self._current = _from_body(resp.json(), self._defaults)
            self._fresh_until = now + CACHE_TTL_S
        except (httpx.HTTPError, ValueError) as exc:
            log.warning(
                "policy settings unavailable; using last known values",
                extra={"error": f"{type(exc).__name__}: {exc}"[:300]},
            )
            self._fresh_until = now + RETRY_AFTER_FAILURE_S
        return self._current

    async def close(self) -> None:
        await self._client.aclose()
