"""Jobs, accounts, policy settings and run results as the executor receives them.

Accounts and settings are built from the policy API's JSON (the contract), so these
tests keep meaning the same thing whichever module parses that JSON.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from services.executor.repo import Claim, RecipientSnapshot, RunRow
from services.executor.sandbox.runio import LaunchError, RunResult
from shared.contract import Account, PolicySettings
from shared.schemas import Job

RECIPIENT = "robin@example.org"
SENDER = "alice@example.net"


def job(*, age_s: float = 0.0, attempt: int = 0, next_program: int = 0,
        notify: list[str] | None = None, recipient: str = RECIPIENT) -> Job:
    return Job(job_id=uuid.uuid4(), message_id=uuid.uuid4(), recipient=recipient,
               sender=SENDER, attempt=attempt, next_program=next_program,
               notify=notify or ["FAILURE", "DELAY"],  # type: ignore[arg-type]
               arrival=datetime.now(UTC) - timedelta(seconds=age_s), size=100)


def account(programs: list[str] | None = None, *, uid: int = 64101, gid: int | None = None,
            shell: str = "/bin/sh", enabled: bool = True, address: str = RECIPIENT) -> Account:
    return Account.model_validate_json(orjson.dumps({
        "address": address,
        "owner": {"name": "robin", "uid": uid, "gid": uid if gid is None else gid,
                  "home": f"/home/u{uid}", "shell": shell},
        "program_delivery": {"enabled": enabled,
                             "programs": ["probe"] if programs is None else programs},
        "mailbox_delivery": False,
        "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
    }))


def settings(**patch: Any) -> PolicySettings:
    """The policy's settings document: SPEC's defaults with ``patch`` applied."""
    return PolicySettings.model_validate_json(orjson.dumps(patch))


def claim(*, warned: bool = False) -> Claim:
    return Claim(claimed=True, delay_notified_at=datetime.now(UTC) if warned else None)


def run(*, exit_status: int | None = 0, signal: int | None = None, timed_out: bool = False,
        output: bytes = b"", launch: LaunchError | None = None) -> RunResult:
    return RunResult(exit_status=exit_status, signal=signal, timed_out=timed_out, output=output,
                     output_bytes_total=len(output), duration_s=0.01, launch=launch)


def run_row(program: str = "probe", position: int = 0) -> RunRow:
    return RunRow(attempt=0, program=program, position=position, exit_status=0, signal=None,
                  timed_out=False, output_excerpt="", duration_ms=10,
                  started_at=datetime.now(UTC))


def snapshot(j: Job, *, state: str, status: str | None, diagnostic: str | None, attempts: int,
             last_run: dict[str, Any] | None = None) -> RecipientSnapshot:
    """A recipient row as recorded (``repo.snapshot`` reads it back)."""
    return RecipientSnapshot(job_id=j.job_id, message_id=j.message_id, address=j.recipient,
                             orcpt=j.orcpt, notify=None, state=state, status=status,
                             diagnostic=diagnostic, attempts=attempts, next_program=0,
                             delay_notified_at=None, updated_at=datetime.now(UTC),
                             last_run=last_run)
