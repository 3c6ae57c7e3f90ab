"""Accepting a message durably: a batching transactional outbox and its relay.

The contract (SPEC §2): answer 202 only once the message is stored AND every recipient
job is confirmed by RabbitMQ; nothing accepted is ever lost; when the DB or broker is
down answer 503 and accept nothing.

How (one batch = the submissions that arrived within ~2 ms, ≤ 100 messages, ≤ 4 MiB):

1. ONE statement inserts the messages and their recipients (``published = false``) and
   commits. The recipient rows ARE the outbox.
2. Every job is published (persistent, mandatory, publisher confirms) and all confirms
   are awaited together.
3. ONE UPDATE sets ``published = true`` for the confirmed jobs; a message whose jobs
   were all confirmed is answered 202.

Failure semantics, decided here:

- DB down at step 1: nothing was stored → 503 (``database_unavailable``). Any other
  database error (a constraint violation: a bug, ids are fresh uuids) → 500.
- Broker down / nack / timeout at step 2, and NO job of a message was confirmed: the
  message is deleted again (cascade to its recipients) → 503; nothing half-accepted
  remains, and the MTA's retry (same Idempotency-Key or not) starts from scratch. If a
  "failed" publish did reach the queue anyway (lost confirm), the executor finds no
  recipient row for the job and drops it: the job is withdrawn, not lost (no 202 was
  given, the MTA still has the message).
- Some but not all jobs of a message confirmed (the broker died mid-batch): the message
  is kept and the relay publishes the rest; the answer is still 503, because not every
  job is queued yet. A retry with the same Idempotency-Key gets the same id once the
  relay finished (no duplicate); a retry without a key may duplicate the recipients
  already queued — the classic SMTP "lost reply" trade-off, preferring a duplicate over
  a loss. Send Idempotency-Key to avoid it.
- Step 3 fails (DB gone after the confirms): the answer is 202 (the message is stored
  and queued); the rows stay ``published = false`` and the relay publishes them again —
  the executor claims each job in the database, so a job published twice runs once.
- Crash between step 1 and step 3: the client got no answer and retries; the relay
  publishes the orphaned rows (same semantics as the partial case).
- The deletion after a failed publish itself fails (DB also down): same as a crash.

The relay (:class:`Relay`, in every ingest process) publishes rows that are still
unpublished 10 s after they were stored, with ``SELECT … FOR UPDATE SKIP LOCKED`` so
several ingest processes share the work without publishing a row twice.

Idempotency-Key: the same key within one process joins the in-flight submission; across
processes the unique index decides, and the loser waits until the winner's jobs are all
confirmed (then 202 with the same id) — it never publishes the jobs itself. A key is bound
to the hash of the envelope and body it was first used with (``envelope.content_hash``,
stored in ``mail.messages.idempotency_hash``): the same key with another message is 409
(:func:`key_reused`), in-flight or stored, and the answer says nothing about the message
that holds the key. Rows stored before the hash existed (NULL) answer as before.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from shared import topology
from shared.amqp import Broker
from shared.errors import Conflict, MailexecError, Unavailable

from . import metrics
from .envelope import Envelope, content_hash
from .repo import MARK_PUBLISHED, RELAY_SELECT, Database, NewMessage

log = logging.getLogger("mailexec.ingest")

MAX_BATCH_MESSAGES = 100
MAX_BATCH_BYTES = 4 * 1024 * 1024
BATCH_LINGER_S = 0.002
MAX_INFLIGHT_BATCHES = 8
MARK_FLUSH_S = 0.01
PUBLISH_TIMEOUT_S = 5.0
DUPLICATE_WAIT_S = 5.0


@dataclass(frozen=True, slots=True)
class Accepted:
    message_id: uuid.UUID
    recipients: tuple[str, ...]
    duplicate: bool = False


@dataclass(slots=True)
class _Submission:
    message: NewMessage
    future: asyncio.Future[Accepted]
    attempts: int = 0
    followers: list[asyncio.Future[Accepted]] = field(default_factory=list)


def job_body(
    *,
    job_id: uuid.UUID,
    message_id: uuid.UUID,
    recipient: str,
    sender: str,
    envid: str | None,
    ret: str | None,
    notify: Sequence[str],
    arrival: datetime,
    size: int,
    body: bytes | None,
    inline_limit: int,
    orcpt: str | None = None,
    attempt: int = 0,
    next_program: int = 0,
    generation: int = 0,
) -> bytes:
    """The job JSON of docs/internals.md ("Job body"): schema version 1, or 2 when it
    carries a ``generation`` above 0 (a copy an operator's queue action published)."""
    job: dict[str, Any] = {
        "v": 2 if generation else 1,
        "job_id": str(job_id),
        "message_id": str(message_id),
        "recipient": recipient,
        "orcpt": orcpt,
        "attempt": attempt,
        "next_program": next_program,
        "sender": sender,
        "envid": envid,
        "ret": ret,
        "notify": list(notify),
        "arrival": arrival.isoformat(),
        "size": size,
    }
    if generation:
        job["generation"] = generation
    if body is not None and size <= inline_limit:
        job["body_b64"] = base64.b64encode(body).decode("ascii")
    return orjson.dumps(job)


def key_reused() -> Conflict:
    """409 for an Idempotency-Key already bound to another message (no detail of that one),
    counted among the rejected submissions."""
    metrics.MESSAGES_REJECTED.labels(reason="idempotency_conflict").inc()
    return Conflict(
        "this Idempotency-Key was already used for another message (a different envelope "
        "or body); use a new key for a new message",
        code="idempotency_key_reused",
    )


def _resolve(fut: asyncio.Future[Accepted], result: Accepted | BaseException) -> None:
    if fut.done():
        return
    if isinstance(result, BaseException):
        fut.set_exception(result)
    else:
        fut.set_result(result)


class Outbox:
    """Gathers concurrent submissions into batches; see the module docstring."""

    def __init__(self, db: Database, broker: Broker, *, inline_limit: int) -> None:
        self.db = db
        self.broker = broker
        self.inline_limit = inline_limit
        self._queue: asyncio.Queue[_Submission] = asyncio.Queue()
        self._slots = asyncio.Semaphore(MAX_INFLIGHT_BATCHES)
        self._by_key: dict[str, _Submission] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._collector: asyncio.Task[None] | None = None
        self._to_mark: list[uuid.UUID] = []
        self._marker: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._collector = asyncio.create_task(self._collect(), name="ingest-batcher")

    async def stop(self) -> None:
        if self._collector is not None:
            self._collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._collector
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._marker is not None:
            await asyncio.gather(self._marker, return_exceptions=True)

    async def submit(self, envelope: Envelope, body: Sequence[bytes],
                     idempotency_key: str | None) -> Accepted:
        """Store and queue one message (``body``: its bytes in the pieces they arrived in,
        never joined); returns once every job is confirmed (or raises)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Accepted] = loop.create_future()
        digest = content_hash(envelope, body) if idempotency_key is not None else None
        if idempotency_key is not None and idempotency_key in self._by_key:
            leader = self._by_key[idempotency_key]
            if leader.message.idempotency_hash != digest:
                raise key_reused()
            leader.followers.append(fut)
            first = await fut
            return Accepted(first.message_id, first.recipients, duplicate=True)
        rcpts = envelope.recipients
        message = NewMessage(
            id=uuid.uuid4(),
            sender=envelope.sender,
            envid=envelope.envid,
            ret=envelope.ret,
            notify=envelope.notify,
            body=body,
            idempotency_key=idempotency_key,
            received_at=datetime.now(UTC),
            recipient_ids=[uuid.uuid4() for _ in rcpts],
            addresses=[r.address for r in rcpts],
            accounts=[r.account for r in rcpts],
            notifies=[None if r.notify is None or r.notify == envelope.notify else ",".join(r.notify)
                      for r in rcpts],
            orcpts=[r.orcpt for r in rcpts],
            idempotency_hash=digest,
        )
        sub = _Submission(message, fut)
        if idempotency_key is not None:
            self._by_key[idempotency_key] = sub
        self._queue.put_nowait(sub)
        return await fut

    # -- batching -------------------------------------------------------------------

    async def _collect(self) -> None:
        while True:
            first = await self._queue.get()
            if self._queue.qsize() < MAX_BATCH_MESSAGES - 1:
                await asyncio.sleep(BATCH_LINGER_S)
            await self._slots.acquire()
            batch, size = [first], first.message.size
            while len(batch) < MAX_BATCH_MESSAGES and size < MAX_BATCH_BYTES:
                try:
                    sub = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                batch.append(sub)
                size += sub.message.size
            task = asyncio.create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("batch failed unexpectedly", exc_info=task.exception())

    def _finish(self, sub: _Submission, result: Accepted | BaseException) -> None:
        key = sub.message.idempotency_key
        if key is not None and self._by_key.get(key) is sub:
            del self._by_key[key]
        _resolve(sub.future, result)
        for follower in sub.followers:
            _resolve(follower, result)

    async def _run(self, batch: list[_Submission]) -> None:
        metrics.BATCH_SIZE.observe(len(batch))
        try:
            inserted = await self.db.insert_batch([s.message for s in batch])
        except Exception as exc:
            self._fail(batch, exc, "database")
            return
        fresh = [s for s in batch if s.message.id in inserted]
        for sub in batch:
            if sub.message.id not in inserted:  # lost the Idempotency-Key race
                task = asyncio.create_task(self._resolve_duplicate(sub))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        if fresh:
            await self._publish(fresh)

    def _fail(self, batch: Sequence[_Submission], exc: BaseException, reason: str) -> None:
        if not isinstance(exc, MailexecError):  # not an outage (shared.db): a bug, 500
            log.error("storing a batch failed", exc_info=exc)
            exc = MailexecError("could not store the message: internal error; see the log")
        metrics.MESSAGES_REJECTED.labels(reason=reason).inc(len(batch))
        for sub in batch:
            self._finish(sub, exc)

    async def _publish(self, batch: list[_Submission]) -> None:
        jobs: list[tuple[_Submission, uuid.UUID, bytes]] = []
        for sub in batch:
            m = sub.message
            size = m.size
            inline = m.body_bytes() if size <= self.inline_limit else None
            for rid, address, notify, orcpt in zip(m.recipient_ids, m.addresses, m.notifies,
                                                   m.orcpts, strict=True):
                body = job_body(
                    job_id=rid, message_id=m.id, recipient=address, sender=m.sender,
                    envid=m.envid, ret=m.ret, notify=notify.split(",") if notify else m.notify,
                    arrival=m.received_at, size=size, body=inline,
                    inline_limit=self.inline_limit, orcpt=orcpt,
                )
                jobs.append((sub, rid, body))
        started = time.perf_counter()
        results = await asyncio.gather(
            *(
                self.broker.publish(
                    topology.DELIVERIES_EXCHANGE, topology.DELIVERIES_ROUTING_KEY, body,
                    message_id=str(rid), timeout=PUBLISH_TIMEOUT_S,
                )
                for _, rid, body in jobs
            ),
            return_exceptions=True,
        )
        metrics.PUBLISH_SECONDS.observe(time.perf_counter() - started)
        confirmed: list[uuid.UUID] = []
        failed_subs: dict[uuid.UUID, BaseException] = {}
        published_count: dict[uuid.UUID, int] = {}
        for (sub, rid, _), res in zip(jobs, results, strict=True):
            if isinstance(res, BaseException):
                failed_subs.setdefault(sub.message.id, res)
            else:
                confirmed.append(rid)
                published_count[sub.message.id] = published_count.get(sub.message.id, 0) + 1
        self._mark_later(confirmed)
        withdrawn = [s for s in batch
                     if s.message.id in failed_subs and s.message.id not in published_count]
        if withdrawn:
            try:
                await self.db.delete_messages([s.message.id for s in withdrawn])
            except Exception as exc:
                log.error("could not withdraw unqueued messages; the relay will queue them",
                          extra={"error": str(exc), "messages": len(withdrawn)})
        for sub in batch:
            m = sub.message
            err = failed_subs.get(m.id)
            if err is None:
                metrics.MESSAGES_ACCEPTED.inc()
                log.info("accepted", extra={"message_id": str(m.id), "sender": m.sender,
                                            "recipients": list(m.addresses), "size": m.size})
                self._finish(sub, Accepted(m.id, tuple(m.addresses)))
                continue
            metrics.MESSAGES_REJECTED.labels(reason="broker").inc()
            partial = m.id in published_count
            log.warning(
                "broker did not confirm every job; answered 503",
                extra={"message_id": str(m.id), "error": str(err),
                       "outcome": "kept for the relay" if partial else "withdrawn"},
            )
            answer = err if isinstance(err, Unavailable) else Unavailable(
                "the broker did not confirm the delivery jobs; retry later",
                code="broker_unavailable",
            )
            self._finish(sub, answer)

    def _mark_later(self, recipient_ids: list[uuid.UUID]) -> None:
        """Coalesce ``published = true`` updates of many batches into one UPDATE.

        The 202 does not wait for it: the jobs are already confirmed by the broker. If
        the process dies first, the relay publishes them again and the executor, which
        claims jobs in the database, runs each once.
        """
        if not recipient_ids:
            return
        self._to_mark.extend(recipient_ids)
        if self._marker is None or self._marker.done():
            self._marker = asyncio.create_task(self._flush_marks())

    async def _flush_marks(self) -> None:
        while self._to_mark:
            await asyncio.sleep(MARK_FLUSH_S)
            ids, self._to_mark = self._to_mark, []
            try:
                await self.db.mark_published(ids)
            except Exception as exc:
                log.warning("could not mark jobs published; the relay will publish them again",
                            extra={"error": str(exc), "jobs": len(ids)})

    async def _resolve_duplicate(self, sub: _Submission) -> None:
        """Another process owns this Idempotency-Key: wait for its jobs, answer its id."""
        key = sub.message.idempotency_key
        assert key is not None
        deadline = time.monotonic() + DUPLICATE_WAIT_S
        try:
            while True:
                row = await self.db.find_by_key(key)
                if row is None:  # the owner was withdrawn (503) meanwhile: try afresh
                    if sub.attempts >= 2:
                        raise Unavailable("submission with this Idempotency-Key failed; retry",
                                          code="idempotency_retry", retry_after=1)
                    sub.attempts += 1
                    self._queue.put_nowait(sub)
                    return
                stored = row["idempotency_hash"]
                if stored is not None and stored != sub.message.idempotency_hash:
                    raise key_reused()
                if row["all_published"]:
                    self._finish(sub, Accepted(row["id"], tuple(row["addresses"]), duplicate=True))
                    return
                if time.monotonic() > deadline:
                    raise Unavailable(
                        "a submission with this Idempotency-Key is still being queued; retry",
                        code="idempotency_in_progress", retry_after=2,
                    )
                await asyncio.sleep(0.05)
        except Exception as exc:
            if not isinstance(exc, MailexecError):  # not an outage (shared.db): a bug, 500
                log.error("looking up an Idempotency-Key failed", exc_info=exc)
                exc = MailexecError("could not look up the Idempotency-Key: internal error")
            self._finish(sub, exc)


class Relay:
    """Publishes outbox rows left unpublished by a failure or a crash (module docstring)."""

    def __init__(
        self,
        db: Database,
        broker: Broker,
        *,
        inline_limit: int,
        min_age_s: float = 10.0,
        interval_s: float = 2.0,
        batch: int = 500,
        event_relay: Callable[[float], Awaitable[int]] | None = None,
    ) -> None:
        """``event_relay(min_age_s)``: publishes the events of queue actions left pending
        (``queue_control.QueueControl.relay_events``)."""
        self.event_relay = event_relay
        self.db = db
        self.broker = broker
        self.inline_limit = inline_limit
        self.min_age_s = min_age_s
        self.interval_s = interval_s
        self.batch = batch
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="ingest-relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            relayed = 0
            try:
                relayed = await self.run_once()
                if self.event_relay is not None and self.broker.ready:
                    await self.event_relay(self.min_age_s)
                metrics.OUTBOX_UNPUBLISHED.set(await self.db.count_unpublished())
            except Unavailable:
                pass
            except Exception:
                log.exception("outbox relay pass failed")
            if relayed < self.batch:
                await asyncio.sleep(self.interval_s)

    async def run_once(self) -> int:
        """One pass: publish (and mark) up to ``batch`` old unpublished jobs."""
        if not self.broker.ready:
            return 0
        async with self.db.connection() as conn, conn.transaction():
            rows = await conn.fetch(RELAY_SELECT, self.min_age_s, self.inline_limit, self.batch)
            if not rows:
                return 0
            done: list[uuid.UUID] = []
            pending = []
            for r in rows:
                if r["state"] != "queued":  # the executor already has it (lost confirm)
                    done.append(r["id"])
                    continue
                body = job_body(
                    job_id=r["id"], message_id=r["message_id"], recipient=r["address"],
                    sender=r["sender"], envid=r["envid"], ret=r["ret"], notify=r["notify"],
                    arrival=r["received_at"], size=r["size"], body=r["body"],
                    inline_limit=self.inline_limit, orcpt=r["orcpt"], attempt=r["attempts"],
                    next_program=r["next_program"], generation=r["generation"],
                )
                pending.append((r["id"], body))
            results = await asyncio.gather(
                *(
                    self.broker.publish(
                        topology.DELIVERIES_EXCHANGE, topology.DELIVERIES_ROUTING_KEY, body,
                        message_id=str(rid), timeout=PUBLISH_TIMEOUT_S,
                    )
                    for rid, body in pending
                ),
                return_exceptions=True,
            )
            sent = [rid for (rid, _), res in zip(pending, results, strict=True)
                    if not isinstance(res, BaseException)]
            done.extend(sent)
            if done:
                await conn.execute(MARK_PUBLISHED, done)
        metrics.RELAY_PUBLISHED.inc(len(sent))
        if sent:
            log.info("relay published jobs left unpublished", extra={"jobs": len(sent)})
        return len(done)
