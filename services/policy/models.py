"""Request and response bodies of the policy API (pydantic, strict: no silent coercion).

The documents policy serves to its readers (settings, status, program metadata,
accounts) are the contract in :mod:`shared.contract`, re-exported here; this module adds
the request bodies (unknown fields refused) and the listings only admins read.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.contract import (
    AbsPath,
    Account,
    AccountAddress,
    Owner,
    PolicySettings,
    ProgramDelivery,
    ProgramMeta,
    SafeUser,
    Status,
)
from shared.programs import Network

__all__ = [
    "Account", "AccountIn", "AccountPage", "AccountWritten", "AuditEntry", "AuditPage",
    "Network", "Owner", "OwnerIn", "PolicySettings", "ProgramDelivery", "ProgramDeliveryIn",
    "ProgramList", "ProgramMeta", "ProgramPatch", "ProgramsWritten", "SafeUser", "SafeUserIn",
    "SessionIn", "SessionOut", "SettingsPatch", "Status", "TokenIn", "TokenIssued", "TokenList", "TokenMeta",
]


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


FORBID_UNKNOWN = ConfigDict(extra="forbid")  # a contract model as a request body


# --- settings -------------------------------------------------------------------------


class SafeUserIn(SafeUser):
    model_config = FORBID_UNKNOWN


class SettingsPatch(Strict):
    """Any subset of the settings fields; null resets a nullable field (safe_user, postmaster)."""

    mode: Literal["secure", "insecure"] | None = None
    suspended: bool | None = None
    safe_user: SafeUserIn | None = None
    valid_shells: Annotated[list[AbsPath], Field(max_length=256)] | None = None
    program_timeout_s: int | None = None
    max_output_bytes: int | None = None
    tempfail_exit_codes: list[int] | None = None
    dsn_include_output: bool | None = None
    delay_warning_after_s: int | None = None
    max_queue_lifetime_s: int | None = None
    postmaster: AccountAddress | None = None
    record_retention_days: int | None = None


# --- programs --------------------------------------------------------------------------


MAX_DESCRIPTION_CHARS = 2000


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


class OwnerIn(Owner):
    model_config = FORBID_UNKNOWN


class ProgramDeliveryIn(ProgramDelivery):
    model_config = FORBID_UNKNOWN


class AccountIn(Strict):
    owner: OwnerIn
    program_delivery: ProgramDeliveryIn = Field(default_factory=ProgramDeliveryIn)
    mailbox_delivery: bool = True


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


# --- console sessions ------------------------------------------------------------------

MIN_IDLE_TIMEOUT_S = 60
MAX_IDLE_TIMEOUT_S = 86400
DEFAULT_IDLE_TIMEOUT_S = 1800


class SessionIn(Strict):
    """``POST /v1/sessions``: how long the session lives without being used."""

    idle_timeout_s: Annotated[
        int, Field(ge=MIN_IDLE_TIMEOUT_S, le=MAX_IDLE_TIMEOUT_S)
    ] = DEFAULT_IDLE_TIMEOUT_S


class SessionOut(BaseModel):
    session: str = Field(description="the session id (only POST answers with a new one)")
    role: Literal["admin", "user"]
    name: str
    account: str | None
    expires_at: datetime = Field(description="when the session ends unless used before")
    idle_timeout_s: int


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
