"""Editing the ordered program list with the form's buttons (services/console/program_list.py)."""

from __future__ import annotations

import pytest

from services.console.program_list import (
    apply,
    entry_problem,
    parse_action,
    seed_warning,
    unregistered,
)
from shared.contract import MAX_PROGRAM_ENTRIES


def test_add_appends_in_order() -> None:
    assert apply([], "add", "alpha").programs == ["alpha"]
    assert apply(["alpha"], "add", "bravo").programs == ["alpha", "bravo"]


def test_moves_and_remove() -> None:
    programs = ["a", "b", "c"]
    assert apply(programs, "up:2").programs == ["a", "c", "b"]
    assert apply(programs, "down:0").programs == ["b", "a", "c"]
    assert apply(programs, "remove:1").programs == ["a", "c"]
    assert programs == ["a", "b", "c"]  # the input is not changed


def test_moves_past_the_ends_change_nothing() -> None:
    assert apply(["a", "b"], "up:0") .programs == ["a", "b"]
    assert apply(["a", "b"], "down:1").programs == ["a", "b"]


@pytest.mark.parametrize("action", ["up:5", "remove:2", "down:-1", "up:x", "explode",
                                    "", "remove:", "add:1", "up:99999"])
def test_unknown_or_stale_actions_say_so(action: str) -> None:
    edited = apply(["a", "b"], action, "")
    assert edited.programs == ["a", "b"]
    assert edited.error and not edited.save


def test_save_keeps_the_list() -> None:
    edited = apply(["b", "a"], "save")
    assert edited.save and edited.programs == ["b", "a"]


def test_duplicates_and_the_limit() -> None:
    assert apply(["a"], "add", "a").error == "a is already in the list"
    full = [f"p{i}" for i in range(MAX_PROGRAM_ENTRIES)]
    edited = apply(full, "add", "one-more")
    assert edited.error and edited.programs == full


@pytest.mark.parametrize("entry", ["", "sh;rm", "a b", "-x", "x\ny", "INSECURE-PROGRAM-DELIVERIES",
                                   "a" * 65, "/usr/bin/"])
def test_entries_that_can_never_be_programs_are_refused(entry: str) -> None:
    assert entry_problem(entry, "secure")


def test_secure_mode_accepts_names_and_paths_insecure_wants_absolute_paths() -> None:
    assert entry_problem("mymail", "secure") is None
    assert entry_problem("/usr/bin/mymail", "secure") is None
    assert entry_problem("/usr/bin/mymail", "insecure") is None
    assert "absolute path" in (entry_problem("mymail", "insecure") or "")


def test_add_strips_and_reports_problems_without_changing_the_list() -> None:
    assert apply(["a"], "add", "  bravo ").programs == ["a", "bravo"]
    edited = apply(["a"], "add", "bad name")
    assert edited.error and edited.programs == ["a"]


def test_parse_action() -> None:
    assert parse_action("up:3") == ("up", 3)
    assert parse_action("add") == ("add", None)
    assert parse_action("save") == ("save", None)
    assert parse_action("drop:1") == ("", None)


def test_the_guides_warning_for_names_not_registered() -> None:
    assert unregistered(["alpha", "/x/zulu", "zulu", "bravo"], ["alpha", "bravo"],
                        "secure") == ["zulu"]
    assert unregistered(["/usr/bin/zulu"], [], "insecure") == []
    assert seed_warning("zulu") == ("zulu is not in the trusted directory: program delivery "
                                    "will fail when it tries to use that program.")
