"""`mailexec settings show|set`, `suspend`, `resume`, `status`: the program-delivery switches."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer

from mailexec.commands.common import JsonOpt, TokenOpt, api, emit_json, fail, kv_table, out, table
from shared import topology
from shared.sysexits import EX_USAGE

app = typer.Typer(
    help="Program-delivery settings (mode, suspended, safe_user, valid_shells, limits…).",
    no_args_is_help=True,
)

LIST_KEYS = {"valid_shells": str, "tempfail_exit_codes": int}
BOOL_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def parse_value(key: str, raw: str) -> Any:
    """Turn `key=value` text into the JSON value the API expects.

    JSON first (ints, bools, lists, objects, null); then yes/no/on/off; comma lists for
    list settings; ``uid:gid`` for safe_user; otherwise the text itself.
    """
    text = raw.strip()
    if key == "safe_user" and ":" in text and not text.startswith("{"):
        uid, _, gid = text.partition(":")
        try:
            return {"uid": int(uid), "gid": int(gid)}
        except ValueError:
            raise ValueError(f"safe_user: expected UID:GID, got {raw!r}") from None
    if key == "safe_user" and text.lower() in ("none", ""):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        value = None
        parsed = False
    else:
        parsed = True
    if parsed and not (key in LIST_KEYS and isinstance(value, (int, str))):
        return value
    if text.lower() in BOOL_WORDS:
        return BOOL_WORDS[text.lower()]
    if key in LIST_KEYS:
        conv = LIST_KEYS[key]
        try:
            return [conv(part.strip()) for part in text.split(",") if part.strip()]
        except ValueError:
            raise ValueError(f"{key}: expected a comma-separated list, got {raw!r}") from None
    return text


def parse_assignments(pairs: list[str]) -> dict[str, Any]:
    patch: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected key=value, got {pair!r}")
        patch[key.strip()] = parse_value(key.strip(), raw)
    return patch


@app.command("show")
def show(token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Show the effective settings."""
    with api(token) as client:
        body = client.get("policy", "/v1/settings")
    if as_json:
        emit_json(body)
    else:
        out.print(kv_table(body, title="settings"))


@app.command("set")
def set_(
    assignments: Annotated[
        list[str],
        typer.Argument(
            help="key=value …, e.g. mode=insecure program_timeout_s=120 "
            "valid_shells=/bin/sh,/bin/bash safe_user=1001:1001 postmaster=root@example.org"
        ),
    ],
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change settings (PATCH: keys not named keep their value)."""
    try:
        patch = parse_assignments(assignments)
    except ValueError as exc:
        raise fail(str(exc), EX_USAGE) from None
    with api(token) as client:
        body = client.patch("policy", "/v1/settings", json=patch)
    if as_json:
        emit_json(body)
    else:
        out.print(kv_table({k: body.get(k) for k in patch}, title="changed"))


def _switch(suspended: bool, token: str | None, as_json: bool) -> None:
    with api(token) as client:
        client.patch("policy", "/v1/settings", json={"suspended": suspended})
        status = client.get("policy", "/v1/status")
    if as_json:
        emit_json(status)
    elif suspended:
        out.print(
            "program delivery suspended: jobs are held (never run, never bounced) until `mailexec resume`"
        )
    else:
        out.print(f"program delivery resumed: now {status.get('program_delivery')}; held jobs run promptly")


def suspend(token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Suspend program delivery (the old SUSPEND-PROGRAM-DELIVERIES flag file)."""
    _switch(True, token, as_json)


def resume(token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Resume program delivery; held jobs are released."""
    _switch(False, token, as_json)


QUEUES: tuple[str, ...] = (
    topology.DELIVERIES_QUEUE,
    topology.HELD_QUEUE,
    topology.DELIVERIES_DEAD,
    *(name for name, _ in topology.RETRY_LADDER),
    topology.NOTIFIER_QUEUE,
    topology.NOTIFIER_DEAD,
)


async def queue_depths(amqp_url: str, timeout: float = 5.0) -> dict[str, Any]:
    """Message and consumer counts by passive declare (never creates a queue)."""
    import aio_pika
    from aiormq.exceptions import ChannelNotFoundEntity

    result: dict[str, Any] = {}
    conn = await asyncio.wait_for(aio_pika.connect(amqp_url), timeout)
    try:
        channel = await conn.channel()
        for name in QUEUES:
            try:
                q = await channel.declare_queue(name, passive=True)
            except ChannelNotFoundEntity:
                result[name] = None
                channel = await conn.channel()
                continue
            result[name] = {
                "messages": q.declaration_result.message_count,
                "consumers": q.declaration_result.consumer_count,
            }
    finally:
        await conn.close()
    return result


def status(
    token: TokenOpt = None,
    as_json: JsonOpt = False,
    no_queues: Annotated[bool, typer.Option("--no-queues", help="skip the RabbitMQ queue depths")] = False,
) -> None:
    """Program delivery enabled/disabled/suspended, mode, and queue depths."""
    from shared.settings import get_settings

    with api(token) as client:
        st = client.get("policy", "/v1/status")
    queues: dict[str, Any] | None = None
    queue_error = None
    if not no_queues:
        try:
            queues = asyncio.run(queue_depths(get_settings().amqp_url))
        except Exception as exc:  # report, don't fail: status is for troubleshooting
            queue_error = f"{type(exc).__name__}: {exc}"
    if as_json:
        emit_json({**st, "queues": queues, "queue_error": queue_error})
        return
    colour = {"enabled": "green", "disabled": "yellow", "suspended": "red"}.get(
        st.get("program_delivery", ""), ""
    )
    out.print(f"program delivery: [bold {colour}]{st.get('program_delivery')}[/]  mode: {st.get('mode')}")
    extra = {k: v for k, v in st.items() if k not in ("program_delivery", "mode")}
    if extra:
        out.print("  " + "  ".join(f"{k}: {v}" for k, v in extra.items()), markup=False)
    if queues is not None:
        rows = [
            {
                "queue": name,
                "messages": (v or {}).get("messages"),
                "consumers": (v or {}).get("consumers"),
                "note": "" if v is not None else "not declared yet",
            }
            for name, v in queues.items()
        ]
        out.print(
            table(
                rows, [("queue", "queue"), ("messages", "messages"), ("consumers", "consumers"), ("note", "")]
            )
        )
    elif queue_error:
        out.print(f"queues: unavailable ({queue_error}); check MAILEXEC_AMQP_URL", markup=False)
