"""Which events become a DSN (RFC 3461 §4.1, SPEC §4), merging aggregated events, and
which recipients a message's earlier delay warnings already covered.

The yes/no rule itself is :func:`shared.notify.should_send_dsn` (the executor flags a
message's body as still needed by the same rule); this module
only names the reason for the log and the metrics.
"""

from __future__ import annotations

from email import policy as email_policy
from email.message import Message
from email.parser import BytesParser

from services.notifier.dsn import recipient_field
from shared.notify import REQUIRED_NOTIFY, should_send_dsn
from shared.schemas import Event, EventRecipient


def skip_reason(event: Event) -> str | None:
    """Why this DSN event produces nothing, or None when it should produce a DSN."""
    if should_send_dsn(event):
        return None
    env = event.envelope
    if env.sender == "":
        return "null_sender"
    if "NEVER" in env.notify:
        return "notify_never"
    return f"notify_without_{REQUIRED_NOTIFY.get(event.kind, 'keyword').lower()}"


def merge(events: list[Event]) -> Event:
    """One event reporting every recipient of ``events`` (same message and kind).

    A recipient reported twice keeps its latest report. The envelope is the message's,
    identical in every event; ``occurred_at`` is the latest.
    """
    first = events[0]
    by_address: dict[str, EventRecipient] = {}
    for ev in sorted(events, key=lambda e: e.occurred_at):
        for rcpt in ev.recipients:
            by_address[rcpt.address.lower()] = rcpt
    return first.model_copy(
        update={
            "recipients": list(by_address.values()),
            "occurred_at": max(e.occurred_at for e in events),
        }
    )


def reported_field(address: str) -> str:
    """The recipient ``address`` as :func:`reported_recipients` reads it back from a DSN
    that reports it: what ``notifier.notifications.reported`` keeps, so a DSN's
    recipients are known without its (deleted) content."""
    return recipient_field(address).split(";", 1)[-1].strip().lower()


def reported_recipients(dsn: bytes) -> set[str]:
    """Lower-cased Final-Recipient addresses of a stored DSN's delivery-status part."""
    parsed = BytesParser(policy=email_policy.default).parsebytes(dsn)
    found: set[str] = set()
    for part in parsed.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        blocks = part.get_payload()
        if not isinstance(blocks, list):
            continue
        for block in blocks[1:]:
            if isinstance(block, Message) and block.get("Final-Recipient"):
                value = str(block["Final-Recipient"]).split(";", 1)[-1].strip()
                found.add(value.lower())
    return found


def without_recipients(event: Event, addresses: set[str]) -> Event:
    keep = [r for r in event.recipients if r.address.lower() not in addresses]
    return event.model_copy(update={"recipients": keep})
