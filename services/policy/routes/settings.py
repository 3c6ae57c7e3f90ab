"""Delivery settings (mode, suspension, safe user, shells, limits) and the status summary."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import ValidationError

from services.policy import repo
from services.policy import tables as t
from services.policy.deps import (
    AdminDep,
    BrokerDep,
    ReaderDep,
    SessionDep,
    StatusReaderDep,
    transaction,
)
from services.policy.errors import Unprocessable
from services.policy.events import announce
from services.policy.models import PolicySettings, SettingsPatch, Status

router = APIRouter(prefix="/v1", tags=["settings"])


def describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


@router.get("/settings", response_model=PolicySettings)
async def get_settings_(principal: ReaderDep, session: SessionDep) -> PolicySettings:
    async with transaction(session):
        return await repo.load_settings(session)


@router.patch("/settings", response_model=PolicySettings)
async def patch_settings(
    patch: SettingsPatch, principal: AdminDep, session: SessionDep, broker: BrokerDep
) -> PolicySettings:
    changes = patch.model_dump(mode="json", exclude_unset=True)
    async with transaction(session):
        data = await repo.settings_data(session, for_update=True)
        current = repo.effective(data)
        before = current.model_dump(mode="json")
        try:
            updated = PolicySettings.model_validate({**before, **changes})
        except ValidationError as exc:
            raise Unprocessable(describe(exc)) from None
        after = updated.model_dump(mode="json")
        changed = sorted(k for k in changes if before[k] != after[k])
        if not changed:
            return current
        stored: dict[str, Any] = {k: v for k, v in data.items() if k in PolicySettings.model_fields}
        stored.update({k: after[k] for k in changes})
        await repo.save_settings(session, stored, principal.name)
        await repo.add_audit(
            session, actor=principal.name, action="patch", kind="settings", target="settings",
            old={k: before[k] for k in changed}, new={k: after[k] for k in changed},
        )
    await announce(broker, what="settings", key=None, action="patch",
                   suspended=updated.suspended)
    return updated


@router.get("/status", response_model=Status)
async def get_status(principal: StatusReaderDep, session: SessionDep) -> Status:
    """Admin, service and user; a user is not told how many accounts there are."""
    async with transaction(session):
        current = await repo.load_settings(session)
        programs = await repo.count(session, t.programs)
        accounts = await repo.count(session, t.accounts)
    state: Literal["enabled", "disabled", "suspended"]
    if current.suspended:
        state = "suspended"
    elif programs > 0 or current.mode == "insecure":
        state = "enabled"
    else:
        state = "disabled"
    return Status(program_delivery=state, mode=current.mode, suspended=current.suspended,
                  programs=programs, accounts=None if principal.role == "user" else accounts)
