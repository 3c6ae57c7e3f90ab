"""The chain's decisions (SPEC §3, the admin guide's failure paths): each path to the
outcome the sender sees (bounce or deferral), its DSN status and diagnostic, and whether
the postmaster is told."""

from __future__ import annotations

import errno
import signal

import pytest

from services.executor import chain
from services.executor.errors import ProgramUnresolved
from services.executor.sandbox.runio import LaunchError, parse_launch_error
from services.executor.verdict import Verdict
from shared.status import NoticeReason
from tests.unit.executor.builders import RECIPIENT, account, claim, job, run, run_row, settings

DAY = 86400


def bounced(v: Verdict | object, status: str) -> Verdict:
    assert isinstance(v, Verdict)
    assert (v.kind, v.status) == ("bounced", status), (v.kind, v.status, v.diagnostic)
    assert v.final and v.counts_as_attempt
    return v


# --- SPEC §3 rules 1–3: before anything runs ------------------------------------------------


def test_unknown_account_bounces_5_1_1_without_a_notice() -> None:
    v = bounced(chain.admit(job(), claim(), None, settings()), "5.1.1")
    assert v.diagnostic == f"no such account: {RECIPIENT}"
    assert v.notice is None


@pytest.mark.parametrize("acct", [account(enabled=False), account([])], ids=["disabled", "no-programs"])
def test_account_without_program_delivery_bounces_5_3_0_not_configured(acct: object) -> None:
    v = bounced(chain.admit(job(), claim(), acct, settings()), "5.3.0")  # type: ignore[arg-type]
    assert v.diagnostic == f"program delivery not configured for {RECIPIENT}"
    assert v.notice is None


def test_a_configured_account_is_admitted() -> None:
    acct = account(["probe", "probe2"])
    assert chain.admit(job(), claim(), acct, settings()) is acct


def test_suspended_holds_the_job_without_a_bounce_or_an_attempt() -> None:
    v = chain.admit(job(age_s=60), claim(), account(), settings(suspended=True))
    assert isinstance(v, Verdict)
    assert (v.kind, v.status, v.delay_warning) == ("suspended", "4.0.0", False)
    assert not v.final and not v.counts_as_attempt
    assert v.will_retry_until_s == 432000


def test_suspended_past_the_warning_delay_warns_once_when_notify_has_delay() -> None:
    ps = settings(suspended=True, delay_warning_after_s=3600)
    assert chain.held(job(age_s=3601), claim(), ps).delay_warning
    assert not chain.held(job(age_s=3601), claim(warned=True), ps).delay_warning
    assert not chain.held(job(age_s=3601, notify=["FAILURE"]), claim(), ps).delay_warning
    assert not chain.held(job(age_s=3599), claim(), ps).delay_warning


def test_suspended_past_the_queue_lifetime_bounces_4_4_7() -> None:
    ps = settings(suspended=True, max_queue_lifetime_s=2 * DAY)
    v = bounced(chain.held(job(age_s=3 * DAY), claim(), ps), "4.4.7")
    assert v.diagnostic == ("delivery expired after 3.0 days in the queue: "
                            "program delivery was suspended")


def test_disabled_bounces_5_3_0_and_tells_the_postmaster() -> None:
    v = bounced(chain.disabled(account()), "5.3.0")
    assert v.diagnostic == "program delivery is disabled (no trusted program registered)"
    assert v.notice is NoticeReason.DISABLED
    assert v.account == RECIPIENT


# --- mail loops (SPEC §3 rule 7) --------------------------------------------------------------


@pytest.mark.parametrize("header", [
    f"Delivered-To: {RECIPIENT}",
    f"delivered-to:   <{RECIPIENT.upper()}>  ",
    f"Delivered-To:\n\t{RECIPIENT}",
])
@pytest.mark.parametrize("nl", ["\n", "\r\n"], ids=["lf", "crlf"])
def test_delivered_to_this_recipient_is_a_loop_5_4_6(header: str, nl: str) -> None:
    body = f"From: a@example.net\n{header}\nSubject: x\n\nbody\n".replace("\n", nl).encode()
    v = bounced(chain.mail_loop(body, RECIPIENT), "5.4.6")
    assert v.diagnostic == f"mail loop: message already delivered to {RECIPIENT} (Delivered-To)"
    assert v.notice is None


