"""RCPT-time recipient check for LMTP: is this an account that takes program delivery?

Asked of the policy service (``GET /v1/accounts/{address}`` with the service token), so
the MTA, not mailexec, refuses mail for an address nobody runs programs for: the MTA
bounces it to the sender at once, and mailexec never sends backscatter.

Decisions (SPEC §2, LMTP):

=====================================  ==========================================
policy says                            RCPT reply
=====================================  ==========================================
account with program delivery enabled  accepted (also while delivery is suspended:
                                       the job is parked, as for HTTP)
no such account (404, or an address    ``550 5.1.1``
no account can have: not asked)
program delivery not enabled           ``550 5.3.0``
unreachable, timeout, 5xx, 401/403     ``451 4.3.0``: the MTA retries; never a 5xx
=====================================  ==========================================

Positive answers are cached like the executor caches (:class:`shared.cache.AsyncCache`,
dropped on a ``policy.changed`` event and after ``POLICY_CACHE_TTL_S``); refusals are
never cached, so an account created a second ago is accepted on the MTA's next try. The
executor checks the account again before running anything, so a stale positive answer
costs at most a bounce from mailexec instead of one from the MTA.
"""

from __future__ import annotations

import enum
from urllib.parse import quote

import httpx
import orjson

from shared.addresses import AddressError, normalize_account
from shared.cache import AsyncCache

POLICY_CACHE_TTL_S = 30.0


class Answer(enum.Enum):
    ACCEPT = "accept"
    NO_SUCH_ACCOUNT = "no_such_account"
    NOT_PROGRAM_DELIVERY = "not_program_delivery"
    POLICY_UNAVAILABLE = "policy_unavailable"


class AccountCheck:
    def __init__(self, policy_url: str, service_token: str, *, ttl_s: float = POLICY_CACHE_TTL_S) -> None:
        self._http = httpx.AsyncClient(
            base_url=policy_url.rstrip("/"),
            headers={"Authorization": f"Bearer {service_token}", "Accept": "application/json"},
            timeout=httpx.Timeout(5.0, connect=2.0),
            limits=httpx.Limits(max_connections=16, max_keepalive_connections=16),
        )
        self._cache = AsyncCache(ttl_s)
        self.last_error = ""

    async def close(self) -> None:
        await self._http.aclose()

    async def check(self, account: str) -> Answer:
        """The verdict for the account key ``Recipient.account`` ("": no account can have
        the address, so there is nothing to ask)."""
        if not account:
            return Answer.NO_SUCH_ACCOUNT
        return await self._cache.get(account, lambda: self._ask(account),
                                     keep=lambda v: v is Answer.ACCEPT)

    def cached(self, account: str) -> Answer | None:
        """The answer if it is known without asking policy (a cached positive one)."""
        if not account:
            return Answer.NO_SUCH_ACCOUNT
        answer: Answer | None = self._cache.peek(account)
        return answer

    def invalidate(self, body: dict[str, object]) -> None:
        """A ``policy.changed`` broadcast: forget what it names (everything when unsure)."""
        what, key = body.get("what"), body.get("key")
        if what == "account" and isinstance(key, str):
            try:
                gone = normalize_account(key)
            except AddressError:
                self._cache.invalidate()
                return
            self._cache.invalidate(lambda k: k == gone)
        elif what not in ("program", "token"):  # settings, or an unknown kind
            self._cache.invalidate()

    async def _ask(self, account: str) -> Answer:
        try:
            resp = await self._http.get(f"/v1/accounts/{quote(account, safe='@+')}")
        except httpx.HTTPError as exc:
            self.last_error = f"policy service unreachable: {type(exc).__name__}"
            return Answer.POLICY_UNAVAILABLE
        if resp.status_code == 404:
            return Answer.NO_SUCH_ACCOUNT
        if resp.status_code == 400 and b"invalid_address" in resp.content:
            # A policy of another version whose account grammar refuses the key: no
            # account there can have this address.
            return Answer.NO_SUCH_ACCOUNT
        if resp.status_code != 200:
            self.last_error = f"policy service answered {resp.status_code}"
            return Answer.POLICY_UNAVAILABLE
        try:
            data = orjson.loads(resp.content)
            enabled = bool(data["program_delivery"]["enabled"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self.last_error = "policy service sent an unusable account record"
            return Answer.POLICY_UNAVAILABLE
        return Answer.ACCEPT if enabled else Answer.NOT_PROGRAM_DELIVERY
