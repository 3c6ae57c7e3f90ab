"""A verdict's kind decides what is recorded: final or not, an attempt or not, the state."""

from __future__ import annotations

import pytest

from services.executor.verdict import DIAGNOSTICS, Verdict, failed
from shared.status import STATUS_TABLE, FailureKind, Outcome


@pytest.mark.parametrize("kind", list(FailureKind), ids=str)
def test_every_failure_kind_has_its_tables_status_and_outcome(kind: FailureKind) -> None:
    v = failed(kind, "why")
    entry = STATUS_TABLE[kind]
    assert v.status == entry.status
    assert v.kind == ("deferred" if entry.outcome is Outcome.DEFERRED else "bounced")
    assert v.notice is entry.notice if v.kind == "bounced" else v.notice is None


def test_only_tempfail_defers() -> None:
    assert [k for k in FailureKind if failed(k, "").kind == "deferred"] == [FailureKind.TEMPFAIL]


@pytest.mark.parametrize(("kind", "final", "attempt", "state"), [
    ("delivered", True, True, "delivered"),
    ("bounced", True, True, "bounced"),
    ("deferred", False, True, "deferred"),   # tempfail: counts against the retry ladder
    ("suspended", False, False, "suspended"),  # held: not the program's fault
    ("retry", False, False, "deferred"),     # an outage: recorded as deferred, not an attempt
])
def test_kind_to_record(kind: str, final: bool, attempt: bool, state: str) -> None:
    v = Verdict(kind=kind)  # type: ignore[arg-type]
    assert (v.final, v.counts_as_attempt, v.state) == (final, attempt, state)


def test_every_failure_that_runs_nothing_has_a_fixed_diagnostic() -> None:
    runs_something = {FailureKind.PROGRAM_EXIT, FailureKind.PROGRAM_SIGNAL,
                      FailureKind.PROGRAM_TIMEOUT, FailureKind.PROGRAM_OUTPUT, FailureKind.TEMPFAIL}
    assert set(DIAGNOSTICS) == set(FailureKind) - runs_something


def test_extra_fields_land_on_the_verdict() -> None:
    v = failed(FailureKind.UNRESOLVED_PROGRAM, "d", program="p", position=2, account="a@b.c")
    assert (v.program, v.position, v.account) == ("p", 2, "a@b.c")
