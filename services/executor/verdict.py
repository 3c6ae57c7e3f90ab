"""What one job came to: the executor's decision, before it is recorded and announced.

A :class:`Verdict` is built by ``chain.py`` (policy checks and program runs) and turned
into one database update (``repo.RecipientUpdate``), zero or more events
(``events.py``) and, for deferrals, a retry publish (``worker.py``).
Diagnostic texts for failures that ran nothing are fixed here (:data:`DIAGNOSTICS`):
``events.rederive`` maps them back when a redelivered job must re-announce an
outcome that was already recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from services.executor.repo import RunRow
from shared.status import FailureKind, NoticeReason, entry_for

Kind = Literal["delivered", "bounced", "deferred", "suspended", "retry"]

DIAGNOSTICS: dict[FailureKind, str] = {
    FailureKind.UNKNOWN_ACCOUNT: "no such account: {recipient}",
    FailureKind.NOT_CONFIGURED: "program delivery not configured for {recipient}",
    FailureKind.DISABLED: "program delivery is disabled (no trusted program registered)",
    FailureKind.SUSPENDED_EXPIRED: "delivery expired after {age} in the queue: {why}",
    FailureKind.BAD_SHELL: "account owner's login shell {shell} is not a valid shell",
    FailureKind.ROOT_WITHOUT_SAFE_USER: "account is owned by {who} and no safe user is set",
    FailureKind.UNRESOLVED_PROGRAM: "cannot resolve program {program}: {why}",
    FailureKind.MAIL_LOOP: "mail loop: message already delivered to {recipient} (Delivered-To)",
    FailureKind.POISON: "delivery job failed repeatedly and was given up: {why}",
}


@dataclass
class Verdict:
    """The decision for one claimed job.

    ``kind``: ``delivered`` / ``bounced`` (final), ``deferred`` (tempfail: counts as an
    attempt, retried at ``next_program``), ``suspended`` (held, not an attempt) or
    ``retry`` (an outage of policy/DB/sandbox: not an attempt, retried as is).
    """

    kind: Kind
    status: str | None = None
    diagnostic: str = ""
    failure: FailureKind | None = None
    program: str | None = None
    position: int | None = None
    exit_status: int | None = None
    signal: int | None = None
    timed_out: bool = False
    output: str = ""
    dsn_output: str = ""
    next_program: int = 0
    runs: list[RunRow] = field(default_factory=list)
    notice_detail: str = ""
    account: str | None = None
    delay_warning: bool = False
    will_retry_until_s: float | None = None

    @property
    def notice(self) -> NoticeReason | None:
        if self.failure is None or self.kind != "bounced":
            return None
        return entry_for(self.failure).notice

    @property
    def final(self) -> bool:
        return self.kind in ("delivered", "bounced")

    @property
    def counts_as_attempt(self) -> bool:
        return self.kind in ("delivered", "bounced", "deferred")

    @property
    def state(self) -> str:
        return {"retry": "deferred"}.get(self.kind, self.kind)


def failed(kind: FailureKind, diagnostic: str, **extra: object) -> Verdict:
    """A verdict for a failure kind, with the status and outcome of the one status table."""
    entry = entry_for(kind)
    v = Verdict(kind="bounced" if entry.outcome.value == "bounced" else "deferred",
                status=entry.status, diagnostic=diagnostic, failure=kind)
    for key, value in extra.items():
        setattr(v, key, value)
    return v
