"""`mailexec programs add|list|show|set|remove`: the trusted-program registry (the old trusted directory)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer

from mailexec.client import Client
from mailexec.commands.common import JsonOpt, TokenOpt, api, emit_json, err, fail, kv_table, out, table
from shared.sysexits import EX_NOINPUT, EX_USAGE

app = typer.Typer(
    help="Trusted programs: register inspected programs, list, show, set metadata, remove.",
    no_args_is_help=True,
)


class Network(StrEnum):
    none = "none"
    egress = "egress"



def _short(sha: object) -> str:
    return str(sha)[:16] + "…" if sha else "-"


def register_program(client: Client, name: str, content: bytes, allow_interpreter: bool) -> dict[str, Any]:
    """PUT /v1/programs/NAME (shared by `programs add` and `import-trusted-dir`)."""
    params = {"allow_interpreter": "true"} if allow_interpreter else None
    body = client.put(
        "policy",
        f"/v1/programs/{quote(name, safe='')}",
        content=content,
        params=params,
        headers={"Content-Type": "application/octet-stream"},
    )
    return body if isinstance(body, dict) else {}


@app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="program name users put in their account (e.g. mymail)")],
    file: Annotated[Path, typer.Argument(help="the inspected executable to register")],
    allow_interpreter: Annotated[
        bool,
        typer.Option(
            "--allow-interpreter",
            help="register even a command interpreter (sh, perl, python…); audited; think twice",
        ),
    ] = False,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Register or replace trusted program NAME with the bytes of FILE."""
    try:
        content = file.read_bytes()
    except OSError as exc:
        raise fail(f"cannot read {file}: {exc.strerror}", EX_NOINPUT) from None
    with api(token) as client:
        meta = register_program(client, name, content, allow_interpreter)
    if as_json:
        emit_json(meta)
        return
    out.print(f"registered {name}: {len(content)} bytes, sha256 {meta.get('sha256', '?')}", markup=False)
    if meta.get("interpreter"):
        err.print(
            f"warning: {name} is a command interpreter; registered because --allow-interpreter was given"
        )


@app.command("list")
def list_(token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """List the trusted programs."""
    with api(token) as client:
        body = client.get("policy", "/v1/programs")
    items = body.get("items", body) if isinstance(body, dict) else body
    if as_json:
        emit_json(items)
        return
    out.print(
        table(
            items,
            [
                ("name", "name"),
                ("size", "bytes"),
                ("sha256", "sha256", _short),
                ("interpreter", "interpreter"),
                ("network", "network"),
                ("registered_by", "registered by"),
                ("updated_at", "updated"),
            ],
            title=f"{len(items)} trusted program(s)",
        )
    )


SHOW_FIRST = ("name", "description", "network")


def _shown(meta: dict[str, Any]) -> dict[str, Any]:
    first = {k: meta.get(k) for k in SHOW_FIRST}
    if first["description"] is None:
        first["description"] = "(none)"
    return {**first, **{k: v for k, v in meta.items() if k not in SHOW_FIRST}}


@app.command("show")
def show(name: str, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Show one trusted program: description, network, sha256, size, who registered it, when."""
    with api(token) as client:
        meta = client.get("policy", f"/v1/programs/{quote(name, safe='')}")
    if as_json:
        emit_json(meta)
    else:
        out.print(kv_table(_shown(meta), title=f"program {name}"))


@app.command("set")
def set_(
    name: str,
    network: Annotated[
        Network | None,
        typer.Option(
            "--network",
            help="what the program may reach when it runs: none (no network at all) or egress "
            "(outside addresses only; the control plane, cluster and metadata addresses are "
            "dropped). Audited.",
        ),
    ] = None,
    description: Annotated[
        str | None,
        typer.Option("--description", help="what it does, shown to users choosing programs"),
    ] = None,
    no_description: Annotated[
        bool, typer.Option("--no-description", help="remove the description")
    ] = False,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a trusted program's metadata (its bytes stay; `programs add` replaces those)."""
    if description is not None and no_description:
        raise fail("give --description or --no-description, not both", EX_USAGE)
    patch: dict[str, Any] = {}
    if network is not None:
        patch["network"] = network.value
    if description is not None:
        patch["description"] = description
    if no_description:
        patch["description"] = None
    if not patch:
        raise fail("nothing to change: give --network, --description or --no-description",
                   EX_USAGE)
    with api(token) as client:
        meta = client.patch("policy", f"/v1/programs/{quote(name, safe='')}", json=patch)
    if as_json:
        emit_json(meta)
        return
    out.print(kv_table({k: _shown(meta)[k] for k in patch}, title=f"program {name}: changed"))
    if meta.get("network") == "egress" and "network" in patch:
        err.print(f"note: {name} may now open connections to outside addresses; executors "
                  "need NET_ADMIN for that (docs/security.md)", markup=False)


@app.command("remove")
def remove(name: str, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Remove a trusted program; accounts that list it will bounce until it is back."""
    with api(token) as client:
        client.delete("policy", f"/v1/programs/{quote(name, safe='')}")
    if as_json:
        emit_json({"removed": name})
    else:
        out.print(f"removed {name}", markup=False)
