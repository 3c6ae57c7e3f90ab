"""Queue control (``/v1/queue``, ``mailexec queue``): retry now, hold, release, delete,
requeue dead letters — in the habits of ``postsuper`` and ``exim -M``.

Why in ingest: ingest owns schema ``mail`` and already holds the outbox that turns a
recipient row into a queued job; an action is a row change plus (maybe) a job or a
bounce event, which is exactly what that outbox makes durable.

One action, in this order:

1. **One transaction**: the recipients are locked (``FOR UPDATE``), each gets its rule
   from :mod:`services.ingest.queue_rules`; a change sets the new state, bumps
   ``generation`` and, when a fresh job is owed, sets ``published = false`` (the row is
   the outbox entry). The audit row (``mail.queue_actions``: who, what, when, which
   message and recipients, each one's old and new state) is inserted in the same
   transaction; for ``delete --bounce`` it also carries the bounce events
   (``events_pending``), so it is the events' outbox entry too.
2. **After the commit**: the fresh jobs are published with confirms and marked
   ``published``; the events are published and ``events_pending`` cleared. (The
   relay may publish such a job too, if it passes in between: a duplicate of the same
   generation, which the executor's claim runs once.)
   If ingest dies (or the broker fails) in between, the relay
   (``publish_outbox.Relay``) publishes what is left after ``min_age_s``: the jobs of
   rows still ``queued`` and unpublished, the events still pending. A job published
   twice runs once (the executor's claim), an event announced twice is sent once (its
   id is fixed in the audit row; the notifier's ``seen_events``).

Deleting a whole message (``delete`` without ``recipient=``) also deletes its body:
at once when no recipient is left to deliver and no notification needs it, else as soon
as the notifier has rendered it (the retention purge's next pass); the rule is
``retention.DISCARD``'s. It works on a message whose recipients are all final too
(its body held for a dead letter or a DSN): that is the operator's "remove it now".

Superseding: a job already waiting in a retry or held queue can't be taken back from
RabbitMQ. The bumped ``generation`` makes it stale: the executor claims a job only
while its ``generation`` equals the row's, and acks a stale copy without running it
(``mailexec_stale_jobs_total``). So a retried or released recipient runs once.

Dead letters: the executor's dead-letter handler (``services/executor/dead.py``)
drains ``deliveries.dead`` at once and finalises each recipient (a bounce, with
``dead_lettered_at`` set). The durable list of dead letters is therefore those rows,
not the queue (which is empty whenever an executor runs; its depth is reported
beside the list). Reading the queue itself would need ``basic.get`` + requeue, which
reorders it and bumps each message's delivery count. Requeue = a fresh job at a new
generation, the row queued again.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from shared import topology
from shared.amqp import Broker
from shared.errors import Conflict, NotFound, Unavailable
from shared.notify import pending_kinds
from shared.schemas import Event, EventEnvelope, EventRecipient
from shared.states import FINAL_STATES

from . import retention
from .publish_outbox import PUBLISH_TIMEOUT_S, job_body
from .queue_rules import DELETED_DIAGNOSTIC, DELETED_STATUS, Action, decide, retry_all_states
from .repo import MARK_PUBLISHED, Database

log = logging.getLogger("mailexec.ingest.queue")

# what an action needs of each recipient and its message; locked for the transaction
_SELECT = """
SELECT r.id, r.message_id, r.address, r.orcpt, r.account, r.state, r.attempts,
       r.next_program, r.generation, r.dead_lettered_at IS NOT NULL AS dead,
       coalesce(r.notify, m.notify) AS notify, m.sender, m.envid, m.ret, m.size,
       m.received_at, m.body_held, m.discarded_at IS NOT NULL AS discarded
