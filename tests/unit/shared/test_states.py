"""shared/states.py is the one list of a recipient's states: the database's CHECK
constraint (the newest migration that sets it) allows exactly these, and the final and
not-final ones split them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from shared.states import FINAL_STATES, NOT_FINAL_STATES, STATES

VERSIONS = Path(__file__).resolve().parents[3] / "migrations" / "versions"


def _newest_constraint_states() -> set[str]:
    found: dict[str, set[str]] = {}
    for path in sorted(VERSIONS.glob("0*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == "STATES_NEW" for t in node.targets):
                found[path.name] = set(re.findall(r"'([a-z_]+)'", ast.literal_eval(node.value)))
    assert found, "no migration sets the recipients' state constraint"
    return found[max(found)]


def test_the_database_allows_exactly_these_states() -> None:
    assert set(STATES) == _newest_constraint_states()


def test_final_and_not_final_split_the_states() -> None:
    assert set(FINAL_STATES) | set(NOT_FINAL_STATES) == set(STATES)
    assert not set(FINAL_STATES) & set(NOT_FINAL_STATES)
    assert "on_hold" in NOT_FINAL_STATES and "deleted" in FINAL_STATES
