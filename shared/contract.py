"""The policy contract: the documents the policy API serves, defined once (SPEC §2 policy).

Policy validates what it stores and serialises what it serves with these models
(``services/policy/models.py`` adds the request bodies and its own listings); the
executor and the notifier parse the answers with the same models through
:mod:`shared.policy_client`. A field added here exists for policy and every reader at once.

- Strict types: no silent coercion (``"60"`` is not 60, ``true`` is not 1).
- Unknown fields are ignored: a reader may be older than the policy answering it (a
  rolling upgrade), and a document with a field it doesn't know is one it can still use.
  Request bodies refuse unknown fields (policy's ``*In`` models set ``extra="forbid"``).
- Frozen: one parsed answer is shared by every delivery that hits the client's cache.

Account addresses follow the one account-key grammar of :mod:`shared.addresses`
(:func:`~shared.addresses.normalize_account`); program names and networks that of
:mod:`shared.programs`.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from shared.addresses import normalize_account
from shared.programs import Network
from shared.status import DEFAULT_TEMPFAIL_EXIT_CODES

MAX_UID = 2**32 - 2  # (uid_t)-1 is "no change" to setuid(2)
MAX_PATH_CHARS = 4096
MAX_PROGRAM_ENTRIES = 64
MAX_PROGRAM_ENTRY_CHARS = 4096
DEFAULT_SHELLS = ("/bin/sh", "/bin/csh", "/bin/ksh", "/usr/bin/sh", "/usr/bin/csh", "/usr/bin/ksh")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def path_problem(path: str) -> str | None:
    """Why ``path`` is not a usable absolute path (home, shell), or None."""
    if not path.startswith("/"):
        return "must be an absolute path (starting with '/')"
    if _CONTROL.search(path):
        return "must not contain control characters (NUL, CR, LF ...)"
    if len(path) > MAX_PATH_CHARS:
        return f"is longer than {MAX_PATH_CHARS} characters"
    return None


def _absolute(path: str) -> str:
    problem = path_problem(path)
    if problem:
        raise ValueError(f"{path!r} {problem}")
    return path


def _program_entry(entry: str) -> str:
    if not entry:
        raise ValueError("program entries must not be empty")
    if any(c in entry for c in "\x00\r\n"):
        raise ValueError("program entries must not contain NUL, CR or LF; give one program per entry")
    if len(entry) > MAX_PROGRAM_ENTRY_CHARS:
        raise ValueError(f"program entries are at most {MAX_PROGRAM_ENTRY_CHARS} characters")
    return entry


AbsPath = Annotated[str, AfterValidator(_absolute)]
# An address as an account key: validated and normalised (lower-cased) on the way in.
AccountAddress = Annotated[str, AfterValidator(normalize_account)]
ProgramEntry = Annotated[str, AfterValidator(_program_entry)]
Id = Annotated[int, Field(ge=0, le=MAX_UID)]
PositiveId = Annotated[int, Field(gt=0, le=MAX_UID)]


class Contract(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


# --- settings: GET /v1/settings ----------------------------------------------------------


class SafeUser(Contract):
    uid: PositiveId
    gid: PositiveId


class PolicySettings(Contract):
    """The effective settings; the defaults are SPEC's."""

    mode: Literal["secure", "insecure"] = "secure"
    suspended: bool = False
    safe_user: SafeUser | None = None
    valid_shells: Annotated[list[AbsPath], Field(max_length=256)] = Field(
        default_factory=lambda: list(DEFAULT_SHELLS)
    )
    program_timeout_s: Annotated[int, Field(ge=1, le=86400)] = 60
    max_output_bytes: Annotated[int, Field(ge=1, le=16 * 1024 * 1024)] = 65536
    tempfail_exit_codes: Annotated[
        list[Annotated[int, Field(ge=1, le=255)]], Field(max_length=255)
    ] = Field(default_factory=lambda: list(DEFAULT_TEMPFAIL_EXIT_CODES))
    dsn_include_output: bool = True
    delay_warning_after_s: Annotated[int, Field(ge=1)] = 14400
    max_queue_lifetime_s: Annotated[int, Field(ge=1)] = 432000
    postmaster: AccountAddress | None = None
    # envelopes, per-recipient outcomes, program runs and notifications: deleted this
    # many days after the message became final (docs/admin-guide.md, retention)
    record_retention_days: Annotated[int, Field(ge=1, le=36500)] = 30

    @model_validator(mode="after")
    def _lifetime_after_warning(self) -> PolicySettings:
        if self.max_queue_lifetime_s <= self.delay_warning_after_s:
            raise ValueError(
                f"max_queue_lifetime_s ({self.max_queue_lifetime_s}) must be greater than "
                f"delay_warning_after_s ({self.delay_warning_after_s})"
            )
        if len(set(self.tempfail_exit_codes)) != len(self.tempfail_exit_codes):
            raise ValueError("tempfail_exit_codes: list each exit code once")
        return self


# --- status: GET /v1/status -------------------------------------------------------------


class Status(Contract):
    program_delivery: Literal["enabled", "disabled", "suspended"]
    mode: Literal["secure", "insecure"]
    suspended: bool
    programs: int
    accounts: int | None = None  # None in the answer to a user token (not its business)


# --- trusted programs: GET /v1/programs/{name} ------------------------------------------


class ProgramMeta(Contract):
    name: str
    sha256: str
    size: int
    interpreter: bool
    registered_by: str
    registered_at: datetime
    updated_at: datetime
    description: str | None = None
    # What a run may reach (SPEC §3 rule 6); a value outside shared.programs.Network is
    # refused, never guessed.
    network: Network = "none"


# --- accounts: GET /v1/accounts/{address} -----------------------------------------------


class Owner(Contract):
    name: Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f:]+$")]
    uid: Id
    gid: Id
    home: AbsPath
    shell: AbsPath


class ProgramDelivery(Contract):
    enabled: bool = False
    programs: Annotated[list[ProgramEntry], Field(max_length=MAX_PROGRAM_ENTRIES)] = Field(
        default_factory=list
    )


class Account(Contract):
    address: str  # the account key (shared.addresses.normalize_account)
    owner: Owner
    program_delivery: ProgramDelivery
    mailbox_delivery: bool
    created_at: datetime
    updated_at: datetime

    # The executor's shorthands (what a delivery reads of an account).
    @property
    def uid(self) -> int:
        return self.owner.uid

    @property
    def gid(self) -> int:
        return self.owner.gid

    @property
    def home(self) -> str:
        return self.owner.home

    @property
    def shell(self) -> str:
        return self.owner.shell

    @property
    def program_delivery_enabled(self) -> bool:
        return self.program_delivery.enabled

    @property
    def programs(self) -> list[str]:
        return self.program_delivery.programs
