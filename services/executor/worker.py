"""The delivery consumer: one job per (message, recipient), claimed, run, recorded, announced.

Per job, in this order (SPEC §3.10: ack only after the outcome is recorded):

1. **claim** – one batched ``UPDATE … RETURNING`` (``repo.py``): the row moves to
   ``running`` only if its ``attempts`` equals the job's ``attempt``, its
   ``generation`` the job's (an operator's retry/hold/release/delete bumps it, so
   copies still waiting in a retry or held queue become stale), and it is
   claimable (``queued/deferred/suspended``, or ``running`` when the job was
   redelivered – its previous holder died). Anything else is a duplicate or an
   outcome already recorded: acked without running anything.
2. **decide and run** – ``chain.py`` (policy checks, resolution, sandboxed runs).
3. **record** – one batched statement: recipient row + program runs, atomically,
   guarded by ``state = 'running' AND attempts = job.attempt`` (a concurrent holder
   that recorded first wins; the loser announces nothing).
4. **publish** (confirmed) the retry/held copy and the events, then **ack**.

Crash safety of "commit, then publish, then ack" – the choice: *re-derive on
redelivery* (no extra column, no outbox table). A worker that dies after the commit
leaves the job unacked; RabbitMQ redelivers it with ``redelivered=True``. A worker that
is alive but cannot publish nacks the job with requeue, which also redelivers it
flagged ``redelivered``. The claim
then fails (the row is final, or ``deferred`` with ``attempts = job.attempt + 1``),
and :meth:`Worker._announce_recorded` rebuilds what the dead worker had to publish
from the recorded row and its last program run (``events.rederive``): the events of
a final outcome, or the retry copy of a deferral. Event ids are UUIDv5 of (job,
attempt, kind), so a re-announced event has the id of the original and the
notifier's ``seen_events`` drops it if it had gone out already. A worker that dies
*before* the commit leaves the row ``running``: the redelivered job claims it again
and runs again (at-least-once across crashes, exactly-once otherwise).

Outages: policy unreachable, database down, or the sandbox unable to spawn give a
``retry``: the job is re-published to the retry ladder (header
``x-mailexec-infra-retries``, which also lets it re-claim its ``running`` row) and
acked – never bounced, never lost, and never counted against the quorum queue's
delivery limit. If even that publish fails the job is nacked with requeue after a
short sleep. An unexpected exception nacks with requeue: a job that keeps crashing
reaches the delivery limit and ends in ``deliveries.dead`` → bounce 5.3.0 + admin
notice (``dead.py``), never a silent drop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from aio_pika.abc import AbstractIncomingMessage, AbstractQueue
from pydantic import ValidationError

from services.executor import chain
from services.executor.events import announce_final, events_for
from services.executor.metrics import (
    DELIVERIES,
    JOBS_IN_FLIGHT,
    QUEUE_LAG_SECONDS,
    RETRIES,
    STALE_JOBS,
)
from services.executor.publishing import INFRA_RETRY_HEADER, Publisher
from services.executor.repo import RecipientUpdate, Repo
from services.executor.verdict import Verdict
from shared.errors import Unavailable
from shared.notify import pending_kinds
from shared.schemas import Event, Job
from shared.states import FINAL_STATES

log = logging.getLogger("mailexec.executor")

RECORD_RETRY_S = 30.0
REQUEUE_PAUSE_S = 1.0  # before handing a job back to the broker to retry it
MAX_DIAGNOSTIC = 2000


class Worker:
    def __init__(self, deps: chain.Deps, repo: Repo, publisher: Publisher, concurrency: int) -> None:
        self.deps = deps
        self.repo = repo
        self.pub = publisher
        self._sem = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self.held_since_drain = False
        self.stopping = False

    # --- entry point (aio-pika consumer callback) -------------------------------------

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        """Start the job in a task of our own: aiormq cancels its consumer tasks when the
        channel dies, and a job must finish (record its outcome) even then."""
        task = asyncio.get_running_loop().create_task(self._run(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, message: AbstractIncomingMessage) -> None:
        async with self._sem:
            JOBS_IN_FLIGHT.inc()
            try:
                await self.handle(message)
            finally:
                JOBS_IN_FLIGHT.dec()

    async def drain(self, timeout: float) -> None:
        """Wait for the jobs in flight (shutdown)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    async def handle(self, message: AbstractIncomingMessage) -> None:
        try:
            job = Job.from_json(message.body)
        except (ValidationError, ValueError) as exc:
            log.error("unparseable job dead-lettered", extra={"error": str(exc)[:300],
                                                              "outcome": "corrupt"})
            DELIVERIES.labels("corrupt").inc()
            await message.reject(requeue=False)
            return
        try:
            await self._handle_job(message, job)
        except Exception:
            log.exception("job failed unexpectedly; requeued",
                          extra={"message_id": str(job.message_id), "recipient": job.recipient})
            await asyncio.sleep(0.5)
            await _settle(message, requeue=True)

    async def _handle_job(self, message: AbstractIncomingMessage, job: Job) -> None:
        infra_retries, reclaim = redelivery(message.headers or {}, bool(message.redelivered))
        try:
            claim = await self.repo.claim(job.job_id, job.attempt, reclaim, job.generation)
        except Unavailable as exc:
            await self._infra_retry(message, job, infra_retries, f"claim: {exc}")
            return
        if not claim.claimed:
            await self._not_claimed(message, job, reclaim)
            return
        started = time.monotonic()
        if job.attempt == 0 and job.next_program == 0:
            QUEUE_LAG_SECONDS.observe(max(0.0, (datetime.now(UTC) - job.arrival).total_seconds()))
        try:
            verdict = await chain.decide_and_run(job, claim, lambda: self._body(job), self.deps)
        except Unavailable as exc:
            verdict = Verdict(kind="retry", diagnostic=f"database unavailable: {exc}",
                              next_program=job.next_program)
        await self._conclude(message, job, verdict, infra_retries, time.monotonic() - started)

    @asynccontextmanager
    async def _body(self, job: Job) -> AsyncIterator[bytes]:
        inline = job.body()
        if inline is not None:
            yield inline
            return
        async with self.repo.message_body(job.message_id, job.size) as body:
            yield body

    # --- after the verdict -------------------------------------------------------------

    async def _conclude(
        self, message: AbstractIncomingMessage, job: Job, v: Verdict, infra_retries: int,
        duration: float,
    ) -> None:
        events = events_for(job, v, job.attempt + (1 if v.counts_as_attempt else 0))
        # built before the record: the same transaction says which of them need the body
        update = recipient_update(job, v, [event for _, event in events])
        recorded = await self._record(update)
        if recorded is None:  # database still down after RECORD_RETRY_S: run again later
            await _settle(message, requeue=True)
            return
        if not recorded:
            log.warning("outcome not recorded: another worker owns the job now",
                        extra=_ctx(job, v, duration, "lost_race"))
            DELIVERIES.labels("duplicate").inc()
            await _settle(message)
            return
        try:
            again = retry_of(job, v, infra_retries)
            if again is not None:
                RETRIES.labels("tempfail" if v.kind == "deferred" else "outage").inc()
                await self.pub.retry(again.job, again.step, infra_retries=again.infra_retries)
            elif v.kind == "suspended":
                await self.pub.hold(job)
                self.held_since_drain = True
            for key, event in events:
                await self.pub.event(key, event)
        except Unavailable as exc:
            # Recorded but not announced: the redelivered job re-derives it (see module
            # doc). Hand it back explicitly: the consumer's channel may well be alive
            # (aio-pika restores the consumer channel before the publishing one), and an
            # unsettled job on a live channel would never come back.
            log.warning("publish failed after recording; job requeued to announce it",
                        extra={**_ctx(job, v, duration, v.kind), "error": exc.message})
            await asyncio.sleep(REQUEUE_PAUSE_S)
            await _settle(message, requeue=True)
            return
        log.log(logging.WARNING if v.kind == "retry" else logging.INFO, "delivery %s", v.kind,
                extra=_ctx(job, v, duration, v.kind))
        DELIVERIES.labels(v.kind).inc()
        await _settle(message)

    async def _record(self, update: RecipientUpdate) -> bool | None:
        deadline = time.monotonic() + RECORD_RETRY_S
        delay = 0.2
        while True:
            try:
                return await self.repo.record(update)
            except Unavailable as exc:
                if time.monotonic() > deadline:
                    log.error("cannot record outcome; job requeued",
                              extra={"job_id": str(update.job_id), "error": exc.message})
                    return None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 3.0)

    async def _not_claimed(self, message: AbstractIncomingMessage, job: Job, reclaim: bool) -> None:
        try:
            current = await self.repo.generation(job.job_id)
        except Unavailable:
            current = None  # only names the drop below; the job is not claimable either way
        if current is not None and current != job.generation:
            log.info("stale job dropped: superseded by an operator's queue action",
                     extra={"message_id": str(job.message_id), "recipient": job.recipient,
                            "attempt": job.attempt, "outcome": "stale"})
            STALE_JOBS.inc()
            await _settle(message)
            return
        if reclaim:
            try:
                await self._announce_recorded(job)
            except Unavailable as exc:
                log.warning("cannot re-announce a recorded outcome yet; requeued",
                            extra={"message_id": str(job.message_id), "recipient": job.recipient,
                                   "error": exc.message})
                await asyncio.sleep(REQUEUE_PAUSE_S)
                await _settle(message, requeue=True)
                return
        log.info("job skipped: outcome already recorded or job running elsewhere",
                 extra={"message_id": str(job.message_id), "recipient": job.recipient,
                        "attempt": job.attempt, "outcome": "skipped"})
        DELIVERIES.labels("skipped").inc()
        await _settle(message)

    async def _announce_recorded(self, job: Job) -> None:
        """Publish what a worker that died after recording this job's outcome could not."""
        snap = await self.repo.snapshot(job.job_id)
        if snap is None or snap.attempts != job.attempt + 1:
            return
        if snap.state in FINAL_STATES:
            await announce_final(self.pub, job, snap)
        elif snap.state == "deferred":
            await self.pub.retry(job.model_copy(update={"attempt": snap.attempts,
                                                        "next_program": snap.next_program}),
                                 snap.attempts)

    async def _infra_retry(
        self, message: AbstractIncomingMessage, job: Job, infra_retries: int, why: str
    ) -> None:
        log.warning("outage; job sent to the retry ladder",
                    extra={"message_id": str(job.message_id), "recipient": job.recipient,
                           "error": why[:300]})
        RETRIES.labels("outage").inc()
        try:
            await self.pub.retry(job, infra_retries + 1, infra_retries=infra_retries + 1)
        except Unavailable:
            await asyncio.sleep(REQUEUE_PAUSE_S)
            await _settle(message, requeue=True)
            return
        await _settle(message)

    # --- held jobs ---------------------------------------------------------------------

    async def release_held(self) -> None:
        try:
            moved = await self.pub.drain_held()
        except Exception as exc:  # the held queue's TTL releases them anyway
            log.warning("draining held jobs failed", extra={"error": str(exc)})
            return
        self.held_since_drain = False
        if moved:
            log.info("resumed: held jobs released", extra={"count": moved})


