"""Postmaster notices: at most one per (account, reason, program) per interval; the next
one says how many were held back since when."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.message import EmailMessage

from services.notifier.notice_limits import NoticeLimiter, annotate_suppressed, notice_key
from shared.status import NoticeReason
from tests.unit.notifier.builders import event, recipient

T0 = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
KEY = ("robin@example.org", "program_failed", "probe")


def step(limiter: NoticeLimiter, key: tuple[str, str, str], at: datetime) -> tuple[bool, int]:
    d = limiter.decide(key, at)
    limiter.record(key, d, at)
    return d.send, d.suppressed


def test_one_notice_per_interval_then_one_saying_how_many_were_held_back() -> None:
    lim = NoticeLimiter(600)
    assert step(lim, KEY, T0) == (True, 0)
    assert step(lim, KEY, T0 + timedelta(seconds=10)) == (False, 1)
    assert step(lim, KEY, T0 + timedelta(seconds=599)) == (False, 2)
    d = lim.decide(KEY, T0 + timedelta(seconds=600))
    assert (d.send, d.suppressed, d.since) == (True, 2, T0)
    lim.record(KEY, d, T0 + timedelta(seconds=600))
    assert step(lim, KEY, T0 + timedelta(seconds=700)) == (False, 1)  # counting starts over


def test_each_account_reason_and_program_has_its_own_limit() -> None:
    lim = NoticeLimiter(600)
    assert step(lim, KEY, T0) == (True, 0)
    for other in (("other@example.org", "program_failed", "probe"),
                  ("robin@example.org", "bad_shell", "probe"),
                  ("robin@example.org", "program_failed", "probe2")):
        assert step(lim, other, T0) == (True, 0)


def test_the_key_ignores_the_accounts_case_and_names_the_program() -> None:
    ev = event("admin_notice", account="Robin@Example.ORG",
               recipients=[recipient(kind="admin_notice", program="probe")])
    assert notice_key(ev) == KEY
    bare = event("admin_notice", reason=NoticeReason.CORRUPT, recipients=[])
    assert notice_key(bare) == ("", "corrupt", "")


def test_a_trial_copy_changes_nothing_until_its_batch_is_committed() -> None:
    lim = NoticeLimiter(600)
    trial = lim.copy()
    step(trial, KEY, T0)
    assert lim.decide(KEY, T0).send  # the original never saw it
    assert not trial.decide(KEY, T0).send


def test_the_next_notice_says_how_many_were_suppressed() -> None:
    msg = EmailMessage()
    msg["Subject"] = "Program delivery failed for robin@example.org"
    msg.set_content("The program probe exited with status 1.\n")
    msg.make_mixed()
    annotate_suppressed(msg, 3, T0)
    assert msg["X-Mailexec-Suppressed"] == "3"
    assert msg["Subject"] == "Program delivery failed for robin@example.org (+3 suppressed)"
    text = next(msg.iter_parts()).get_content()
    assert text.startswith("3 more notice(s) like this one")
    assert "since 2026-12-05 12:00:00 UTC" in text.replace("\n", " ")
    assert text.rstrip().endswith("The program probe exited with status 1.")
