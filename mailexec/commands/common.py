"""What every operator command shares: options, the client, output, and error exits."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from mailexec.client import ApiError, Client, ClientConfig

TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        help="bearer token (default: MAILEXEC_ADMIN_TOKEN, then `token` in the CLI config file)",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable JSON on stdout")]

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str, code: int) -> typer.Exit:
    """Print one line on stderr and return the Exit to raise."""
    err.print(f"mailexec: {message}", markup=False)
    return typer.Exit(code)


@contextmanager
def api(token: str | None = None) -> Iterator[Client]:
    """A client from the environment/config file; ApiErrors become a readable exit."""
    try:
        config = ClientConfig.load(token=token)
    except ApiError as exc:
        raise fail(exc.message, exc.exit_code) from None
    client = Client(config)
    try:
        yield client
    except ApiError as exc:
        raise fail(exc.one_line(), exc.exit_code) from None
    finally:
        client.close()


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(fmt(v) for v in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def table(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[tuple[str, str] | tuple[str, str, Callable[[Any], str]]],
    title: str | None = None,
) -> Table:
    t = Table(title=title, show_lines=False)
    for col in columns:
        t.add_column(col[1])
    for row in rows:
        cells: list[Text] = []
        for col in columns:
            if len(col) == 3:  # a converter may return rich markup (colours)
                cells.append(Text.from_markup(col[2](row.get(col[0]))))
            else:
                cells.append(Text(fmt(row.get(col[0]))))
        t.add_row(*cells)
    return t


def kv_table(data: dict[str, Any], title: str | None = None) -> Table:
    t = Table(title=title, show_header=False)
    t.add_column("key", style="bold")
    t.add_column("value")
    for k, v in data.items():
        t.add_row(Text(str(k)), Text(fmt(v)))
    return t


def warnings_of(body: Any) -> list[str]:
    if not isinstance(body, dict):
        return []
    w = body.get("warnings") or []
    return [str(x) if not isinstance(x, dict) else str(x.get("message", x)) for x in w]
