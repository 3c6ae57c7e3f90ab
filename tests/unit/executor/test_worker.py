"""After the verdict: what is recorded, and where the job goes next (retry ladder, held)."""

from __future__ import annotations

import pytest

from services.executor import chain, worker
from services.executor.publishing import INFRA_RETRY_HEADER
from services.executor.verdict import Verdict
from tests.unit.executor.builders import account, claim, job, run, run_row, settings


def deferred(j: object, position: int = 1) -> Verdict:
    v = chain.run_outcome(j, account(["a", "b"]), "b", position, run(exit_status=75), "",  # type: ignore[arg-type]
                          [run_row("a")], settings())
    assert v is not None and v.kind == "deferred"
    return v


def test_a_final_outcome_is_recorded_as_one_more_attempt() -> None:
    j = job(attempt=2)
    v = chain.delivered(account(["a", "b"]), ["a", "b"], [run_row("a"), run_row("b", 1)])
    u = worker.recipient_update(j, v)
    assert (u.state, u.status, u.final, u.attempts, u.expected_attempts) == (
        "delivered", "2.0.0", True, 3, 2)
    assert len(u.runs) == 2
    assert worker.retry_of(j, v, 0) is None


def test_a_tempfail_goes_up_the_ladder_and_resumes_at_the_failed_program() -> None:
    j = job(attempt=1, next_program=0)
    v = deferred(j)
    u = worker.recipient_update(j, v)
    assert (u.state, u.status, u.final, u.attempts, u.next_program) == ("deferred", "4.3.0", False, 2, 1)
    again = worker.retry_of(j, v, 0)
    assert again is not None
    assert (again.job.attempt, again.job.next_program, again.step, again.infra_retries) == (2, 1, 2, None)
    assert again.job.job_id == j.job_id


def test_an_outage_is_retried_as_the_same_attempt_counting_outages_apart() -> None:
    j = job(attempt=1, next_program=1)
    v = Verdict(kind="retry", diagnostic="policy service unavailable: refused", next_program=1)
    u = worker.recipient_update(j, v)
    assert (u.state, u.attempts, u.final, u.status) == ("deferred", 1, False, None)
    again = worker.retry_of(j, v, 3)
    assert again is not None
    assert (again.job.attempt, again.job.next_program, again.step, again.infra_retries) == (1, 1, 4, 4)


def test_a_suspension_is_neither_an_attempt_nor_a_retry() -> None:
    j = job(attempt=0)
    v = chain.held(j, claim(), settings(suspended=True))
    u = worker.recipient_update(j, v)
    assert (u.state, u.attempts, u.final) == ("suspended", 0, False)
    assert worker.retry_of(j, v, 0) is None


def test_the_delay_warning_is_recorded_so_it_goes_out_once() -> None:
    j = job(age_s=20000)
    v = chain.held(j, claim(), settings(suspended=True))
    assert worker.recipient_update(j, v).delay_notified


def test_a_long_diagnostic_is_cut_for_the_row() -> None:
    v = Verdict(kind="bounced", status="5.3.0", diagnostic="x" * 5000)
    assert len(worker.recipient_update(job(), v).diagnostic or "") == worker.MAX_DIAGNOSTIC
    assert worker.recipient_update(job(), Verdict(kind="retry")).diagnostic is None


@pytest.mark.parametrize(("headers", "redelivered", "expected"), [
    ({}, False, (0, False)),                       # first delivery: claims queued rows only
    ({}, True, (0, True)),                         # its holder died: may re-claim 'running'
    ({INFRA_RETRY_HEADER: 2}, False, (2, True)),   # back from an outage retry
    ({INFRA_RETRY_HEADER: "2"}, False, (0, True)),  # a header that is not a count
])
def test_redelivery(headers: dict[str, object], redelivered: bool, expected: tuple[int, bool]) -> None:
    assert worker.redelivery(headers, redelivered) == expected
