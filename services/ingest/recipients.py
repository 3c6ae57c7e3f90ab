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

Policy is asked through the one policy client (:class:`shared.policy_client.PolicyClient`,
the executor's: the contract's models, one cache policy). Positive answers are cached
like the executor caches (dropped on a ``policy.changed`` event that names the account
or all of them, and after ``POLICY_CACHE_TTL_S``); refusals are never cached
(``keep_account``), so an account created a second ago is accepted on the MTA's next
try. The executor checks the account again before running anything, so a stale
positive answer costs at most a bounce from mailexec instead of one from the MTA.
"""

from __future__ import annotations

import enum

from shared.contract import Account
from shared.policy_client import POLICY_CACHE_TTL_S, PolicyClient, PolicyUnavailable


class Answer(enum.Enum):
    ACCEPT = "accept"
    NO_SUCH_ACCOUNT = "no_such_account"
    NOT_PROGRAM_DELIVERY = "not_program_delivery"
    POLICY_UNAVAILABLE = "policy_unavailable"


def _accepted(account: Account | None) -> bool:
    return account is not None and account.program_delivery.enabled


class AccountCheck:
    def __init__(self, policy_url: str, service_token: str, *, ttl_s: float = POLICY_CACHE_TTL_S) -> None:
        # RCPT waits on this while the MTA holds the SMTP transaction: shorter timeouts
        # than a delivery's, and a policy of another version refusing the key's grammar
        # (400 invalid_address) means no account there can have the address.
        self._policy = PolicyClient(policy_url, service_token, ttl_s=ttl_s, timeout_s=5.0,
                                    connect_timeout_s=2.0, max_connections=16,
                                    keep_account=_accepted, invalid_address_is_missing=True)
        self.last_error = ""

    async def close(self) -> None:
        await self._policy.close()

    async def check(self, account: str) -> Answer:
        """The verdict for the account key ``Recipient.account`` ("": no account can have
        the address, so there is nothing to ask)."""
        if not account:
            return Answer.NO_SUCH_ACCOUNT
        try:
            found = await self._policy.account(account)
        except PolicyUnavailable as exc:
            self.last_error = exc.reason
            return Answer.POLICY_UNAVAILABLE
        if found is None:
            return Answer.NO_SUCH_ACCOUNT
        return Answer.ACCEPT if found.program_delivery.enabled else Answer.NOT_PROGRAM_DELIVERY

    def cached(self, account: str) -> Answer | None:
        """The answer if it is known without asking policy (a cached positive one)."""
        if not account:
            return Answer.NO_SUCH_ACCOUNT
        return Answer.ACCEPT if self._policy.cached_account(account) is not None else None

    def invalidate(self, body: dict[str, object]) -> None:
        """A ``policy.changed`` broadcast: forget what it names (everything when unsure)."""
        what, key = body.get("what"), body.get("key")
        self._policy.invalidate(what if isinstance(what, str) else None,
                                key if isinstance(key, str) else None)