FROM mail.recipients r JOIN mail.messages m ON m.id = r.message_id
"""
LOCK_MESSAGE = _SELECT + """
WHERE r.message_id = $1 AND ($2::text IS NULL OR r.account = $2)
ORDER BY r.address, r.id
FOR UPDATE OF r
"""
LOCK_STATES = _SELECT + """
WHERE r.state = ANY($1::text[]) AND ($2::bool IS FALSE OR r.dead_lettered_at IS NOT NULL)
ORDER BY r.created_at
LIMIT $3
FOR UPDATE OF r SKIP LOCKED
"""

APPLY = """
UPDATE mail.recipients AS r
   SET state = x.state, generation = r.generation + 1, updated_at = now(),
       published = r.published AND NOT x.publish,
       status = CASE WHEN x.final THEN x.status ELSE r.status END,
       diagnostic = CASE WHEN x.final THEN x.diagnostic ELSE r.diagnostic END,
       final_at = CASE WHEN x.final THEN now() ELSE NULL END,
       dead_lettered_at = CASE WHEN x.requeue THEN NULL ELSE r.dead_lettered_at END,
       notifier_pending = CASE WHEN x.pending = '' THEN r.notifier_pending
                               ELSE ARRAY(SELECT DISTINCT k FROM unnest(
                                        coalesce(r.notifier_pending, '{}')
                                        || string_to_array(x.pending, ',')) AS k
                                    ORDER BY k) END
  FROM unnest($1::uuid[], $2::text[], $3::bool[], $4::bool[], $5::text[], $6::text[], $7::bool[],
              $8::text[])
       AS x(id, state, publish, final, status, diagnostic, requeue, pending)
 WHERE r.id = x.id
RETURNING r.id, r.generation
"""

INSERT_ACTION = """
INSERT INTO mail.queue_actions (actor, action, message_id, recipients, detail, events,
                                events_pending)
VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $6::jsonb IS NOT NULL)
RETURNING id, at
"""

EVENTS_SENT = "UPDATE mail.queue_actions SET events_pending = false WHERE id = ANY($1::bigint[])"

PENDING_EVENTS = """
SELECT id, events FROM mail.queue_actions
WHERE events_pending AND at < now() - make_interval(secs => $1)
ORDER BY at LIMIT $2
FOR UPDATE SKIP LOCKED
"""

LIST_QUEUE = """
SELECT r.message_id, r.id, r.address, r.account, r.state, r.attempts, r.generation,
       r.status, r.diagnostic, r.created_at, r.updated_at, r.final_at,
       r.dead_lettered_at, m.sender, m.size, m.received_at,
       extract(epoch FROM now() - m.received_at) AS age_s
FROM mail.recipients r JOIN mail.messages m ON m.id = r.message_id
WHERE (CASE WHEN $1::text[] IS NULL THEN r.state NOT IN ('delivered', 'bounced', 'deleted')
            ELSE r.state = ANY($1::text[]) END)
  AND ($2::text IS NULL OR r.account = $2)
  AND ($3::text IS NULL OR m.sender = $3)
  AND ($4::float8 IS NULL OR m.received_at < now() - make_interval(secs => $4))
  AND ($5::bool IS FALSE OR r.dead_lettered_at IS NOT NULL)
  AND ($6::uuid IS NULL OR r.message_id = $6)
ORDER BY m.received_at, r.message_id, r.address
LIMIT $7
"""

LIST_ACTIONS = """
SELECT id, at, actor, action, message_id, recipients, detail, events IS NOT NULL AS has_events,
       events_pending
FROM mail.queue_actions
WHERE ($1::uuid IS NULL OR message_id = $1) AND ($2::bigint IS NULL OR id < $2)
ORDER BY id DESC
LIMIT $3
"""

RETRY_ALL_LIMIT = 10000


@dataclass(frozen=True, slots=True)
class Outcome:
    """One recipient's result of an action."""

    address: str
    account: str
    before: str
    after: str
    result: str  # changed | unchanged | conflict
    why: str = ""
    generation: int | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"address": self.address, "account": self.account,
                               "from": self.before, "state": self.after,
                               "result": self.result}
        if self.why:
            out["why"] = self.why
        if self.generation is not None:
            out["generation"] = self.generation
        return out


