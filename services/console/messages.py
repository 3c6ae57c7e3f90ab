"""Messages as a user's pages show them: the account's recent messages from ingest, each
with its per-program outcome, and the DSNs notifier sent about them. Built only from
``GET /v1/messages?recipient=``, ``GET /v1/messages/{id}`` and
``GET /v1/notifications?message_id=`` with the signed-in person's token."""

from __future__ import annotations

import asyncio
import signal as signals
from dataclasses import dataclass, field
from typing import Any

from services.console.api import Api, seg
from services.console.errors import ApiError
from shared.status import describe_exit

PAGE_SIZE = 20


@dataclass
class Run:
    program: str
    position: int
    attempt: int
    outcome: str
    exit_status: int | None
    signal: int | None
    timed_out: bool
    duration_ms: int | None
    output_excerpt: str
    started_at: str | None


@dataclass
class RecipientView:
    address: str
    state: str
    attempts: int
    status: str | None
    diagnostic: str | None
    final_at: str | None
    runs: list[Run]

    @property
    def last_runs(self) -> list[Run]:
        """The runs of the latest attempt (earlier attempts are on the message's page)."""
        if not self.runs:
            return []
        last = max(r.attempt for r in self.runs)
        return [r for r in self.runs if r.attempt == last]


@dataclass
class MessageView:
    id: str
    sender: str
    received_at: str | None
    size: int | None
    recipients: list[RecipientView] = field(default_factory=list)
    notifications: list[dict[str, Any]] = field(default_factory=list)
    body_held: bool | None = None  # None: ingest didn't say
    problem: str | None = None  # this message's details could not be loaded
    dsn_problem: str | None = None  # its DSNs could not be loaded


def outcome_of(run: dict[str, Any]) -> str:
    if run.get("timed_out"):
        return "timed out"
    sig = run.get("signal")
    if isinstance(sig, int):
        try:
            name = signals.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"killed by {name}"
    code = run.get("exit_status")
    if code == 0:
        return "exited 0 but wrote output" if run.get("output_excerpt") else "succeeded"
    if isinstance(code, int):
        return f"failed: exit {code} ({describe_exit(code)})"
    return "did not run"


def to_run(run: dict[str, Any]) -> Run:
    return Run(program=str(run.get("program") or ""), position=int(run.get("position") or 0),
               attempt=int(run.get("attempt") or 0), outcome=outcome_of(run),
               exit_status=run.get("exit_status"), signal=run.get("signal"),
               timed_out=bool(run.get("timed_out")), duration_ms=run.get("duration_ms"),
               output_excerpt=str(run.get("output_excerpt") or ""),
               started_at=run.get("started_at"))


def to_message(detail: dict[str, Any], account: str) -> MessageView:
    envelope = detail.get("envelope") or {}
    view = MessageView(id=str(detail.get("id")), sender=str(envelope.get("from") or ""),
                       received_at=detail.get("received_at"), size=detail.get("size"),
                       body_held=detail.get("body_held"))
    for rcpt in detail.get("recipients") or []:
        if rcpt.get("account") not in (None, account) and account:
            continue  # another recipient of the same message: not this account's business
        view.recipients.append(RecipientView(
            address=str(rcpt.get("address") or ""), state=str(rcpt.get("state") or ""),
            attempts=int(rcpt.get("attempts") or 0), status=rcpt.get("status"),
            diagnostic=rcpt.get("diagnostic"), final_at=rcpt.get("final_at"),
            runs=sorted((to_run(r) for r in rcpt.get("programs") or []),
                        key=lambda r: (r.attempt, r.position))))
    return view


async def notifications_for(api: Api, message_id: str) -> list[dict[str, Any]]:
    page = await api.get("notifier", "/v1/notifications", params={"message_id": message_id})
    items = page.get("items", []) if isinstance(page, dict) else []
    return [n for n in items if isinstance(n, dict)]


async def one_message(api: Api, account: str, message_id: str,
                      *, with_notifications: bool = True) -> MessageView:
    detail = await api.get("ingest", f"/v1/messages/{seg(message_id)}")
    view = to_message(detail, account)
    if with_notifications:
        try:
            view.notifications = await notifications_for(api, message_id)
        except ApiError as exc:
            if exc.status == 401:
                raise
            if exc.status >= 500:
                view.dsn_problem = f"{exc.service} is not answering: the DSNs can't be shown now"
            elif exc.status == 403:
                view.dsn_problem = (f"The DSNs can't be shown: {exc.service} refused "
                                    f"({exc.message})")
    return view


@dataclass
class MessagePage:
    messages: list[MessageView]
    next_cursor: str | None
    problem: str | None = None  # the list could not be loaded (ingest down …)


async def recent(api: Api, account: str, cursor: str | None = None,
                 limit: int = PAGE_SIZE) -> MessagePage:
    """One page of the account's messages, newest first, each with its outcome and DSNs;
    a service that does not answer leaves ``problem`` set instead of failing the page."""
    params: dict[str, Any] = {"recipient": account, "limit": limit}
    if cursor:
        params["cursor"] = cursor
    try:
        listing = await api.get("ingest", "/v1/messages", params=params)
    except ApiError as exc:
        if exc.status >= 500:
            return MessagePage([], None, f"{exc.service} is not answering: your messages "
                               "can't be shown now; try again in a moment")
        if exc.status == 400:
            return MessagePage([], None, "That page of messages does not exist any more; "
                               "start again from the newest")
        if exc.status in (403, 404):
            return MessagePage([], None, f"Your messages can't be shown: {exc.service} "
                               f"refused ({exc.message})")
        raise
    items = listing.get("messages") or listing.get("items") or []
    ids = [str(m.get("id")) for m in items if isinstance(m, dict) and m.get("id")]

    async def load(mid: str) -> MessageView:
        try:
            return await one_message(api, account, mid)
        except ApiError as exc:
            if exc.status == 401:
                raise
            summary: dict[str, Any] = next(
                (m for m in items if str(m.get("id")) == mid), {})
            view = MessageView(id=mid, sender=str(summary.get("from") or ""),
                               received_at=summary.get("received_at"),
                               size=summary.get("size"))
            view.problem = (f"{exc.service} is not answering" if exc.status >= 500
                            else exc.message)
            return view

    messages = list(await asyncio.gather(*(load(mid) for mid in ids)))
    return MessagePage(messages, listing.get("next_cursor"))
