"""Which events the notifier turns into a notification, and which of those read the
message's body: one rule, read by the notifier (what it renders) and by whoever
finalises a recipient (the executor, ingest's queue control), which flags the body as
still needed in the same transaction (``mail.recipients.notifier_pending``, migration
0008; docs/admin-guide.md "What is kept, where, and for how long").

Why here and not in the notifier: the body of a message may be deleted only once every
notification that quotes it has been rendered. The notifier renders later (after an
aggregation window, or hours later when it was down), so the side that finalises must
know, at that moment, whether a notification will still read the body — by the very
rule the notifier applies, not a copy of it.

- :func:`should_send_dsn`: RFC 3461 / SPEC §4 — never to the null sender ``<>``,
  never with NOTIFY=NEVER, else only for the NOTIFY keyword of the event's kind
  (FAILURE → ``bounce``, DELAY → ``delayed``, SUCCESS → ``delivered``).
- :func:`reads_original`: every DSN returns the original or its headers (RET), and a
  postmaster notice quotes the headers; so a DSN that will be sent, and every notice
  about a known message and recipient, read the body.
- :func:`pending_kinds`: the kinds a list of events leaves pending for one recipient.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from shared.schemas import Event

# The NOTIFY keyword (RFC 3461) that asks for a DSN of each kind.
REQUIRED_NOTIFY: Final[dict[str, str]] = {
    "bounce": "FAILURE", "delayed": "DELAY", "delivered": "SUCCESS"}


def should_send_dsn(event: Event) -> bool:
    """RFC 3461/SPEC §4: never to ``<>``, never for NOTIFY=NEVER, else per NOTIFY keyword."""
    wanted = REQUIRED_NOTIFY.get(event.kind)
    notify = event.envelope.notify
    return bool(wanted) and event.envelope.sender != "" and "NEVER" not in notify and (
        wanted in notify
    )


def reads_original(event: Event) -> bool:
    """Whether the notifier will read the message's stored body for ``event`` (and so
    the body must stay until the notifier has handled it)."""
    if event.message_id is None or not event.recipients:
        return False
    if event.kind == "admin_notice":
        return True
    return should_send_dsn(event)


def pending_kinds(events: Iterable[Event]) -> list[str]:
    """The kinds of ``events`` that read the body (sorted, each once): what a recipient's
    ``notifier_pending`` gains when these events are announced."""
    return sorted({e.kind for e in events if reads_original(e)})