@pytest.mark.parametrize("body", [
    b"Delivered-To: someone-else@example.org\n\nhi\n",
    b"Subject: x\n\nDelivered-To: robin@example.org\n",  # in the body, not the header
    b"X-Delivered-To: robin@example.org\n\nhi\n",
])
def test_no_loop_without_this_recipient_in_the_header(body: bytes) -> None:
    assert chain.mail_loop(body, RECIPIENT) is None


# --- SPEC §3 rule 4: who the programs run as --------------------------------------------------


def test_a_valid_shell_runs_as_the_owner() -> None:
    assert chain.run_identity(account(uid=64101, gid=64200), settings()) == (64101, 64200)


def test_a_shell_not_in_valid_shells_bounces_5_7_1_with_a_notice() -> None:
    v = bounced(chain.run_identity(account(shell="/bin/bash"), settings()), "5.7.1")
    assert v.diagnostic == "account owner's login shell /bin/bash is not a valid shell"
    assert v.notice is NoticeReason.BAD_SHELL
    assert chain.run_identity(account(shell="/bin/bash"),
                              settings(valid_shells=["/bin/bash"])) == (64101, 64101)


def test_root_without_a_safe_user_bounces_5_3_5_with_a_notice() -> None:
    v = bounced(chain.run_identity(account(uid=0, gid=0), settings()), "5.3.5")
    assert v.diagnostic == "account is owned by root (uid 0) and no safe user is set"
    assert v.notice is NoticeReason.ROOT_WITHOUT_SAFE_USER


def test_root_runs_as_the_safe_user() -> None:
    ps = settings(safe_user={"uid": 64999, "gid": 64998})
    assert chain.run_identity(account(uid=0, gid=0), ps) == (64999, 64998)


def test_gid_0_never_runs() -> None:
    v = bounced(chain.run_identity(account(uid=64101, gid=0), settings()), "5.3.5")
    assert "uid 64101 with gid 0" in v.diagnostic


# --- SPEC §3 rule 5: resolution -----------------------------------------------------------------


def test_an_unresolved_program_bounces_5_3_0_and_tells_the_postmaster() -> None:
    v = bounced(chain.unresolved(account(["a", "gone"]), "gone", 1,
                                 "'gone' is not a registered trusted program"), "5.3.0")
    assert v.diagnostic == "cannot resolve program gone: 'gone' is not a registered trusted program"
    assert (v.program, v.position, v.notice) == ("gone", 1, NoticeReason.UNRESOLVED_PROGRAM)


@pytest.mark.parametrize("mode", ["secure", "insecure"])
@pytest.mark.parametrize("entry", ["/usr/bin/", "/opt/bad name", "../.forward", "-rf"])
async def test_an_entry_that_can_never_be_a_program_bounces_in_both_modes(mode: str, entry: str) -> None:
    # the name is refused before policy, the store or the sandbox is asked (deps unused)
    with pytest.raises(ProgramUnresolved):
        await chain.resolve_one(entry, settings(mode=mode), None)  # type: ignore[arg-type]
    v = await chain.resolve_chain(account(["probe", entry]), 1, settings(mode=mode), None)  # type: ignore[arg-type]
    v = bounced(v, "5.3.0")
    assert (v.program, v.position, v.notice) == (entry, 1, NoticeReason.UNRESOLVED_PROGRAM)


# --- SPEC §3 rules 6–8: what one run means ------------------------------------------------------

POSTFIX_SYSEXITS = {  # Postfix src/global/sys_exits.c, as SPEC §3 rule 7 requires
    64: ("5.3.0", "EX_USAGE"), 65: ("5.6.0", "EX_DATAERR"), 66: ("5.3.0", "EX_NOINPUT"),
    67: ("5.1.1", "EX_NOUSER"), 68: ("5.1.2", "EX_NOHOST"), 69: ("5.3.0", "EX_UNAVAILABLE"),
    70: ("5.3.0", "EX_SOFTWARE"), 71: ("4.3.0", "EX_OSERR"), 72: ("5.3.0", "EX_OSFILE"),
    73: ("5.2.0", "EX_CANTCREAT"), 74: ("5.3.0", "EX_IOERR"), 75: ("4.3.0", "EX_TEMPFAIL"),
    76: ("5.5.0", "EX_PROTOCOL"), 77: ("5.7.0", "EX_NOPERM"), 78: ("5.3.5", "EX_CONFIG"),
}


