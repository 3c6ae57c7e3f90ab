"""`mailexec import-trusted-dir DIR`: move a classic trusted directory into the registry.

Classic layout (seed guide, "Trusted Directory and Operating Modes"): every executable file
in the directory (or a link to one) is a trusted program; ``INSECURE-PROGRAM-DELIVERIES``
present → non-secure mode; ``SUSPEND-PROGRAM-DELIVERIES`` present → suspended. The import
registers each regular executable under its file name, follows symlinks with a warning (a
link may point somewhere writable by others: inspect the target), skips everything else
with the reason, and sets the two settings when their flag file is present. A flag file
that is absent leaves the current setting alone (say so in the report) — the import adds,
it does not erase an existing registry. Command interpreters are refused by policy unless
``--allow-interpreter`` is given.
"""

from __future__ import annotations

import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from mailexec.client import ApiError, Client
from mailexec.commands.common import JsonOpt, TokenOpt, api, emit_json, err, fail, out, table
from mailexec.commands.programs import register_program
from shared.programs import INSECURE_FLAG, PROGRAM_NAME_RE, PROGRAM_NAME_RULE, SUSPEND_FLAG
from shared.sysexits import EX_DATAERR, EX_NOINPUT


@dataclass
class Entry:
    name: str
    action: str  # registered | would register | skipped | refused | error | flag | warning
    detail: str = ""
    sha256: str | None = None


@dataclass
class Candidate:
    name: str
    path: Path
    target: Path
    symlink: bool


def scan(directory: Path) -> tuple[list[Candidate], list[Entry], set[str]]:
    """What to register, what to skip (with why), and which flag files exist."""
    candidates: list[Candidate] = []
    skipped: list[Entry] = []
    flags: set[str] = set()
    for path in sorted(directory.iterdir(), key=lambda p: p.name):
        name = path.name
        if name in (INSECURE_FLAG, SUSPEND_FLAG):
            flags.add(name)
            continue
        is_link = path.is_symlink()
        try:
            st = path.stat()  # follows links, as the classic module did
        except OSError as exc:
            skipped.append(Entry(name, "skipped", f"dangling or unreadable link: {exc.strerror}"))
            continue
        if stat.S_ISDIR(st.st_mode):
            skipped.append(Entry(name, "skipped", "a directory (only files directly in DIR are programs)"))
            continue
        if not stat.S_ISREG(st.st_mode):
            skipped.append(Entry(name, "skipped", "not a regular file"))
            continue
        if not st.st_mode & 0o111:
            skipped.append(Entry(name, "skipped", "not executable (no x permission bit)"))
            continue
        if not PROGRAM_NAME_RE.match(name):
            skipped.append(Entry(name, "skipped", f"name not allowed in the registry ({PROGRAM_NAME_RULE})"))
            continue
        target = path.resolve() if is_link else path
        candidates.append(Candidate(name, path, target, is_link))
    return candidates, skipped, flags


def _register(client: Client | None, cand: Candidate, allow_interpreter: bool) -> Entry:
    link_note = (
        f"symlink to {cand.target} followed; a link may weaken security, inspect the target. "
        if cand.symlink
        else ""
    )
    try:
        content = cand.path.read_bytes()
    except OSError as exc:
        return Entry(cand.name, "error", f"{link_note}cannot read: {exc.strerror}")
    if client is None:
        return Entry(cand.name, "would register", f"{link_note}{len(content)} bytes".strip())
    try:
        meta = register_program(client, cand.name, content, allow_interpreter)
    except ApiError as exc:
        if exc.code == "interpreter_refused" or "interpreter" in exc.message.lower():
            hint = "inspect it; --allow-interpreter to register anyway"
            return Entry(cand.name, "refused", f"{link_note}command interpreter: {exc.message} ({hint})")
        if exc.status in (401, 403, None) or (exc.status or 0) >= 500:
            raise
        return Entry(cand.name, "refused", f"{link_note}{exc.one_line()}")
    note = "interpreter registered (--allow-interpreter, audited)" if meta.get("interpreter") else ""
    return Entry(
        cand.name, "registered", f"{link_note}{len(content)} bytes {note}".strip(), meta.get("sha256")
    )


def import_trusted_dir(
    directory: Annotated[Path, typer.Argument(help="the classic trusted directory")],
    allow_interpreter: Annotated[
        bool,
        typer.Option("--allow-interpreter", help="also register command interpreters (sh, perl, …); audited"),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="report what would happen, change nothing")
    ] = False,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Register every executable of a classic trusted directory; map its flag files to settings."""
    if not directory.is_dir():
        raise fail(f"{directory} is not a directory", EX_NOINPUT)
    candidates, entries, flags = scan(directory)
    for cand in candidates:
        if cand.symlink:
            err.print(
                f"warning: {cand.name} is a symlink to {cand.target}; following it "
                "(a link may weaken security: inspect the target and who can write it)",
                markup=False,
            )
    with api(token) as client:
        active = None if dry_run else client
        progress = Progress(
            TextColumn("importing {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=err,
            transient=True,
            disable=as_json or not candidates,
        )
        with progress:
            task = progress.add_task("", total=len(candidates))
            for cand in candidates:
                progress.update(task, description=cand.name)
                entries.append(_register(active, cand, allow_interpreter))
                progress.advance(task)
        patch: dict[str, Any] = {}
        if INSECURE_FLAG in flags:
            patch["mode"] = "insecure"
            entries.append(
                Entry(INSECURE_FLAG, "flag", "mode → insecure (programs by absolute path; not recommended)")
            )
        else:
            entries.append(Entry(INSECURE_FLAG, "flag", "absent: mode left unchanged"))
        if SUSPEND_FLAG in flags:
            patch["suspended"] = True
            entries.append(
                Entry(SUSPEND_FLAG, "flag", "suspended → true (jobs held until `mailexec resume`)")
            )
        else:
            entries.append(Entry(SUSPEND_FLAG, "flag", "absent: suspended left unchanged"))
        if patch and not dry_run:
            client.patch("policy", "/v1/settings", json=patch)
        if dry_run:
            for e in entries:
                if e.action == "flag" and not e.detail.startswith("absent"):
                    e.detail = "would set " + e.detail
    entries.sort(key=lambda e: (e.action == "flag", e.name))
    refused = [e for e in entries if e.action in ("refused", "error")]
    if as_json:
        emit_json({"directory": str(directory), "dry_run": dry_run, "entries": [asdict(e) for e in entries]})
    else:
        colours = {
            "registered": "green",
            "would register": "cyan",
            "refused": "red",
            "error": "red",
            "skipped": "yellow",
        }
        out.print(
            table(
                [asdict(e) for e in entries],
                [
                    ("name", "file"),
                    ("action", "action", lambda a: f"[{colours.get(a, 'blue')}]{a}[/]"),
                    ("detail", "detail"),
                ],
                title=f"{'dry run: ' if dry_run else ''}import of {directory}",
            )
        )
        n = sum(e.action in ("registered", "would register") for e in entries)
        out.print(
            f"{n} program(s) {'would be ' if dry_run else ''}registered, "
            f"{sum(e.action == 'skipped' for e in entries)} skipped, {len(refused)} refused",
            markup=False,
        )
    if refused:
        raise typer.Exit(EX_DATAERR)
