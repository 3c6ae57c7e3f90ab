"""Job schema version 2 (queue control): ``generation``, compatible with version 1."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import orjson
import pytest
from pydantic import ValidationError

from services.ingest.publish_outbox import job_body
from shared.schemas import Job

V1 = {"v": 1, "job_id": str(uuid.uuid4()), "message_id": str(uuid.uuid4()),
      "recipient": "bob@example.org", "sender": "a@example.net",
      "arrival": "2026-12-06T00:00:00+00:00", "size": 3}


def test_a_version_1_job_is_generation_0_and_is_written_back_as_version_1() -> None:
    job = Job.from_json(orjson.dumps(V1))
    assert job.generation == 0
    out = orjson.loads(job.to_json())
    assert out["v"] == 1 and "generation" not in out


def test_a_later_generation_is_version_2_both_ways() -> None:
    job = Job.from_json(orjson.dumps({**V1, "v": 2, "generation": 3}))
    assert job.generation == 3
    assert orjson.loads(job.model_copy(update={"attempt": 1}).to_json())["v"] == 2
    body = orjson.loads(job_body(
        job_id=uuid.uuid4(), message_id=uuid.uuid4(), recipient="bob@example.org",
        sender="", envid=None, ret=None, notify=["NEVER"], arrival=datetime.now(UTC), size=1,
        body=b"x", inline_limit=10, generation=2))
    assert (body["v"], body["generation"]) == (2, 2)
    assert Job.model_validate(body).generation == 2


def test_version_1_cannot_carry_a_generation() -> None:
    with pytest.raises(ValidationError):
        Job.from_json(orjson.dumps({**V1, "generation": 1}))
    with pytest.raises(ValidationError):
        Job.from_json(orjson.dumps({**V1, "v": 3}))