@dataclass(slots=True)
class Done:
    """What an action did: per recipient, the audit row, what is published."""

    action: str
    message_id: uuid.UUID | None
    outcomes: list[Outcome] = field(default_factory=list)
    audit_id: int | None = None
    jobs_published: bool = True
    events_published: bool = True
    # a delete of the whole message: whether its body is still stored afterwards (a
    # notification still needs it, or a recipient is still being delivered); else None
    body_held: bool | None = None

    def as_json(self) -> dict[str, Any]:
        out = {
            "action": self.action,
            "message_id": str(self.message_id) if self.message_id else None,
            "recipients": [o.as_json() for o in self.outcomes],
            "changed": sum(o.result == "changed" for o in self.outcomes),
            "audit_id": self.audit_id,
            # false: the relay publishes it within seconds (the change itself is stored)
            "published": self.jobs_published and self.events_published,
        }
        if self.body_held is not None:
            out["body_held"] = self.body_held
        return out


def bounce_event(row: asyncpg.Record | dict[str, Any], now: datetime) -> Event:
    """The ``bounce`` event a ``delete --bounce`` owes the sender for one recipient: the
    same event the executor announces for a failure, status 5.0.0."""
    notify = [n for n in (row["notify"] or []) if n in ("NEVER", "SUCCESS", "FAILURE", "DELAY")]
    env = EventEnvelope(
        sender=row["sender"], envid=row["envid"],
        ret=row["ret"] if row["ret"] in ("FULL", "HDRS") else None,
        notify=notify or ["FAILURE", "DELAY"],
        arrival_date=row["received_at"],
    )
    rcpt = EventRecipient(address=row["address"], orcpt=row["orcpt"], action="failed",
                          status=DELETED_STATUS, diagnostic=DELETED_DIAGNOSTIC, last_attempt=now)
    return Event(kind="bounce", event_id=uuid.uuid4(), message_id=row["message_id"],
                 occurred_at=now, envelope=env, recipients=[rcpt])