# --- the decisions above, without the I/O ----------------------------------------------


def redelivery(headers: Mapping[str, object], redelivered: bool) -> tuple[int, bool]:
    """(outage retries so far, whether the job may re-claim a ``running`` row): a job the
    broker redelivered, or one back from the retry ladder after an outage, may."""
    raw = headers.get(INFRA_RETRY_HEADER, 0)
    return (raw if isinstance(raw, int) else 0), redelivered or INFRA_RETRY_HEADER in headers


def recipient_update(job: Job, v: Verdict, events: Sequence[Event] = ()) -> RecipientUpdate:
    """The row update that records ``v``: delivered, bounced and deferred count as an
    attempt; a suspension or an outage does not. ``events``: those announced with it;
    the ones that will read the message's body are left pending in the same update
    (:func:`shared.notify.pending_kinds`), so no purge can take the body before the
    notifier has rendered them."""
    return RecipientUpdate(
        job_id=job.job_id, expected_attempts=job.attempt, state=v.state, status=v.status,
        diagnostic=v.diagnostic[:MAX_DIAGNOSTIC] or None,
        attempts=job.attempt + (1 if v.counts_as_attempt else 0),
        next_program=v.next_program, final=v.final, delay_notified=v.delay_warning, runs=v.runs,
        notifier_pending=pending_kinds(events),
    )


