"""`mailexec tokens issue|list|revoke`: user tokens, with which an account's owner changes
its own program list (policy's /v1/accounts/{address}/tokens and /v1/tokens/{id})."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

import typer

from mailexec.commands.common import JsonOpt, TokenOpt, api, emit_json, fmt, out, table

app = typer.Typer(
    help="User tokens (an account's owner may change its own program list).", no_args_is_help=True
)


def _path(address: str) -> str:
    return f"/v1/accounts/{quote(address, safe='@')}/tokens"


@app.command("issue")
def issue(
    address: Annotated[str, typer.Argument(help="the account the token may manage")],
    label: Annotated[str | None, typer.Option(help="a note to recognise the token by")] = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Issue a user token for ADDRESS (shown once; store it now)."""
    with api(token) as client:
        body = client.post("policy", _path(address), json={"label": label} if label else {})
    if as_json:
        emit_json(body)
        return
    out.print(f"token for {fmt(body.get('account', address))} (shown once, store it now):", markup=False)
    out.print(str(body.get("token")), markup=False)
    out.print(f"id {fmt(body.get('id'))} (to revoke it: mailexec tokens revoke ID)", markup=False)


@app.command("list")
def list_(
    address: Annotated[str, typer.Argument(help="the account whose tokens to list")],
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List ADDRESS's user tokens: id, label, created, last used, revoked (never the secret)."""
    with api(token) as client:
        items = client.get("policy", _path(address)).get("items", [])
    if as_json:
        emit_json(items)
        return
    out.print(
        table(
            items,
            [
                ("id", "id"),
                ("label", "label"),
                ("created_at", "created"),
                ("created_by", "by"),
                ("last_used_at", "last used"),
                ("revoked_at", "revoked"),
            ],
            title=f"{len(items)} token(s) of {address}",
        )
    )


@app.command("revoke")
def revoke(
    token_id: Annotated[str, typer.Argument(metavar="ID", help="the token's id (tokens list shows it)")],
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke a user token at once (audited; revoking it again changes nothing)."""
    with api(token) as client:
        client.delete("policy", f"/v1/tokens/{quote(token_id, safe='')}")
    if as_json:
        emit_json({"revoked": token_id})
    else:
        out.print(f"revoked token {token_id}", markup=False)
