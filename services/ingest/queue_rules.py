"""Which operator action is allowed from which recipient state, and what it does.

One pure table (:data:`RULES`) decides queue control (``/v1/queue``, ``mailexec queue``);
the routes and the SQL only apply its verdicts. Per (action, state) a :class:`Rule`:

- ``change`` — the recipient moves to ``to`` with its ``generation`` bumped (copies
  already waiting in a retry or held queue become stale: the executor claims a job
  only while its generation is the row's); ``publish``: a fresh job is queued now.
- ``same`` — nothing to do, answered 200 (idempotency: holding a held recipient,
  releasing one that is not held, deleting a deleted one).
- ``conflict`` — 409 with ``why``: the recipient is final (delivered, bounced), or
  being run right now (``running``: the executor holds it; acting on it would race the
  outcome it is about to record — act again once the attempt ends).

``retry`` from ``on_hold`` is a conflict (held means held: ``release`` it), as Postfix's
``postqueue -f`` leaves the hold queue alone. ``delete`` from any waiting state (held
included) is ``deleted`` (silent) or ``bounced`` (``--bounce``: a DSN to the sender,
status :data:`DELETED_STATUS`). ``requeue`` (dead letters) only applies to a bounced
recipient the dead-letter handler finalised (``dead_lettered_at`` set). Nothing that
queues a job applies once the message's body is deleted (retention keeps a dead
letter's body until ``delete``, so that is the case after a delete).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from shared.states import FINAL_STATES
from shared.states import STATES as RECIPIENT_STATES

Action = Literal["retry", "hold", "release", "delete", "delete_bounce", "requeue"]
ACTIONS: tuple[Action, ...] = ("retry", "hold", "release", "delete", "delete_bounce", "requeue")
Verdict = Literal["change", "same", "conflict"]

WAITING = ("queued", "deferred", "suspended")
STATES = RECIPIENT_STATES
FINAL = FINAL_STATES

DELETED_STATUS = "5.0.0"
DELETED_DIAGNOSTIC = "deleted from the queue by the mail administrator"


@dataclass(frozen=True, slots=True)
class Rule:
    verdict: Verdict
    to: str | None = None  # the new state (change)
    publish: bool = False  # queue a fresh job (change)
    why: str = ""  # conflict: the message of the 409


def _final(state: str) -> Rule:
    return Rule("conflict", why=f"the recipient is final ({state}); nothing left to act on")


_RUNNING = Rule("conflict", why="the recipient is being delivered right now; "
                                "try again when this attempt has ended")


def _table() -> dict[tuple[Action, str], Rule]:
    t: dict[tuple[Action, str], Rule] = {}
    for state in STATES:
        final = _final(state) if state in FINAL else None
        for action in ACTIONS:
            if state == "running":
                t[action, state] = _RUNNING
            elif final is not None:
                t[action, state] = final
        if state in WAITING:
            t["retry", state] = Rule("change", "queued", publish=True)
            t["hold", state] = Rule("change", "on_hold")
            t["release", state] = Rule("same")
            t["delete", state] = Rule("change", "deleted")
            t["delete_bounce", state] = Rule("change", "bounced")
            t["requeue", state] = Rule("conflict", why="not a dead letter: the recipient "
                                                       f"is {state}; use retry")
    t["retry", "on_hold"] = Rule("conflict", why="the recipient is on hold; release it "
                                                 "to deliver it")
    t["hold", "on_hold"] = Rule("same")
    t["release", "on_hold"] = Rule("change", "queued", publish=True)
    t["delete", "on_hold"] = Rule("change", "deleted")
    t["delete_bounce", "on_hold"] = Rule("change", "bounced")
    t["requeue", "on_hold"] = Rule("conflict", why="not a dead letter: the recipient is "
                                                   "on hold; use release")
    t["delete", "deleted"] = Rule("same")
    return t


RULES: dict[tuple[Action, str], Rule] = _table()


BODY_GONE = Rule("conflict", why="the message's body has been deleted (queue delete or "
                                 "retention): there is nothing left to deliver")


def decide(action: Action, state: str, *, dead_lettered: bool = False,
           body_held: bool = True) -> Rule:
    """The rule for ``action`` on a recipient in ``state`` (``dead_lettered``: finalised
    by the executor's dead-letter handler, which only ``requeue`` cares about;
    ``body_held``: the message's body is still stored — no job is queued without it)."""
    if action == "requeue" and state == "bounced":
        if not dead_lettered:
            return Rule("conflict", why="not a dead letter: the recipient bounced on its own")
        rule = Rule("change", "queued", publish=True)
    else:
        rule = RULES[action, state]
    if rule.publish and not body_held:
        return BODY_GONE
    return rule


def retry_all_states() -> tuple[str, ...]:
    """What ``retry --all`` (``postqueue -f``) retries: the deferred recipients."""
    return ("deferred",)
