"""`mailexec audit`: who changed which program, setting, account or token, when, old → new
(policy's GET /v1/audit, newest first, following its cursors)."""

from __future__ import annotations

from enum import StrEnum
from itertools import islice
from typing import Annotated, Any

import typer

from mailexec.commands.common import JsonOpt, TokenOpt, api, emit_json, fmt, out, table

MAX_PAGE = 500  # the API's largest page


class Kind(StrEnum):
    program = "program"
    settings = "settings"
    account = "account"
    token = "token"


def _short(value: Any, width: int = 40) -> str:
    text = fmt(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _change(entry: dict[str, Any]) -> str:
    """What changed, compactly: only the keys whose value differs (--json has it all)."""
    old, new = entry.get("old"), entry.get("new")
    if old is None and new is None:
        return "-"
    if not isinstance(old, dict) or not isinstance(new, dict):
        return f"{_short(old)} -> {_short(new)}"
    keys = [k for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
    return "; ".join(f"{k}: {_short(old.get(k))} -> {_short(new.get(k))}" for k in keys) or "-"


def audit(
    kind: Annotated[Kind | None, typer.Option("--kind", help="only changes to this kind of thing")] = None,
    target: Annotated[
        str | None, typer.Option("--target", help="only changes to this program, account or token id")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="at most this many entries")] = 100,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The audit log, newest first: who changed what, when, old -> new (admin)."""
    params = {"kind": kind.value if kind else None, "target": target}
    with api(token) as client:
        pages = client.paginate("policy", "/v1/audit", limit=min(limit, MAX_PAGE), params=params)
        items = list(islice(pages, limit))
    if as_json:
        emit_json(items)
        return
    rows = [{**e, "change": _change(e)} for e in items]
    out.print(
        table(
            rows,
            [
                ("at", "when"),
                ("actor", "who"),
                ("action", "action"),
                ("target_kind", "kind"),
                ("target", "target"),
                ("change", "change"),
            ],
            title=f"{len(rows)} audit entr{'y' if len(rows) == 1 else 'ies'}",
        )
    )
