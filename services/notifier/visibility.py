"""Who may read a stored notification through ``/v1/notifications`` (SPEC §2 notifier).

The admin reads every notification. A ``user`` token (bound to one account) reads a
notification only when it is a DSN (``bounce``, ``delayed``, ``delivered``) and every
recipient it reports (its ``Final-Recipient`` fields: the ``reported`` column, or
:func:`rules.reported_recipients` of an older row's content)
belongs to that account (:func:`shared.addresses.normalize_account` of the address).

What it guarantees: a user never reads an admin notice or a postmaster copy (they carry
program output and details meant for the postmaster), nor a DSN that reports another
account's recipient — one DSN per message and kind covers every recipient that failed
together, so a DSN about two accounts' recipients is readable by the admin only (each
account's user still sees its own recipients' outcome in ingest's ``/v1/messages``).
A DSN whose report can't be read (no recipient found, an address that is no account)
is refused. The notifications table stores no account: it is derived here from what the
DSN says, so rows written before this rule are covered too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from services.notifier.repo import DSN_KINDS, reported_of
from shared.addresses import AddressError, normalize_account


def concerns_only(kind: str, reported: Iterable[str], account: str) -> bool:
    """Whether a notification of ``kind`` reporting the recipients ``reported`` is about
    ``account``'s recipients and nobody else's (see the module docstring)."""
    if kind not in DSN_KINDS:
        return False
    accounts: set[str] = set()
    for address in reported:
        try:
            accounts.add(normalize_account(address))
        except AddressError:
            return False
    return accounts == {account}


def user_may_read(kind: str, content: bytes | None, account: str | None,
                  reported: Sequence[str] | None = None) -> bool:
    """:func:`concerns_only` for a stored notification: its ``reported`` recipients
    (migration 0008), or for an older row what its content says; False without an
    account, and for an old row whose content is deleted (the admin still reads it)."""
    if not account or kind not in DSN_KINDS:
        return False
    return concerns_only(kind, reported_of(reported, content), account)
