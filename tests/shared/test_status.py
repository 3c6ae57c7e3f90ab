"""The outcome/status table is complete and follows Postfix's sys_exits.c exactly."""

from __future__ import annotations

import pytest

from shared import sysexits
from shared.status import (
    DEFAULT_TEMPFAIL_EXIT_CODES,
    STATUS_RE,
    STATUS_TABLE,
    SYSEXITS,
    FailureKind,
    NoticeReason,
    Outcome,
    describe_class,
    describe_exit,
    describe_status,
    failure_status,
    status_for,
    status_for_exit,
    status_from_output,
    with_class,
)


@pytest.mark.parametrize("member", [*Outcome, *FailureKind], ids=str)
def test_every_outcome_and_failure_kind_is_mapped(member: Outcome | FailureKind) -> None:
    entry = STATUS_TABLE[member]
    assert STATUS_RE.match(entry.status)
    assert describe_status(entry.status)
    assert entry.summary


def test_table_has_nothing_but_the_closed_sets() -> None:
    assert set(STATUS_TABLE) == {*Outcome, *FailureKind}


def test_every_notice_reason_is_produced_by_some_row() -> None:
    produced = {entry.notice for entry in STATUS_TABLE.values() if entry.notice}
    assert produced == set(NoticeReason)


@pytest.mark.parametrize(
    ("key", "status"),
    [
        (FailureKind.UNKNOWN_ACCOUNT, "5.1.1"),
        (FailureKind.NOT_CONFIGURED, "5.3.0"),
        (FailureKind.DISABLED, "5.3.0"),
        (FailureKind.SUSPENDED_EXPIRED, "4.4.7"),
        (FailureKind.UNRESOLVED_PROGRAM, "5.3.0"),
        (FailureKind.MAIL_LOOP, "5.4.6"),
        (FailureKind.TEMPFAIL, "4.3.0"),
        (Outcome.DELIVERED, "2.0.0"),
    ],
)
def test_spec_mandated_codes(key: Outcome | FailureKind, status: str) -> None:
    assert status_for(key) == status


def test_outcome_classes_fit_the_status_class() -> None:
    for entry in STATUS_TABLE.values():
        if entry.outcome is Outcome.DELIVERED:
            assert entry.status.startswith("2.")
        elif entry.outcome is Outcome.DEFERRED:
            assert entry.status.startswith("4.")
        else:
            assert entry.status[0] in "45"


POSTFIX_SYS_EXITS = {
    64: "5.3.0",
    65: "5.6.0",
    66: "5.3.0",
    67: "5.1.1",
    68: "5.1.2",
    69: "5.3.0",
    70: "5.3.0",
    71: "4.3.0",
    72: "5.3.0",
    73: "5.2.0",
    74: "5.3.0",
    75: "4.3.0",
    76: "5.5.0",
    77: "5.7.0",
    78: "5.3.5",
}


@pytest.mark.parametrize(("code", "status"), sorted(POSTFIX_SYS_EXITS.items()))
def test_sysexits_table_matches_postfix(code: int, status: str) -> None:
    assert status_for_exit(code) == status
    assert describe_exit(code).startswith(SYSEXITS[code].name + ": ")


@pytest.mark.parametrize("code", [0, 1, 2, 63, 79, 126, 127, 255])
def test_other_exit_codes_are_5_3_0(code: int) -> None:
    assert status_for_exit(code) == "5.3.0"
    assert describe_exit(code) == f"unknown mail system error {code}"


def test_soft_exits_are_oserr_and_tempfail_the_default_tempfail_codes() -> None:
    """Postfix's sys_exits_softerror() set is what defers by default."""
    soft = {code for code in range(256) if status_for_exit(code).startswith("4.")}
    assert soft == set(DEFAULT_TEMPFAIL_EXIT_CODES) == {71, 75}


