"""Job and event bodies exchanged over RabbitMQ (docs/internals.md), validated strictly.

Why strict: these bodies cross a trust boundary twice (ingest → executor → notifier),
and the notifier copies their fields into mail headers. A body that is malformed,
carries an unknown field or a schema version we don't know, or an address with CR/LF
is refused here (the consumer dead-letters it) instead of half-working later.
Free text (diagnostics, program output, notice details) is accepted as is: the
renderer neutralises it, because a program's output is whatever the program wrote.

Field names are exactly those of docs/internals.md; other services import these models.
Serialise with ``to_json()`` (orjson, bytes) and parse with ``Model.from_json(data)``.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, Self
from uuid import UUID

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    field_validator,
    model_validator,
)

from shared.addresses import parse_recipient
from shared.status import STATUS_RE, NoticeReason

SCHEMA_VERSION: Final = 1
# Jobs of version 2 carry ``generation`` (queue control, issue 16); a version-1 job is
# generation 0. Writers emit version 1 while the generation is 0, so executors that only
# know version 1 keep working during an upgrade (upgrade the executors first).
JOB_SCHEMA_VERSIONS: Final = (1, 2)

MAX_ENVID_LEN: Final = 100
_FORBIDDEN_CHARS: Final = re.compile(r"[\x00-\x1f\x7f]")

Ret = Literal["FULL", "HDRS"]
NotifyKeyword = Literal["NEVER", "SUCCESS", "FAILURE", "DELAY"]
EventKind = Literal["bounce", "delayed", "delivered", "admin_notice"]
Action = Literal["failed", "delayed", "delivered"]
DEFAULT_NOTIFY: Final[tuple[NotifyKeyword, ...]] = ("FAILURE", "DELAY")

# Which per-recipient actions an event kind may carry, and which status classes an action
# may carry (Postfix reports queue-lifetime expiry as Action: failed, Status: 4.4.7).
KIND_ACTIONS: Final[dict[str, frozenset[str]]] = {
    "bounce": frozenset({"failed"}),
    "delayed": frozenset({"delayed"}),
    "delivered": frozenset({"delivered"}),
    "admin_notice": frozenset({"failed", "delayed", "delivered"}),
}
ACTION_CLASSES: Final[dict[str, frozenset[str]]] = {
    "failed": frozenset({"4", "5"}),
    "delayed": frozenset({"4"}),
    "delivered": frozenset({"2"}),
}


def validate_address(value: str) -> str:
    """A mailbox exactly as ingest accepts it (:func:`shared.addresses.parse_recipient`).

    Why the same rules: an event must never be dead-lettered for an address ingest took.
    Angle brackets are refused here: bodies carry the bare ``local@domain``.
    """
    if not isinstance(value, str):
        raise ValueError("address must be a string")
    if value.startswith("<") or value.endswith(">"):
        raise ValueError("address must be bare local@domain, without angle brackets")
    parse_recipient(value)
    return value


def validate_sender(value: str) -> str:
    """Like :func:`validate_address`, but ``""`` (the null reverse-path ``<>``) is allowed."""
    if value == "":
        return value
    return validate_address(value)


def _validate_one_line(value: str | None) -> str | None:
    if value is not None and _FORBIDDEN_CHARS.search(value):
        raise ValueError("must not contain control characters (CR, LF, NUL ...)")
    return value


def _validate_envid(value: str | None) -> str | None:
    """RFC 3461 ENVID: at most 100 printable ASCII characters (after xtext decoding)."""
    if value is None:
        return None
    if len(value) > MAX_ENVID_LEN:
        raise ValueError(f"envid longer than {MAX_ENVID_LEN} characters")
    if not re.fullmatch(r"[\x20-\x7e]*", value):
        raise ValueError("envid must be printable ASCII")
    return value


def _validate_status(value: str) -> str:
    if not STATUS_RE.match(value):
        raise ValueError(r"status must match ^[245]\.\d{1,3}\.\d{1,3}$")
    return value


def _validate_notify(value: list[NotifyKeyword]) -> list[NotifyKeyword]:
    if not value:
        raise ValueError("notify must not be empty (use NEVER)")
    if len(set(value)) != len(value):
        raise ValueError("notify keywords must not repeat")
    if "NEVER" in value and len(value) > 1:
        raise ValueError("NEVER must appear alone")
    return value


def _aware(value: datetime) -> datetime:
    """Naive datetimes are taken as UTC so every date renders with an explicit zone."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


Address = Annotated[str, AfterValidator(validate_address)]
Sender = Annotated[str, AfterValidator(validate_sender)]
Status = Annotated[str, AfterValidator(_validate_status)]
Envid = Annotated[str | None, AfterValidator(_validate_envid)]
OneLine = Annotated[str | None, Field(max_length=1000), AfterValidator(_validate_one_line)]
Notify = Annotated[list[NotifyKeyword], AfterValidator(_validate_notify)]
Timestamp = Annotated[datetime, AfterValidator(_aware)]
NonNegative = Annotated[StrictInt, Field(ge=0)]


