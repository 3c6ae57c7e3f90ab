"""`mailexec notifications`: the DSNs and admin notices the notifier generated and whether
they were sent (notifier's GET /v1/notifications, newest first, following its cursors)."""

from __future__ import annotations

from enum import StrEnum
from itertools import islice
from typing import Annotated

import typer

from mailexec.commands.common import JsonOpt, TokenOpt, api, emit_json, out, table

MAX_PAGE = 500


class State(StrEnum):
    pending = "pending"
    sent = "sent"
    failed = "failed"


def notifications(
    message: Annotated[
        str | None, typer.Option("--message", metavar="ID", help="only those about this message")
    ] = None,
    state: Annotated[State | None, typer.Option("--state", help="only in this send state")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="at most this many")] = 100,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """DSNs and admin notices generated, newest first, and whether they were sent.

    Admin token; a user token needs --message and sees its own account's DSNs only.
    """
    params = {"message_id": message, "state": state.value if state else None}
    with api(token) as client:
        pages = client.paginate("notifier", "/v1/notifications", limit=min(limit, MAX_PAGE), params=params)
        items = list(islice(pages, limit))
    if as_json:
        emit_json(items)
        return
    out.print(
        table(
            items,
            [
                ("created_at", "created"),
                ("kind", "kind"),
                ("message_id", "message"),
                ("rcpt", "to"),
                ("state", "state"),
                ("attempts", "attempts"),
                ("sent_at", "sent"),
                ("last_error", "last error"),
            ],
            title=f"{len(items)} notification(s)",
        )
    )
