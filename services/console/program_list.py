"""Editing an account's ordered program list on the Delivery Options form, without
JavaScript: the list travels in hidden fields ``programs`` (in order), each button of the
one form says what to do (``action``: ``up:<i>``, ``down:<i>``, ``remove:<i>``, ``add``,
``save``), and ``apply`` computes the next list. Nothing is stored until Save.

Form handling of untrusted bytes: every field comes from the browser. What it trusts:
nothing; a row index outside the list, an unknown action, an entry that could never be a
program (``shared.programs.is_program_name`` of its basename), control characters, more
than ``MAX_PROGRAM_ENTRIES`` entries or a duplicate are answered with a message, never an
exception (tests/unit/console/test_program_list.py). Policy checks the list again on
Save (``PUT /v1/accounts/{a}/programs``); this only says it sooner, next to the field.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from shared.contract import MAX_PROGRAM_ENTRIES, MAX_PROGRAM_ENTRY_CHARS
from shared.programs import entry_basename, is_program_name

MOVES = ("up", "down", "remove")


@dataclass(frozen=True)
class Edited:
    programs: list[str]
    error: str | None = None  # shown next to the add field
    notice: str | None = None  # what changed, for the status region
    save: bool = False


def parse_action(value: str) -> tuple[str, int | None]:
    """``("up", 2)``, ``("add", None)``, ``("save", None)``; ``("", None)`` when unknown."""
    verb, _, index = value.partition(":")
    if verb in ("add", "save") and not index:
        return verb, None
    if verb in MOVES and index.isdigit() and len(index) <= 3:
        return verb, int(index)
    return "", None


def entry_problem(entry: str, mode: str) -> str | None:
    """Why ``entry`` can't be added in ``mode`` ("secure" | "insecure"), or None."""
    if not entry:
        return ("Choose a trusted program or enter a program name" if mode == "secure"
                else "Enter the absolute path of a program, e.g. /usr/bin/mymail")
    if len(entry) > MAX_PROGRAM_ENTRY_CHARS or any(ord(c) < 0x20 or ord(c) == 0x7F
                                                   for c in entry):
        return "A program entry is one line of at most 4096 characters"
    if mode == "insecure" and not entry.startswith("/"):
        return (f"{entry} is not an absolute path: in insecure mode enter the full path, "
                f"e.g. /usr/bin/{entry_basename(entry)}")
    base = entry_basename(entry)
    if not is_program_name(base):
        return (f"{entry} can never be a program: a program name starts with a letter or "
                "digit and has only letters, digits and . _ + - (at most 64 characters)")
    return None


def apply(programs: Sequence[str], action: str, new_entry: str = "",
          mode: str = "secure") -> Edited:
    """The list after pressing the button ``action`` (see the module docstring)."""
    current = [p for p in programs if p]
    verb, index = parse_action(action)
    if verb == "save":
        return Edited(current, save=True)
    if verb == "add":
        entry = new_entry.strip()
        problem = entry_problem(entry, mode)
        if problem:
            return Edited(current, error=problem)
        if entry in current:
            return Edited(current, error=f"{entry} is already in the list")
        if len(current) >= MAX_PROGRAM_ENTRIES:
            return Edited(current, error=f"At most {MAX_PROGRAM_ENTRIES} programs")
        return Edited([*current, entry], notice=f"Added {entry} (not saved yet)")
    if verb in MOVES and index is not None and index < len(current):
        name = current[index]
        if verb == "remove":
            del current[index]
            return Edited(current, notice=f"Removed {name} (not saved yet)")
        target = index - 1 if verb == "up" else index + 1
        if 0 <= target < len(current):
            current[index], current[target] = current[target], current[index]
            return Edited(current, notice=f"Moved {name} {verb} (not saved yet)")
        return Edited(current)
    return Edited(current, error="That button did not match the list; reload the page")


def seed_warning(name: str) -> str:
    """The guide's note for a name the trusted directory does not hold."""
    return (f"{name} is not in the trusted directory: program delivery will fail when it "
            "tries to use that program.")


def unregistered(programs: Iterable[str], registered: Iterable[str], mode: str) -> list[str]:
    """Names of the list (basenames, secure mode) that no trusted program has, in order."""
    if mode != "secure":
        return []
    known = set(registered)
    out: list[str] = []
    for entry in programs:
        base = entry_basename(entry)
        if base not in known and base not in out:
            out.append(base)
    return out
