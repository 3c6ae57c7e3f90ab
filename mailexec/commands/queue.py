"""`mailexec queue`: look at the queue and work it, as postqueue/postsuper and exim -M do.

    mailexec queue list [--state S] [--account A] [--sender S] [--older-than 10m] [--json]
    mailexec queue retry ID | --all        (postqueue -i ID / -f,   exim -M ID / -qff)
    mailexec queue hold ID                 (postsuper -h ID,        exim -Mf ID)
    mailexec queue release ID              (postsuper -H ID,        exim -Mt ID)
    mailexec queue delete ID [--bounce]    (postsuper -d ID,        exim -Mrm ID / -Mg ID)
    mailexec queue dead list | show ID | requeue ID | requeue --all
    mailexec queue actions [--message ID]  (the audit of the above)

Every action goes to ingest's ``/v1/queue`` (admin token), which audits it. Exit codes
as the rest of the CLI (``common.api``): 0 done (or nothing to do: holding a held
recipient), 65 (EX_DATAERR) when the action is not possible (a final recipient: 409),
66 no such message, 77 not an admin token, 69 ingest or its broker down.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from mailexec.commands.common import JsonOpt, TokenOpt, api, emit_json, fail, fmt, out, table
from shared.sysexits import EX_USAGE

app = typer.Typer(help="The delivery queue: list, retry, hold, release, delete, dead letters.",
                  no_args_is_help=True)
dead_app = typer.Typer(help="Dead letters: recipients whose job the broker gave up on.",
                       no_args_is_help=True)
app.add_typer(dead_app, name="dead")

RecipientOpt = Annotated[str | None, typer.Option(
    "--recipient", help="act on this recipient of the message only")]
STATE_STYLE = {"deferred": "yellow", "suspended": "magenta", "on_hold": "bold magenta",
               "running": "cyan", "delivered": "green", "bounced": "red", "deleted": "red"}


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="queue")


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(max(seconds, 0))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def next_try_text(item: dict[str, Any], now: datetime) -> str:
    state = item.get("state")
    if state == "queued":
        return "now"
    if state == "on_hold":
        return "held"
    when = item.get("next_try")
    if not when:
        return "-"
    left = (datetime.fromisoformat(when) - now).total_seconds()
    return "now" if left <= 0 else f"in {age(left)}"


def last_error(item: dict[str, Any]) -> str:
    status, diag = item.get("status"), item.get("diagnostic")
    text = " ".join(str(x) for x in (status, diag) if x)
    return (text[:77] + "...") if len(text) > 80 else (text or "-")


def _state(value: Any) -> str:
    s = fmt(value)
    style = STATE_STYLE.get(s)
    return f"[{style}]{s}[/]" if style else s


def render_list(items: list[dict[str, Any]], title: str | None = None) -> None:
    now = datetime.now(UTC)
    rows = [{**i, "sender": i.get("sender") or "<>", "age": age(i.get("age_s")),
             "next": next_try_text(i, now), "last": last_error(i)} for i in items]
    out.print(table(rows, [
        ("message_id", "message"), ("address", "recipient"), ("sender", "sender"),
        ("state", "state", _state), ("attempts", "att"), ("age", "age"),
        ("next", "next try"), ("last", "last status / error"),
    ], title=title))
    out.print(f"-- {len(items)} recipient(s)")


@app.command("list")
def list_(
    state: Annotated[list[str] | None, typer.Option(
        "--state", help="queued, running, deferred, suspended, on_hold (repeatable); also "
        "delivered, bounced, deleted. Default: everything not final")] = None,
    account: Annotated[str | None, typer.Option("--account", help="recipient account")] = None,
    sender: Annotated[str | None, typer.Option("--sender", help="envelope sender ('' = <>)")] = None,
    older_than: Annotated[str | None, typer.Option(
        "--older-than", help="received longer ago than this: 90, 10m, 2h, 1d")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=5000)] = 500,
    json_out: JsonOpt = False,
    token: TokenOpt = None,
) -> None:
    """Per recipient: message id, state, attempts, age, next try, last status (mailq)."""
    params: list[tuple[str, str | int]] = [("limit", limit)]
    params += [("state", s) for s in state or []]
    for key, value in (("recipient", account), ("sender", sender), ("older_than", older_than)):
        if value is not None:
            params.append((key, value))
    with api(token) as c:
        body = c.get("ingest", "/v1/queue", params=params)
    if json_out:
        emit_json(body)
        return
    render_list(body["recipients"])


def _act(path: str, token: str | None, json_out: bool, **params: Any) -> None:
    with api(token) as c:
        body = c.post("ingest", path, params={k: v for k, v in params.items() if v is not None})
    if json_out:
        emit_json(body)
        return
    for r in body.get("recipients", []):
        arrow = f"{r['from']} -> {r['state']}" if r["result"] == "changed" else r["state"]
        why = f" ({r['why']})" if r.get("why") else ""
        out.print(f"{r['address']}: {r['result']}: {arrow}{why}", markup=False)
    tail = "" if body.get("published", True) else " (queued by the relay shortly)"
    out.print(f"{body['action']}: {body['changed']} changed; audit #{body['audit_id']}{tail}",
              markup=False)
    if "body_held" in body:
        out.print("body: kept until the DSNs that quote it are rendered, or the recipients "
                  "being delivered are done" if body["body_held"] else "body: deleted",
                  markup=False)


@app.command()
def retry(
    message_id: Annotated[str | None, typer.Argument(help="message id")] = None,
    all_: Annotated[bool, typer.Option("--all", help="every deferred recipient")] = False,
    recipient: RecipientOpt = None, json_out: JsonOpt = False, token: TokenOpt = None,
) -> None:
    """Try now: the recipient is queued again at once (postqueue -i / -f, exim -M)."""
    if all_ == (message_id is not None):
        raise fail("give a message id or --all", EX_USAGE)
    if all_:
        _act("/v1/queue/retry-all", token, json_out)
    else:
        _act(f"/v1/queue/{message_id}/retry", token, json_out, recipient=recipient)


@app.command()
def hold(message_id: Annotated[str, typer.Argument(help="message id")],
         recipient: RecipientOpt = None, json_out: JsonOpt = False, token: TokenOpt = None) -> None:
    """Put on hold: never tried until released (postsuper -h, exim -Mf)."""
    _act(f"/v1/queue/{message_id}/hold", token, json_out, recipient=recipient)


@app.command()
def release(message_id: Annotated[str, typer.Argument(help="message id")],
            recipient: RecipientOpt = None, json_out: JsonOpt = False,
            token: TokenOpt = None) -> None:
    """Release from hold and queue it now (postsuper -H, exim -Mt)."""
    _act(f"/v1/queue/{message_id}/release", token, json_out, recipient=recipient)


@app.command()
def delete(
    message_id: Annotated[str, typer.Argument(help="message id")],
    bounce: Annotated[bool, typer.Option(
        "--bounce", help="bounce to the sender with a DSN (5.0.0) instead of silently")] = False,
    recipient: RecipientOpt = None, json_out: JsonOpt = False, token: TokenOpt = None,
) -> None:
    """Remove from the queue: silently (postsuper -d, exim -Mrm) or --bounce (exim -Mg).
    Without --recipient the message's body is deleted too (at once, or once the DSNs
    that quote it are rendered), even when every recipient is final already."""
    _act(f"/v1/queue/{message_id}/delete", token, json_out, recipient=recipient,
         bounce="true" if bounce else None)


@app.command()
def actions(
    message: Annotated[str | None, typer.Option("--message", help="one message's")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=500)] = 50,
    json_out: JsonOpt = False, token: TokenOpt = None,
) -> None:
    """The audit of queue actions: who did what to which message, when."""
    params: dict[str, Any] = {"limit": limit}
    if message:
        params["message_id"] = message
    with api(token) as c:
        body = c.get("ingest", "/v1/queue/actions", params=params)
    if json_out:
        emit_json(body)
        return
    rows = [{**a, "recipients": ", ".join(a["recipients"][:3])
             + (" ..." if len(a["recipients"]) > 3 else "")} for a in body["actions"]]
    out.print(table(rows, [("id", "#"), ("at", "at"), ("actor", "actor"), ("action", "action"),
                           ("message_id", "message"), ("recipients", "recipients")]))


@dead_app.command("list")
def dead_list(json_out: JsonOpt = False, token: TokenOpt = None) -> None:
    """Recipients ended by the dead-letter handler (their job hit the delivery limit)."""
    with api(token) as c:
        body = c.get("ingest", "/v1/queue/dead")
    if json_out:
        emit_json(body)
        return
    render_list(body["recipients"], title="dead letters")
    waiting = body.get("in_dead_letter_queue")
    out.print(f"-- deliveries.dead holds {fmt(waiting)} job(s) not handled yet")


@dead_app.command("show")
def dead_show(message_id: Annotated[str, typer.Argument(help="message id")],
              json_out: JsonOpt = False, token: TokenOpt = None) -> None:
    """A message's dead letters with the reason the broker gave up."""
    with api(token) as c:
        body = c.get("ingest", f"/v1/queue/dead/{message_id}")
    if json_out:
        emit_json(body)
        return
    for r in body["recipients"]:
        out.print(f"{r['address']}: dead-lettered {r['dead_lettered_at']}, attempts "
                  f"{r['attempts']}, {r['status']}: {r['diagnostic']}", markup=False)


@dead_app.command("requeue")
def dead_requeue(
    message_id: Annotated[str | None, typer.Argument(help="message id")] = None,
    all_: Annotated[bool, typer.Option("--all", help="every dead letter")] = False,
    recipient: RecipientOpt = None, json_out: JsonOpt = False, token: TokenOpt = None,
) -> None:
    """Queue the job again (fresh generation); the recipient is queued once more."""
    if all_ == (message_id is not None):
        raise fail("give a message id or --all", EX_USAGE)
    if all_:
        _act("/v1/queue/dead/requeue-all", token, json_out)
    else:
        _act(f"/v1/queue/dead/{message_id}/requeue", token, json_out, recipient=recipient)
