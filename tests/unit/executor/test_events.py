"""Events built from a verdict: which kinds go out, what the recipient entry says, and that
an outcome re-announced after a crash carries the ids of its first announcement."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from services.executor import chain, events
from services.executor.repo import MessageEnvelope
from services.executor.verdict import Verdict
from shared.status import FailureKind, NoticeReason
from tests.unit.executor.builders import (
    account,
    claim,
    job,
    run,
    run_row,
    settings,
    snapshot,
)

J = job()


def kinds(pairs: Sequence[tuple[str, object]]) -> list[str]:
    return [key for key, _ in pairs]


def program_failure(code: int, output: bytes = b"", **ps: object) -> Verdict:
    v = chain.run_outcome(J, account(), "probe", 0, run(exit_status=code, output=output),
                          chain.decode_output(output), [run_row()], settings(**ps))
    assert v is not None
    return v


def test_a_program_failure_is_a_bounce_and_a_postmaster_notice() -> None:
    v = program_failure(65, b"bad data\n")
    pairs = events.events_for(J, v, 1)
    assert kinds(pairs) == ["bounce", "admin_notice"]
    bounce, notice = pairs[0][1], pairs[1][1]
    (r,) = bounce.recipients
    assert (r.address, r.action, r.status, r.program, r.exit_status) == (
        J.recipient, "failed", "5.6.0", "probe", 65)
    assert r.diagnostic == v.diagnostic and r.output_excerpt == "bad data\n"
    assert r.will_retry_until is None
    assert bounce.message_id == J.message_id and bounce.envelope.sender == J.sender
    assert notice.notice is not None and notice.notice.reason is NoticeReason.PROGRAM_FAILED
    assert notice.notice.account == J.recipient


def test_output_left_out_of_the_dsn_still_reaches_the_postmaster() -> None:
    v = program_failure(1, b"secret\n", dsn_include_output=False)
    bounce, notice = (e for _, e in events.events_for(J, v, 1))
    assert bounce.recipients[0].output_excerpt == "" and "secret" not in bounce.recipients[0].diagnostic
    assert notice.recipients[0].output_excerpt == "secret\n"
    assert notice.notice is not None and "secret" in notice.notice.detail


def test_a_bounce_without_a_notice_reason_is_only_a_bounce() -> None:
    v = chain.admit(J, claim(), None, settings())
    assert isinstance(v, Verdict)
    assert kinds(events.events_for(J, v, 1)) == ["bounce"]


def test_delivered_is_announced_only_when_notify_has_success() -> None:
    v = chain.delivered(account(), ["probe"], [run_row()])
    assert events.events_for(J, v, 1) == []
    j = job(notify=["SUCCESS"])
    ((key, ev),) = events.events_for(j, v, 1)
    assert key == "delivered" and (ev.recipients[0].action, ev.recipients[0].status) == (
        "delivered", "2.0.0")


def test_a_deferral_says_nothing_until_the_delay_warning() -> None:
    v = program_failure(75)
    assert v.kind == "deferred" and events.events_for(J, v, 1) == []
    v.delay_warning = True
    ((key, ev),) = events.events_for(J, v, 1)
    (r,) = ev.recipients
    assert (key, r.action, r.status) == ("delayed", "delayed", "4.3.0")
    assert r.will_retry_until == J.arrival + timedelta(seconds=432000)


def test_one_delay_warning_per_job_whatever_the_attempt() -> None:
    v = program_failure(75)
    v.delay_warning = True
    ids = {events.events_for(J, v, n)[0][1].event_id for n in (1, 2, 5)}
    assert len(ids) == 1


def test_a_suspended_jobs_warning_is_4_0_0() -> None:
    v = chain.held(job(age_s=20000), claim(), settings(suspended=True))
    assert v.delay_warning
    ((key, ev),) = events.events_for(J, v, 0)
    assert (key, ev.recipients[0].status) == ("delayed", "4.0.0")


def test_an_outage_announces_nothing() -> None:
    v = Verdict(kind="retry", diagnostic="policy service unavailable")
    assert events.events_for(J, v, 0) == []


def test_event_ids_are_fixed_by_job_attempt_and_kind() -> None:
    assert events.event_id(J.job_id, 1, "bounce") == events.event_id(J.job_id, 1, "bounce")
    assert events.event_id(J.job_id, 1, "bounce") != events.event_id(J.job_id, 2, "bounce")
    assert events.event_id(J.job_id, 1, "bounce") != events.event_id(J.job_id, 1, "admin_notice")


# --- re-announcing a recorded outcome (a worker died between the commit and the publish) ---


def recorded(v: Verdict) -> list[tuple[str, uuid.UUID, str, str | None]]:
    """The events of ``v``, then those re-derived from the row it was recorded as."""
    run_row_dict = None
    if v.program is not None:
        run_row_dict = {"program": v.program, "exit_status": v.exit_status, "signal": v.signal,
                        "timed_out": v.timed_out, "output_excerpt": v.output}
    snap = snapshot(J, state=v.state, status=v.status, diagnostic=v.diagnostic, attempts=1,
                    last_run=run_row_dict)
    again = events.events_for(J, events.rederive(snap), snap.attempts)
    return [(k, e.event_id, e.recipients[0].status,
             e.notice.reason.value if e.notice else None) for k, e in again]


SCENARIOS = {
    "unknown account": lambda: chain.admit(J, claim(), None, settings()),
    "not configured": lambda: chain.admit(J, claim(), account(enabled=False), settings()),
    "disabled": lambda: chain.disabled(account()),
    "bad shell": lambda: chain.run_identity(account(shell="/bin/zsh"), settings()),
    "root": lambda: chain.run_identity(account(uid=0, gid=0), settings()),
    "unresolved": lambda: chain.unresolved(account(), "probe", 0, "not registered"),
    "mail loop": lambda: chain.mail_loop(f"Delivered-To: {J.recipient}\n\n".encode(), J.recipient),
    "expired": lambda: chain.held(job(age_s=10**6), claim(), settings(suspended=True)),
    "exit 65": lambda: program_failure(65, b"oops\n"),
    "exit 3": lambda: program_failure(3),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_a_reannounced_outcome_carries_the_ids_of_the_first_announcement(name: str) -> None:
    v = SCENARIOS[name]()
    assert isinstance(v, Verdict) and v.kind == "bounced"
    first = [(k, e.event_id, e.recipients[0].status, e.notice.reason.value if e.notice else None)
             for k, e in events.events_for(J, v, 1)]
    assert recorded(v) == first


def test_rederive_recovers_the_failure_kind_from_the_recorded_diagnostic() -> None:
    v = chain.run_identity(account(shell="/bin/zsh"), settings())
    assert isinstance(v, Verdict)
    snap = snapshot(J, state="bounced", status=v.status, diagnostic=v.diagnostic, attempts=1)
    assert events.rederive(snap).failure is FailureKind.BAD_SHELL
    done = snapshot(J, state="delivered", status="2.0.0", diagnostic="delivered to probe", attempts=1)
    assert events.rederive(done).kind == "delivered"


def test_the_stored_envelope_prefers_the_recipients_notify_and_drops_unknown_values() -> None:
    env = MessageEnvelope(message_id=J.message_id, sender="a@example.net", envid="E1", ret="HDRS",
                          notify=["SUCCESS"], size=10, received_at=datetime.now(UTC))
    assert events.envelope_from_db(env).notify == ["SUCCESS"]
    assert events.envelope_from_db(env, ["FAILURE"]).notify == ["FAILURE"]
    assert events.envelope_from_db(env, ["BOGUS"]).notify == ["FAILURE", "DELAY"]
    assert events.envelope_from_db(env).ret == "HDRS"
    odd = MessageEnvelope(message_id=J.message_id, sender="", envid=None, ret="ALL", notify=[],
                          size=1, received_at=datetime.now(UTC))
    assert events.envelope_from_db(odd).ret is None
