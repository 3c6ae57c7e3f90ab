"""`mailexec accounts …`: who receives mail through which programs."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import typer

from mailexec.commands.common import (
    JsonOpt,
    TokenOpt,
    api,
    emit_json,
    err,
    fail,
    kv_table,
    out,
    table,
    warnings_of,
)
from shared.sysexits import EX_USAGE

app = typer.Typer(help="Accounts: owner, program list, mailbox delivery.", no_args_is_help=True)


def _path(address: str, suffix: str = "") -> str:
    return f"/v1/accounts/{quote(address, safe='@')}{suffix}"


def _flatten(acct: dict[str, Any]) -> dict[str, Any]:
    owner = acct.get("owner") or {}
    pd = acct.get("program_delivery") or {}
    return {
        "address": acct.get("address"),
        "owner": owner.get("name"),
        "uid": owner.get("uid"),
        "gid": owner.get("gid"),
        "home": owner.get("home"),
        "shell": owner.get("shell"),
        "program delivery": pd.get("enabled"),
        "programs": pd.get("programs"),
        "mailbox delivery": acct.get("mailbox_delivery"),
        "updated": acct.get("updated_at"),
    }


def _print_warnings(body: Any) -> None:
    for w in warnings_of(body):
        err.print(f"warning: {w}", markup=False)


@app.command("set")
def set_(
    address: Annotated[str, typer.Argument(help="the account's mail address")],
    uid: Annotated[
        int, typer.Option("--uid", help="owner's numeric uid (programs run as it; 0 needs safe_user)")
    ],
    gid: Annotated[int, typer.Option("--gid", help="owner's numeric gid")],
    home: Annotated[str, typer.Option("--home", help="owner's home directory (programs start there)")],
    shell: Annotated[str, typer.Option("--shell", help="owner's login shell (must be in valid_shells)")],
    owner_name: Annotated[str, typer.Option("--owner-name", help="owner's login name")],
    program: Annotated[
        list[str] | None,
        typer.Option("--program", "-p", help="a program to run, in order; repeat for a chain"),
    ] = None,
    enable: Annotated[bool, typer.Option("--enable/--disable", help="program delivery on/off")] = True,
    mailbox: Annotated[
        bool, typer.Option("--mailbox/--no-mailbox", help="the MTA also delivers to the mailbox")
    ] = True,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create or replace an account (admin)."""
    payload = {
        "owner": {"name": owner_name, "uid": uid, "gid": gid, "home": home, "shell": shell},
        "program_delivery": {"enabled": enable, "programs": list(program or [])},
        "mailbox_delivery": mailbox,
    }
    with api(token) as client:
        body = client.put("policy", _path(address), json=payload)
    if as_json:
        emit_json(body)
        return
    out.print(kv_table(_flatten(body), title=f"account {body.get('address', address)}"))
    _print_warnings(body)


@app.command("show")
def show(address: str, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Show one account."""
    with api(token) as client:
        body = client.get("policy", _path(address))
    if as_json:
        emit_json(body)
    else:
        out.print(kv_table(_flatten(body), title=f"account {body.get('address', address)}"))


@app.command("list")
def list_(
    limit: Annotated[int, typer.Option(help="page size per request (all pages are fetched)")] = 100,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List every account (follows the API's cursors)."""
    with api(token) as client:
        items = list(client.paginate("policy", "/v1/accounts", limit=limit))
    if as_json:
        emit_json(items)
        return
    rows = [_flatten(a) for a in items]
    out.print(
        table(
            rows,
            [
                ("address", "address"),
                ("owner", "owner"),
                ("uid", "uid"),
                ("program delivery", "program delivery"),
                ("programs", "programs"),
                ("mailbox delivery", "mailbox"),
            ],
            title=f"{len(rows)} account(s)",
        )
    )


@app.command("remove")
def remove(address: str, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Delete an account; its mail then bounces 5.1.1."""
    with api(token) as client:
        client.delete("policy", _path(address))
    if as_json:
        emit_json({"removed": address})
    else:
        out.print(f"removed {address}", markup=False)


@app.command("programs")
def programs(
    address: str,
    set_programs: Annotated[
        list[str] | None,
        typer.Option("--set", help="replace the program list (repeat, in run order)"),
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="empty the program list")] = False,
    enable: Annotated[
        bool | None, typer.Option("--enable/--disable", help="turn program delivery on/off")
    ] = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show or change an account's program list (admin token, or that account's user token)."""
    if clear and set_programs:
        raise fail("--clear and --set exclude each other", EX_USAGE)
    with api(token) as client:
        path = _path(address, "/programs")
        if set_programs is None and not clear and enable is None:
            current = client.get("policy", path)
        else:
            current = client.get("policy", path)
            payload = {
                "enabled": current.get("enabled", False) if enable is None else enable,
                "programs": [] if clear else list(set_programs or current.get("programs") or []),
            }
            current = client.put("policy", path, json=payload)
    if as_json:
        emit_json(current)
        return
    state = "enabled" if current.get("enabled") else "disabled"
    progs = current.get("programs") or []
    out.print(f"{current.get('address', address)}: program delivery {state}", markup=False)
    for i, p in enumerate(progs, 1):
        out.print(f"  {i}. {p}", markup=False)
    if not progs:
        out.print("  (no programs)")
    _print_warnings(current)