def outcome(res: object, ps: object = None, *, age_s: float = 0.0, position: int = 1,
            output: str | None = None) -> Verdict | None:
    r = res  # a RunResult
    text = output if output is not None else chain.decode_output(r.output)  # type: ignore[attr-defined]
    return chain.run_outcome(job(age_s=age_s, next_program=position), account(["first", "probe"]),
                             "probe", position, r, text, [run_row("first", 0)],  # type: ignore[arg-type]
                             ps or settings())  # type: ignore[arg-type]


def test_a_clean_run_goes_on_with_the_chain() -> None:
    assert outcome(run()) is None


def test_every_program_succeeding_is_delivered_2_0_0() -> None:
    v = chain.delivered(account(["a", "b"]), ["a", "b"], [run_row("a"), run_row("b", 1)])
    assert (v.kind, v.status, v.final, v.next_program) == ("delivered", "2.0.0", True, 2)
    assert v.diagnostic == "delivered to a, b"


@pytest.mark.parametrize("code", sorted(POSTFIX_SYSEXITS))
def test_every_sysexits_code_maps_to_its_status_and_defers_only_when_soft(code: int) -> None:
    status, name = POSTFIX_SYSEXITS[code]
    v = outcome(run(exit_status=code))
    assert v is not None
    assert v.status == status
    assert v.exit_status == code and v.program == "probe" and v.position == 1
    assert f"program probe exited with status {code} ({name}: " in v.diagnostic
    if status.startswith("4."):  # the default tempfail_exit_codes: EX_OSERR, EX_TEMPFAIL
        assert (v.kind, v.final, v.counts_as_attempt) == ("deferred", False, True)
        assert v.next_program == 1  # the retry resumes at the failed program
        assert v.will_retry_until_s == 432000 and v.notice is None
    else:
        assert (v.kind, v.notice) == ("bounced", NoticeReason.PROGRAM_FAILED)


def test_the_sysexits_table_is_postfixs_and_covers_every_code_of_sysexits_h() -> None:
    from shared.status import SYSEXITS
    from shared.sysexits import EXITS

    assert {c: (e.status, e.name) for c, e in SYSEXITS.items()} == POSTFIX_SYSEXITS
    assert {c: name for c, (name, _) in EXITS.items()} == {c: n for c, (_, n) in POSTFIX_SYSEXITS.items()}


@pytest.mark.parametrize("code", [1, 2, 3, 63, 79, 126, 255])
def test_other_exit_codes_bounce_5_3_0(code: int) -> None:
    v = bounced(outcome(run(exit_status=code)), "5.3.0")
    assert f"exited with status {code} (unknown mail system error {code})" in v.diagnostic


def test_tempfail_exit_codes_is_the_setting_not_the_table() -> None:
    # EX_TEMPFAIL taken off the list bounces, and the class is forced to 5
    bounced(outcome(run(exit_status=75), settings(tempfail_exit_codes=[71])), "5.3.0")
    v = outcome(run(exit_status=1), settings(tempfail_exit_codes=[1]))
    assert v is not None and (v.kind, v.status) == ("deferred", "4.3.0")


def test_a_deferral_past_the_queue_lifetime_bounces_4_4_7_with_the_reason() -> None:
    v = bounced(outcome(run(exit_status=75), settings(max_queue_lifetime_s=DAY), age_s=2 * DAY),
                "4.4.7")
    assert v.diagnostic.startswith("delivery expired after 2.0 days in the queue: program probe "
                                   "exited with status 75 (EX_TEMPFAIL: temporary failure)")


def test_a_signal_bounces_5_3_0_naming_it() -> None:
    v = bounced(outcome(run(exit_status=None, signal=signal.SIGKILL)), "5.3.0")
    assert v.diagnostic == "program probe was killed by signal 9 (SIGKILL)"
    assert (v.signal, v.notice) == (9, NoticeReason.PROGRAM_FAILED)


def test_a_timeout_bounces_5_3_0() -> None:
    v = bounced(outcome(run(exit_status=None, signal=9, timed_out=True),
                        settings(program_timeout_s=30)), "5.3.0")
    assert v.diagnostic == "program probe timed out after 30 s"
    assert v.timed_out


