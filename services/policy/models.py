"""Request and response bodies of the policy API (pydantic, strict: no silent coercion)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from services.policy.validation import address_problem, path_problem

MAX_PROGRAM_ENTRIES = 64
MAX_PROGRAM_ENTRY_CHARS = 4096
MAX_UID = 2**32 - 2  # (uid_t)-1 is "no change" to setuid(2)


def _absolute(path: str) -> str:
    problem = path_problem(path)
    if problem:
        raise ValueError(f"{path!r} {problem}")
    return path


def _address(value: str) -> str:
    problem = address_problem(value)
    if problem:
        raise ValueError(f"invalid address {value!r}: {problem}")
    return value.lower()


def _program_entry(entry: str) -> str:
    if not entry:
        raise ValueError("program entries must not be empty")
    if any(c in entry for c in "\x00\r\n"):
        raise ValueError("program entries must not contain NUL, CR or LF; give one program per entry")
    if len(entry) > MAX_PROGRAM_ENTRY_CHARS:
        raise ValueError(f"program entries are at most {MAX_PROGRAM_ENTRY_CHARS} characters")
    return entry


AbsPath = Annotated[str, AfterValidator(_absolute)]
Address = Annotated[str, AfterValidator(_address)]
ProgramEntry = Annotated[str, AfterValidator(_program_entry)]
Id = Annotated[int, Field(ge=0, le=MAX_UID)]
PositiveId = Annotated[int, Field(gt=0, le=MAX_UID)]

DEFAULT_SHELLS = ["/bin/sh", "/bin/csh", "/bin/ksh", "/usr/bin/sh", "/usr/bin/csh", "/usr/bin/ksh"]


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


# --- settings -------------------------------------------------------------------------


class SafeUser(Strict):
    uid: PositiveId
    gid: PositiveId


class PolicySettings(Strict):
    """The effective settings (SPEC §2 policy); defaults are SPEC's."""

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
    ] = Field(default_factory=lambda: [71, 75])
    dsn_include_output: bool = True
    delay_warning_after_s: Annotated[int, Field(ge=1)] = 14400
    max_queue_lifetime_s: Annotated[int, Field(ge=1)] = 432000
    postmaster: Address | None = None

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


class SettingsPatch(Strict):
    """Any subset of the settings fields; null resets a nullable field (safe_user, postmaster)."""

    mode: Literal["secure", "insecure"] | None = None
    suspended: bool | None = None
    safe_user: SafeUser | None = None
    valid_shells: Annotated[list[AbsPath], Field(max_length=256)] | None = None
    program_timeout_s: int | None = None
    max_output_bytes: int | None = None
    tempfail_exit_codes: list[int] | None = None
    dsn_include_output: bool | None = None
    delay_warning_after_s: int | None = None
    max_queue_lifetime_s: int | None = None
    postmaster: Address | None = None


class Status(BaseModel):
    program_delivery: Literal["enabled", "disabled", "suspended"]
    mode: Literal["secure", "insecure"]
    suspended: bool
    programs: int
    accounts: int


# --- programs --------------------------------------------------------------------------


Network = Literal["none", "egress"]
MAX_DESCRIPTION_CHARS = 2000


class ProgramMeta(BaseModel):
    name: str
    sha256: str
    size: int
    interpreter: bool
    registered_by: str
    registered_at: datetime
    updated_at: datetime
    description: str | None = None
    network: Network = "none"


class ProgramPatch(Strict):
    """``PATCH /v1/programs/{name}``: either field, unknown ones refused; null clears the
    description. ``network`` is what the program may reach when it runs: ``none`` (no
    network at all) or ``egress`` (outside addresses only, the control plane dropped)."""

    description: Annotated[
        str, Field(max_length=MAX_DESCRIPTION_CHARS, pattern=r"^[^\x00-\x08\x0b-\x1f\x7f]*$")
    ] | None = None
    network: Network | None = None

    @model_validator(mode="after")
    def _network_not_null(self) -> ProgramPatch:
        if "network" in self.model_fields_set and self.network is None:
            raise ValueError("network must be 'none' or 'egress', not null")
        return self


class ProgramList(BaseModel):
    items: list[ProgramMeta]
    count: int


# --- accounts --------------------------------------------------------------------------


class Owner(Strict):
    name: Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f:]+$")]
    uid: Id
    gid: Id
    home: AbsPath
    shell: AbsPath


class ProgramDelivery(Strict):
    enabled: bool = False
    programs: Annotated[list[ProgramEntry], Field(max_length=MAX_PROGRAM_ENTRIES)] = Field(
        default_factory=list
    )


class AccountIn(Strict):
    owner: Owner
    program_delivery: ProgramDelivery = Field(default_factory=ProgramDelivery)
    mailbox_delivery: bool = True


class Account(BaseModel):
    address: str
    owner: Owner
    program_delivery: ProgramDelivery
    mailbox_delivery: bool
    created_at: datetime
    updated_at: datetime


class AccountWritten(Account):
    warnings: list[str]


class AccountPage(BaseModel):
    items: list[Account]
    next_cursor: str | None


class ProgramsWritten(ProgramDelivery):
    address: str
    warnings: list[str]


# --- tokens ----------------------------------------------------------------------------


class TokenIn(Strict):
    label: Annotated[str, Field(max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")] | None = None


class TokenMeta(BaseModel):
    id: UUID
    account: str | None
    role: str
    label: str | None
    created_at: datetime
    created_by: str
    revoked_at: datetime | None
    last_used_at: datetime | None


class TokenIssued(TokenMeta):
    token: str = Field(description="the bearer token; shown only in this response")


class TokenList(BaseModel):
    items: list[TokenMeta]


# --- audit -----------------------------------------------------------------------------


class AuditEntry(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    target_kind: str
    target: str
    old: dict | None  # type: ignore[type-arg]
    new: dict | None  # type: ignore[type-arg]


class AuditPage(BaseModel):
    items: list[AuditEntry]
    next_cursor: str | None
