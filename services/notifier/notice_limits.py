"""Rate limiting of postmaster notices, so a broken program on a busy account doesn't
flood the postmaster.

At most one notice per (account, reason, program) per ``postmaster_notice_interval_s``;
the ones held back are counted and the next notice for that key says how many there
were and since when. The counters live in memory: a restart forgets them, which costs
at most one extra notice per key (every suppressed event is still recorded as seen,
so a redelivery is not counted twice).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage

from shared.schemas import Event

NoticeKey = tuple[str, str, str]


def notice_key(event: Event) -> NoticeKey:
    assert event.notice is not None
    program = next((r.program for r in event.recipients if r.program), None) or ""
    return (
        # Not always an account key: poison and corrupt notices carry the recipient
        # address as the sender wrote it (executor/dead.py), so fold its case here.
        (event.notice.account or "").lower(),
        event.notice.reason.value,
        program,
    )


@dataclass(frozen=True)
class Decision:
    send: bool
    suppressed: int  # notices held back since ``since`` (reported when send is True)
    since: datetime | None


@dataclass
class _State:
    last_sent: datetime
    suppressed: int = 0


class NoticeLimiter:
    def __init__(self, interval_s: float) -> None:
        self._interval = interval_s
        self._state: dict[NoticeKey, _State] = {}

    def decide(self, key: NoticeKey, now: datetime) -> Decision:
        state = self._state.get(key)
        if state is None:
            return Decision(True, 0, None)
        if (now - state.last_sent).total_seconds() < self._interval:
            return Decision(False, state.suppressed + 1, state.last_sent)
        return Decision(True, state.suppressed, state.last_sent)

    def copy(self) -> NoticeLimiter:
        """A trial copy: a batch decides on it and is adopted only once committed."""
        other = NoticeLimiter(self._interval)
        other._state = {k: _State(s.last_sent, s.suppressed) for k, s in self._state.items()}
        return other

    def record(self, key: NoticeKey, decision: Decision, now: datetime) -> None:
        """Apply a decision once what it decided has been committed."""
        if decision.send:
            self._state[key] = _State(last_sent=now)
        else:
            self._state.setdefault(key, _State(last_sent=now)).suppressed = decision.suppressed
        if len(self._state) > 10000:  # bound memory: forget keys quiet for an interval
            self._state = {
                k: s for k, s in self._state.items()
                if (now - s.last_sent).total_seconds() < self._interval or s.suppressed
            }


def annotate_suppressed(notice: EmailMessage, suppressed: int, since: datetime) -> None:
    """Say in the notice (a header and the first line of its text) how many were held back."""
    stamp = since.strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    sentence = (
        f"{suppressed} more notice(s) like this one (same account, reason and program) "
        f"were suppressed since {stamp} by the rate limit (postmaster_notice_interval_s)."
    )
    notice["X-Mailexec-Suppressed"] = str(suppressed)
    subject = str(notice["Subject"])
    del notice["Subject"]
    notice["Subject"] = f"{subject} (+{suppressed} suppressed)"
    first = next(notice.iter_parts())
    description = first.get("Content-Description", "Postmaster notice")
    text = first.get_content()
    cte = "7bit" if text.isascii() else "quoted-printable"
    first.set_content(textwrap.fill(sentence, 72) + "\n\n" + text, cte=cte)
    first["Content-Description"] = description