def test_any_output_fails_even_with_exit_0() -> None:
    v = bounced(outcome(run(output=b"hello\n")), "5.3.0")
    assert v.diagnostic == "program probe exited with status 0 but wrote output: hello"


@pytest.mark.parametrize(("code", "output", "status"), [
    (1, b"5.7.1 go away\n", "5.7.1"),
    (0, b"5.2.2 mailbox full\n", "5.2.2"),
    (1, b"4.2.2 try later\n", "5.2.2"),  # a bounce never carries a 4.x.x code
    (67, b"no code here\n", "5.1.1"),
    (1, b"5.7.1go\n", "5.3.0"),  # the code must be followed by white space
    (75, b"5.7.1 ignored: tempfail wins\n", "4.3.0"),
])
def test_a_leading_status_code_in_the_output_wins(code: int, output: bytes, status: str) -> None:
    v = outcome(run(exit_status=code, output=output))
    assert v is not None and v.status == status


def test_the_dsn_carries_the_first_lines_of_output_unless_dsn_include_output_is_off() -> None:
    out = b"one\n\n  two  \nthree\nfour\n"
    v = bounced(outcome(run(exit_status=1, output=out)), "5.3.0")
    assert v.diagnostic == "program probe exited with status 1 (unknown mail system error 1): one; two; three"
    assert v.dsn_output == v.output == out.decode()
    quiet = bounced(outcome(run(exit_status=1, output=out), settings(dsn_include_output=False)), "5.3.0")
    assert quiet.diagnostic == "program probe exited with status 1 (unknown mail system error 1)"
    assert quiet.dsn_output == ""
    assert quiet.notice_detail.endswith(": one; two; three")  # the postmaster always sees it


def test_a_long_output_is_cut_in_the_diagnostic() -> None:
    v = bounced(outcome(run(exit_status=1, output=b"x" * 5000)), "5.3.0")
    excerpt = v.diagnostic.split(": ", 1)[1]
    assert len(excerpt) == chain.DIAGNOSTIC_OUTPUT_CHARS and excerpt.endswith("...")


@pytest.mark.parametrize("err", [errno.EAGAIN, errno.ENOMEM, errno.EMFILE, errno.ENFILE, errno.ETXTBSY])
def test_a_temporary_exec_failure_defers_4_3_0(err: int) -> None:
    launch = parse_launch_error(f"exec {err}".encode())
    v = outcome(run(exit_status=None, launch=launch))
    assert v is not None and (v.kind, v.status, v.next_program) == ("deferred", "4.3.0", 1)
    assert v.diagnostic.startswith("program probe could not start for now: launch failed at exec")
    ps = settings(max_queue_lifetime_s=60, delay_warning_after_s=30)
    expired = outcome(run(exit_status=None, launch=launch), ps, age_s=120)
    bounced(expired, "4.4.7")


def test_a_permanent_exec_failure_is_an_unresolved_program() -> None:
    launch = parse_launch_error(f"exec {errno.ENOEXEC}".encode())
    v = bounced(outcome(run(exit_status=None, launch=launch)), "5.3.0")
    assert v.diagnostic.startswith("cannot resolve program probe: launch failed at exec")
    assert v.notice is NoticeReason.UNRESOLVED_PROGRAM and len(v.runs) == 1


def test_a_failure_before_exec_is_an_outage_retried_as_is() -> None:
    launch = LaunchError("setuid", errno.EPERM, "launch failed at setuid")
    v = outcome(run(exit_status=None, launch=launch))
    assert v is not None and v.kind == "retry" and v.status is None
    assert not v.final and not v.counts_as_attempt and v.next_program == 1


# --- stdin ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "nl"), [(b"Subject: x\r\n\r\nhi\r\n", b"\r\n"),
                                          (b"Subject: x\n\nhi\n", b"\n")])
def test_stdin_starts_with_return_path_and_delivered_to_in_the_messages_line_endings(
    body: bytes, nl: bytes
) -> None:
    assert chain.stdin_prefix("alice@example.net", RECIPIENT, body) == (
        b"Return-Path: <alice@example.net>" + nl + b"Delivered-To: robin@example.org" + nl)
    assert chain.stdin_prefix("", RECIPIENT, body).startswith(b"Return-Path: <>" + nl)
