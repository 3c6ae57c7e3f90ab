"""The queue-control table: every (action, state) has a rule, and the rules are the ones
an operator of Postfix or Exim expects."""

from __future__ import annotations

import pytest

from services.ingest.queue_rules import ACTIONS, FINAL, RULES, STATES, WAITING, decide
from services.ingest.routes.messages import STATES as API_STATES


def test_every_action_and_state_has_a_rule() -> None:
    assert {(a, s) for a in ACTIONS for s in STATES} == set(RULES)
    assert set(API_STATES) == set(STATES)


@pytest.mark.parametrize("state", FINAL)
@pytest.mark.parametrize("action", ["retry", "hold", "release", "delete_bounce"])
def test_final_recipients_are_a_conflict(action: str, state: str) -> None:
    rule = decide(action, state)  # type: ignore[arg-type]
    assert rule.verdict == "conflict"
    assert "final" in rule.why


@pytest.mark.parametrize("action", ACTIONS)
def test_a_running_recipient_is_left_to_its_attempt(action: str) -> None:
    assert decide(action, "running").verdict == "conflict"


@pytest.mark.parametrize("state", WAITING)
def test_waiting_recipients(state: str) -> None:
    assert decide("retry", state) == decide("release", "on_hold")
    assert decide("retry", state).to == "queued" and decide("retry", state).publish
    assert decide("hold", state).to == "on_hold" and not decide("hold", state).publish
    assert decide("release", state).verdict == "same"  # not held: nothing to release
    assert decide("delete", state).to == "deleted"
    assert decide("delete_bounce", state).to == "bounced"
    assert decide("requeue", state).verdict == "conflict"


def test_held_recipients() -> None:
    assert decide("hold", "on_hold").verdict == "same"  # idempotent
    assert decide("retry", "on_hold").verdict == "conflict"  # held means held
    assert decide("release", "on_hold").to == "queued"
    assert decide("delete", "on_hold").to == "deleted"


def test_deleting_twice_is_the_same_and_the_states_it_leaves_are_final() -> None:
    assert decide("delete", "deleted").verdict == "same"
    assert decide("delete", "delivered").verdict == "conflict"
    for action in ACTIONS:
        for state in STATES:
            rule = decide(action, state)
            if rule.verdict == "change":
                assert rule.to in (*WAITING, "on_hold", *FINAL)
                assert rule.publish == (rule.to == "queued")


def test_requeue_only_takes_dead_letters() -> None:
    assert decide("requeue", "bounced", dead_lettered=True).to == "queued"
    assert decide("requeue", "bounced", dead_lettered=True).publish
    assert decide("requeue", "bounced").verdict == "conflict"
    assert decide("requeue", "delivered", dead_lettered=True).verdict == "conflict"


@pytest.mark.parametrize(("action", "state", "dead"), [
    ("requeue", "bounced", True), ("retry", "deferred", False), ("release", "on_hold", False)])
def test_nothing_is_queued_once_the_body_is_deleted(action: str, state: str, dead: bool) -> None:
    assert decide(action, state, dead_lettered=dead).publish  # type: ignore[arg-type]
    rule = decide(action, state, dead_lettered=dead, body_held=False)  # type: ignore[arg-type]
    assert rule.verdict == "conflict" and "body has been deleted" in rule.why
    # what queues nothing still applies (a held recipient of a bodiless message is deleted)
    assert decide("delete", "on_hold", body_held=False).verdict == "change"
