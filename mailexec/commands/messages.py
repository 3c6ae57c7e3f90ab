"""`mailexec messages show ID`: where a message is, per recipient and per program run, and
whether its body is still stored."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.table import Table
from rich.text import Text

from mailexec.commands.common import JsonOpt, TokenOpt, api, emit_json, fmt, out, table

app = typer.Typer(help="Messages accepted by ingest.", no_args_is_help=True)

STATE_STYLE = {
    "delivered": "green",
    "bounced": "red",
    "deferred": "yellow",
    "suspended": "magenta",
    "running": "cyan",
    "queued": "",
}


def _runs(rcpt: dict[str, Any]) -> list[dict[str, Any]]:
    for key in ("programs", "program_runs", "runs", "results"):
        value = rcpt.get(key)
        if isinstance(value, list):
            return value
    return []


def _result(run: dict[str, Any]) -> str:
    if run.get("timed_out"):
        return "timed out"
    if run.get("signal"):
        return f"killed by signal {run['signal']}"
    if run.get("exit_status") is None:
        return "running" if not run.get("finished_at") else "-"
    return f"exit {run['exit_status']}"


def render(msg: dict[str, Any]) -> None:
    env = {**msg, **(msg.get("envelope") or {})}
    sender = env.get("from", env.get("sender"))
    head = Table(show_header=False, title=f"message {msg.get('id')}")
    head.add_column("k", style="bold")
    head.add_column("v")
    head.add_row("from", "<>" if sender == "" else Text(fmt(sender)))
    for key in ("envid", "ret", "notify", "size", "received_at"):
        if key in env:
            head.add_row(key, Text(fmt(env[key])))
    if "body_held" in msg:
        head.add_row("body", "still stored" if msg["body_held"] else
                     "deleted (records kept for record_retention_days)")
    out.print(head)
    t = Table(title="recipients and program runs")
    for col in (
        "recipient",
        "state",
        "attempts",
        "status",
        "program",
        "attempt",
        "result",
        "ms",
        "output / diagnostic",
    ):
        t.add_column(col, overflow="fold")
    for rcpt in msg.get("recipients") or []:
        state = str(rcpt.get("state", "?"))
        styled = f"[{STATE_STYLE[state]}]{state}[/]" if STATE_STYLE.get(state) else state
        runs = _runs(rcpt)
        first: list[Text | str] = [
            Text(fmt(rcpt.get("address"))),
            styled,
            fmt(rcpt.get("attempts")),
            fmt(rcpt.get("status")),
        ]
        diag = str(rcpt.get("diagnostic") or "")
        if not runs:
            t.add_row(*first, "-", "-", "-", "-", Text(diag or "-"))
            continue
        for i, run in enumerate(runs):
            cells = first if i == 0 else ["", "", "", ""]
            excerpt = str(run.get("output_excerpt") or "").strip()
            note = excerpt[:200] if excerpt else (diag if i == len(runs) - 1 else "")
            t.add_row(
                *cells,
                Text(fmt(run.get("program"))),
                fmt(run.get("attempt")),
                _result(run),
                fmt(run.get("duration_ms")),
                Text(note or "-"),
            )
    out.print(t)


@app.command("show")
def show(message_id: str, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Show a message's envelope and, per recipient, its state and program results."""
    with api(token) as client:
        msg = client.get("ingest", f"/v1/messages/{quote(message_id, safe='')}")
    if as_json:
        emit_json(msg)
    else:
        render(msg)


@app.command("list")
def list_(
    recipient: Annotated[str | None, typer.Option(help="only messages for this account")] = None,
    state: Annotated[str | None, typer.Option(help="only recipients in this state (e.g. deferred)")] = None,
    limit: Annotated[int, typer.Option(help="at most this many messages")] = 50,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List recent messages, newest first (admin)."""
    params: dict[str, Any] = {"limit": min(limit, 500)}
    if recipient:
        params["recipient"] = recipient
    if state:
        params["state"] = state
    with api(token) as client:
        body = client.get("ingest", "/v1/messages", params=params)
    items = body.get("messages", []) if isinstance(body, dict) else body
    if as_json:
        emit_json(items)
    else:
        out.print(
            table(items, [("id", "id"), ("from", "from"), ("size", "bytes"), ("received_at", "received")])
        )