@dataclass(frozen=True)
class Retry:
    """The copy of a job sent to the retry ladder, and its step there."""

    job: Job
    step: int
    infra_retries: int | None = None


def retry_of(job: Job, v: Verdict, infra_retries: int) -> Retry | None:
    """A deferral goes up the ladder by attempt and resumes at the failed program; an
    outage by its own count (header ``x-mailexec-infra-retries``), as the same attempt."""
    if v.kind == "deferred":
        attempts = job.attempt + 1
        return Retry(job.model_copy(update={"attempt": attempts, "next_program": v.next_program}),
                     attempts)
    if v.kind == "retry":
        return Retry(job.model_copy(update={"next_program": v.next_program}), infra_retries + 1,
                     infra_retries + 1)
    return None


async def _settle(message: AbstractIncomingMessage, *, requeue: bool | None = None) -> None:
    """Ack (or nack with requeue); a dead channel means the broker redelivers anyway."""
    try:
        if requeue is None:
            await message.ack()
        else:
            await message.nack(requeue=requeue)
    except Exception as exc:
        log.info("ack/nack not delivered (channel closed); the job will be redelivered",
                 extra={"error": type(exc).__name__})


def _ctx(job: Job, v: Verdict, duration: float, outcome: str) -> dict[str, object]:
    return {
        "message_id": str(job.message_id), "recipient": job.recipient, "attempt": job.attempt,
        "program": v.program, "outcome": outcome, "status": v.status,
        "duration_ms": round(duration * 1000, 1),
        "exit_status": v.exit_status, "signal": v.signal, "timed_out": v.timed_out or None,
    }


async def consume(queue: AbstractQueue, worker: Worker) -> str:
    return await queue.consume(worker.on_message, no_ack=False)