class _Contract(BaseModel):
    """Base: unknown fields refused, immutable, JSON through orjson."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"))

    @classmethod
    def from_json(cls, data: bytes | bytearray | memoryview | str) -> Self:
        """Parse and validate; raises ``pydantic.ValidationError`` (or ``ValueError``)."""
        try:
            obj: Any = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"not JSON: {exc}") from exc
        return cls.model_validate(obj)


class Job(_Contract):
    """One (message, recipient) delivery job on the ``deliveries`` queue."""

    v: Literal[1, 2] = SCHEMA_VERSION
    job_id: UUID
    message_id: UUID
    recipient: Address
    # the recipient row's generation when this copy was published (version 2; 0 in
    # version 1): the executor claims the job only while the row still has it
    generation: NonNegative = 0
    orcpt: OneLine = None
    attempt: NonNegative = 0
    next_program: NonNegative = 0
    sender: Sender
    envid: Envid = None
    ret: Ret | None = None
    notify: Notify = Field(default_factory=lambda: list(DEFAULT_NOTIFY))
    arrival: Timestamp
    size: NonNegative
    body_b64: str | None = None

    @field_validator("body_b64")
    @classmethod
    def _check_base64(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                base64.b64decode(value, validate=True)
            except binascii.Error as exc:
                raise ValueError(f"body_b64 is not valid base64: {exc}") from exc
        return value

    def body(self) -> bytes | None:
        """The inline message bytes, or None when ingest left them in ``mail.messages``."""
        return None if self.body_b64 is None else base64.b64decode(self.body_b64)

    def to_json(self) -> bytes:
        """``body_b64`` is absent (not null) when the body isn't inline (docs/internals.md)."""
        data = self.model_dump(mode="json")
        if data["body_b64"] is None:
            del data["body_b64"]
        if data["generation"] == 0:  # what a version-1 reader understands
            del data["generation"]
            data["v"] = 1
        else:
            data["v"] = 2
        return orjson.dumps(data)

    @model_validator(mode="after")
    def _generation_needs_v2(self) -> Self:
        if self.v == 1 and self.generation != 0:
            raise ValueError("generation needs job schema version 2")
        return self


class EventEnvelope(_Contract):
    sender: Sender
    envid: Envid = None
    ret: Ret | None = None
    notify: Notify = Field(default_factory=lambda: list(DEFAULT_NOTIFY))
    arrival_date: Timestamp


class EventRecipient(_Contract):
    """One recipient's result. ``diagnostic`` and ``output_excerpt`` are free text."""

    address: Address
    orcpt: OneLine = None
    action: Action
    status: Status
    diagnostic: str = ""
    last_attempt: Timestamp
    will_retry_until: Timestamp | None = None
    program: str | None = Field(default=None, max_length=4096)
    exit_status: Annotated[StrictInt, Field(ge=0, le=255)] | None = None
    signal: Annotated[StrictInt, Field(ge=1, le=128)] | None = None
    timed_out: StrictBool = False
    output_excerpt: str = ""

    @field_validator("output_excerpt", "diagnostic", mode="before")
    @classmethod
    def _none_is_empty(cls, value: object) -> object:
        return "" if value is None else value

    @model_validator(mode="after")
    def _status_fits_action(self) -> Self:
        if self.status[0] not in ACTION_CLASSES[self.action]:
            raise ValueError(f"status {self.status} does not fit action {self.action}")
        return self


class Notice(_Contract):
    reason: NoticeReason
    account: str | None = Field(default=None, max_length=1000)
    detail: str = ""


class Event(_Contract):
    """An executor → notifier event on the ``events`` exchange (routing key = ``kind``).

    ``message_id`` may be null only in ``admin_notice`` events (a corrupt job may not
    say which message it belonged to). ``notice`` is present exactly in ``admin_notice``.
    """

    v: Literal[1] = SCHEMA_VERSION
    kind: EventKind
    event_id: UUID
    message_id: UUID | None
    occurred_at: Timestamp
    envelope: EventEnvelope
    recipients: list[EventRecipient] = Field(max_length=10000)
    notice: Notice | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.kind == "admin_notice":
            if self.notice is None:
                raise ValueError("admin_notice events need a notice")
        else:
            if self.notice is not None:
                raise ValueError(f"{self.kind} events carry no notice")
            if self.message_id is None:
                raise ValueError(f"{self.kind} events need a message_id")
            if not self.recipients:
                raise ValueError(f"{self.kind} events need at least one recipient")
        allowed = KIND_ACTIONS[self.kind]
        for rcpt in self.recipients:
            if rcpt.action not in allowed:
                raise ValueError(f"{self.kind} event cannot carry action {rcpt.action}")
        return self


class EventRef(BaseModel):
    """Just enough of an event to log it when the full body fails validation."""

    model_config = ConfigDict(extra="ignore")

    event_id: str | None = None
    kind: str | None = None
    message_id: str | None = None


__all__ = [
    "DEFAULT_NOTIFY",
    "SCHEMA_VERSION",
    "Action",
    "Event",
    "EventEnvelope",
    "EventKind",
    "EventRecipient",
    "EventRef",
    "Job",
    "Notice",
    "NotifyKeyword",
    "Ret",
    "validate_address",
    "validate_sender",
]