@pytest.mark.parametrize(
    ("output", "status"),
    [
        ("5.7.1 go away", "5.7.1"),
        ("4.2.2 mailbox full\nmore", "4.2.2"),
        ("5.1.1", "5.1.1"),
        ("5.100.999 odd but valid", "5.100.999"),
        (b"5.6.0\tbad data", "5.6.0"),
        ("2.0.0 ok", None),  # a program can't claim success
        ("3.0.0 nope", None),
        (" 5.7.1 leading space", None),
        ("5.7.1x", None),
        ("5.7 short", None),
        ("5.1234.1 too long", None),
        ("error 5.7.1", None),
        ("", None),
        (None, None),
    ],
)
def test_status_from_output(output: str | bytes | None, status: str | None) -> None:
    assert status_from_output(output) == status


def test_failure_status_tempfail_defers() -> None:
    assert failure_status(FailureKind.PROGRAM_EXIT, exit_status=75) == (Outcome.DEFERRED, "4.3.0")
    assert failure_status(FailureKind.PROGRAM_EXIT, exit_status=71) == (Outcome.DEFERRED, "4.3.0")
    got = failure_status(FailureKind.PROGRAM_EXIT, exit_status=75, tempfail_exit_codes=[])
    assert got == (Outcome.BOUNCED, "5.3.0")  # class forced to match the bounce


def test_failure_status_exit_code_and_output_override() -> None:
    assert failure_status(FailureKind.PROGRAM_EXIT, exit_status=67) == (Outcome.BOUNCED, "5.1.1")
    got = failure_status(FailureKind.PROGRAM_EXIT, exit_status=1, output="5.7.1 refused\n")
    assert got == (Outcome.BOUNCED, "5.7.1")
    got = failure_status(FailureKind.PROGRAM_OUTPUT, exit_status=0, output="4.2.2 full")
    assert got == (Outcome.BOUNCED, "5.2.2")
    assert failure_status(FailureKind.PROGRAM_SIGNAL) == (Outcome.BOUNCED, "5.3.0")
    assert failure_status(FailureKind.PROGRAM_TIMEOUT, output="junk") == (Outcome.BOUNCED, "5.3.0")


def test_failure_status_non_program_kinds_use_the_table() -> None:
    assert failure_status(FailureKind.UNKNOWN_ACCOUNT) == (Outcome.BOUNCED, "5.1.1")
    assert failure_status(FailureKind.TEMPFAIL) == (Outcome.DEFERRED, "4.3.0")
    assert failure_status(FailureKind.SUSPENDED_EXPIRED) == (Outcome.BOUNCED, "4.4.7")


def test_describe_status_texts() -> None:
    assert describe_status("5.1.1") == "Bad destination mailbox address"
    assert describe_status("4.4.7") == "Delivery time expired"
    assert describe_status("5.3.5") == "System incorrectly configured"
    assert describe_status("5.3.99") == "Mail system status"  # unknown detail → subject
    assert describe_status("5.9.9") == "Other or undefined status"
    assert describe_class("5.3.0") == "Permanent failure"
    assert describe_class("4.3.0") == "Persistent transient failure"
    assert describe_class("2.0.0") == "Success"
    for bad in ("5.3", "6.0.0", "5.3.0 ", "x"):
        with pytest.raises(ValueError):
            describe_status(bad)


def test_every_sysexit_status_has_a_description() -> None:
    for entry in SYSEXITS.values():
        assert describe_status(entry.status)


def test_with_class() -> None:
    assert with_class("4.3.0", "5") == "5.3.0"
    with pytest.raises(ValueError):
        with_class("4.3.0", "3")


def test_one_sysexits_table_and_every_code_has_a_dsn_status() -> None:
    """shared.sysexits defines the codes once; shared.status maps each of them."""
    codes = {value for name, value in vars(sysexits).items() if name.startswith("EX_") and value}
    assert codes == set(sysexits.EXITS) == set(SYSEXITS) == set(range(64, 79))
    for code, (name, text) in sysexits.EXITS.items():
        assert getattr(sysexits, name) == code
        assert (SYSEXITS[code].name, SYSEXITS[code].text) == (name, text)
    assert sysexits.describe(78) == "78 EX_CONFIG (local configuration error)"
    assert sysexits.describe(1) == "1"