class QueueControl:
    def __init__(self, db: Database, broker: Broker, *, inline_limit: int) -> None:
        self.db = db
        self.broker = broker
        self.inline_limit = inline_limit

    # --- actions -----------------------------------------------------------------------

    async def act(self, actor: str, action: Action, message_id: uuid.UUID,
                  account: str | None) -> Done:
        """``action`` on every recipient of the message (or the one of ``account``).

        404 when nothing matches; 409 when no recipient allows it (each one final, or
        running, or the rule's other conflicts) — then nothing changed and nothing is
        audited; 200 otherwise (recipients the action doesn't apply to are listed).
        """
        self._need_broker()
        done = Done(action, message_id)
        # deleting a whole message also deletes its body, at once unless a notification
        # still needs it (retention.DISCARD) — even when every recipient is final already
        discard = action in ("delete", "delete_bounce") and account is None
        async with self.db.connection() as conn, conn.transaction():
            rows = await conn.fetch(LOCK_MESSAGE, message_id, account)
            if not rows:
                what = f"no recipient {account} in message {message_id}" if account else \
                    f"no message {message_id} in the queue"
                raise NotFound(what, code="message_not_found")
            plans = [(r, decide(action, r["state"], dead_lettered=r["dead"],
                                body_held=r["body_held"])) for r in rows]
            # every recipient final: deleting is about the body (409 once it is gone, or
            # deleted already and only waiting for a DSN to be rendered)
            only_body = (discard and rows[0]["body_held"] and not rows[0]["discarded"]
                         and all(r["state"] in FINAL_STATES for r in rows))
            if all(rule.verdict == "conflict" for _, rule in plans) and not only_body:
                why = "; ".join(sorted({f"{r['address']}: {rule.why}" for r, rule in plans}))
                raise Conflict(f"{action} not possible: {why}", code="queue_conflict")
            jobs, events = await self._apply(conn, actor, action, plans, done, message_id,
                                             discard=discard)
        await self._publish(done, jobs, events)
        return done

    async def act_all(self, actor: str, action: Action) -> Done:
        """``retry --all`` (the deferred recipients) or ``dead requeue --all``."""
        self._need_broker()
        done = Done(action, None)
        states = list(retry_all_states()) if action == "retry" else ["bounced"]
        async with self.db.connection() as conn, conn.transaction():
            rows = await conn.fetch(LOCK_STATES, states, action == "requeue", RETRY_ALL_LIMIT)
            plans = [(r, decide(action, r["state"], dead_lettered=r["dead"],
                                body_held=r["body_held"])) for r in rows]
            jobs, events = await self._apply(conn, actor, f"{action}_all", plans, done, None)
        await self._publish(done, jobs, events)
        return done

    def _need_broker(self) -> None:
        # the change would be kept and relayed later, but an operator asking to retry
        # now wants to know that nothing can be queued now
        if not self.broker.ready:
            raise Unavailable("RabbitMQ is not reachable; nothing was changed",
                              code="broker_unavailable")

    async def _apply(
        self, conn: asyncpg.Connection, actor: str, action: str,
        plans: Sequence[tuple[asyncpg.Record, Any]], done: Done, message_id: uuid.UUID | None,
        *, discard: bool = False,
    ) -> tuple[list[tuple[uuid.UUID, bytes]], list[Event]]:
        now = datetime.now(UTC)
        changes = [(r, rule) for r, rule in plans if rule.verdict == "change"]
        # the bounces a delete --bounce owes, built first: the row update that finalises a
        # recipient also says whether its DSN will read the body (shared.notify)
        bounces = {r["id"]: bounce_event(r, now) for r, rule in changes if rule.to == "bounced"}
        cols: list[list[Any]] = [[] for _ in range(8)]
        for r, rule in changes:
            final = rule.to in ("deleted", "bounced")
            bounce = bounces.get(r["id"])
            for i, v in enumerate((
                r["id"], rule.to, rule.publish, final,
                DELETED_STATUS if rule.to == "bounced" else None,
                DELETED_DIAGNOSTIC if final else None,
                action.startswith("requeue"),
                ",".join(pending_kinds([bounce] if bounce else [])),
            )):
                cols[i].append(v)
        generations: dict[uuid.UUID, int] = {}
        if changes:
            generations = {row["id"]: row["generation"] for row in await conn.fetch(APPLY, *cols)}
        if discard and message_id is not None:
            held = await retention.discard(conn, message_id)
            done.body_held = True if held is None else held
        jobs: list[tuple[uuid.UUID, bytes]] = []
        events: list[Event] = []
        for r, rule in plans:
            gen = generations.get(r["id"])
            if rule.verdict == "change":
                done.outcomes.append(Outcome(r["address"], r["account"], r["state"],
                                             rule.to or r["state"], "changed", generation=gen))
                if rule.publish and gen is not None:
                    jobs.append((r["id"], self._job(r, gen)))
                if r["id"] in bounces:
                    events.append(bounces[r["id"]])
            else:
                done.outcomes.append(Outcome(r["address"], r["account"], r["state"], r["state"],
                                             "unchanged" if rule.verdict == "same" else "conflict",
                                             why=rule.why))
        detail: dict[str, Any] = {"results": [o.as_json() for o in done.outcomes[:1000]],
                                  "count": len(done.outcomes)}
        if done.body_held is not None:
            detail["body_held"] = done.body_held
        events_json = (orjson.dumps([[e.kind, orjson.loads(e.to_json())] for e in events]).decode()
                       if events else None)
        row = await conn.fetchrow(
            INSERT_ACTION, actor, action, message_id,
            [o.address for o in done.outcomes[:1000]], orjson.dumps(detail).decode(), events_json,
        )
        done.audit_id = int(row["id"])
        log.info("queue action", extra={"action": action, "actor": actor,
                                        "message_id": str(message_id) if message_id else None,
                                        "changed": len(changes), "audit_id": done.audit_id})
        return jobs, events

    def _job(self, r: asyncpg.Record, generation: int) -> bytes:
        return job_body(
            job_id=r["id"], message_id=r["message_id"], recipient=r["address"],
            sender=r["sender"], envid=r["envid"], ret=r["ret"], notify=list(r["notify"] or []),
            arrival=r["received_at"], size=r["size"], body=None,
            inline_limit=self.inline_limit, orcpt=r["orcpt"], attempt=r["attempts"],
            next_program=r["next_program"], generation=generation,
        )

    async def _publish(self, done: Done, jobs: list[tuple[uuid.UUID, bytes]],
                       events: list[Event]) -> None:
        """After the commit: what the action owes the broker (the relay catches up on
        anything that fails here)."""
        if jobs:
            results = await asyncio.gather(*(
                self.broker.publish(topology.DELIVERIES_EXCHANGE, topology.DELIVERIES_ROUTING_KEY,
                                    body, message_id=str(rid), timeout=PUBLISH_TIMEOUT_S)
                for rid, body in jobs), return_exceptions=True)
            sent = [rid for (rid, _), res in zip(jobs, results, strict=True)
                    if not isinstance(res, BaseException)]
            done.jobs_published = len(sent) == len(jobs)
            try:
                async with self.db.connection() as conn:
                    await conn.execute(MARK_PUBLISHED, sent)
            except Exception as exc:  # the relay publishes them again; runs once anyway
                log.warning("could not mark queue-action jobs published",
                            extra={"error": str(exc)})
        if events and done.audit_id is not None:
            done.events_published = await self.publish_events([e.kind for e in events],
                                                              [e.to_json() for e in events])
            if done.events_published:
                try:
                    async with self.db.connection() as conn:
                        await conn.execute(EVENTS_SENT, [done.audit_id])
                except Exception as exc:  # sent again by the relay; the notifier drops it
                    log.warning("could not mark queue-action events sent",
                                extra={"error": str(exc)})

    async def publish_events(self, kinds: Sequence[str], bodies: Sequence[bytes]) -> bool:
        results = await asyncio.gather(*(
            self.broker.publish(topology.EVENTS_EXCHANGE, kind, body, timeout=PUBLISH_TIMEOUT_S)
            for kind, body in zip(kinds, bodies, strict=True)), return_exceptions=True)
        return not any(isinstance(r, BaseException) for r in results)

    async def relay_events(self, min_age_s: float, batch: int = 100) -> int:
        """The relay's part: publish the events of audit rows still pending (ingest died
        or the broker failed between the commit and the publish)."""
        sent = 0
        async with self.db.connection() as conn, conn.transaction():
            rows = await conn.fetch(PENDING_EVENTS, min_age_s, batch)
            done: list[int] = []
            for row in rows:
                pairs = orjson.loads(row["events"])
                if await self.publish_events([k for k, _ in pairs],
                                             [orjson.dumps(e) for _, e in pairs]):
                    done.append(row["id"])
                    sent += len(pairs)
            if done:
                await conn.execute(EVENTS_SENT, done)
        return sent

    # --- reads -------------------------------------------------------------------------

    async def listing(self, *, states: list[str] | None, account: str | None,
                      sender: str | None, older_than_s: float | None, dead: bool = False,
                      message_id: uuid.UUID | None = None, limit: int) -> list[asyncpg.Record]:
        async with self.db.connection() as conn:
            rows: list[asyncpg.Record] = await conn.fetch(
                LIST_QUEUE, states, account, sender, older_than_s, dead, message_id, limit)
        return rows

    async def actions(self, *, message_id: uuid.UUID | None, before: int | None,
                      limit: int) -> list[asyncpg.Record]:
        async with self.db.connection() as conn:
            rows: list[asyncpg.Record] = await conn.fetch(LIST_ACTIONS, message_id, before, limit)
        return rows

    async def dead_in_queue(self) -> int | None:
        """Jobs waiting in ``deliveries.dead`` right now (None: unknown)."""
        try:
            counts = await self.broker.message_counts([topology.DELIVERIES_DEAD])
        except Unavailable:
            return None
        return counts.get(topology.DELIVERIES_DEAD)
