"""The audit log: who changed which program, setting, account or token, when, old → new."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query

from services.policy import repo
from services.policy.deps import AdminDep, SessionDep, transaction
from services.policy.models import AuditEntry, AuditPage
from services.policy.validation import decode_cursor, encode_cursor
from shared.addresses import AddressError, normalize_account

router = APIRouter(prefix="/v1", tags=["audit"])


@router.get("/audit", response_model=AuditPage)
async def list_audit(
    principal: AdminDep,
    session: SessionDep,
    limit: int = Query(100, ge=1, le=500),
    cursor: str | None = Query(None, description="next_cursor of the previous page"),
    target: str | None = Query(None, max_length=320, pattern=r"^[^\x00-\x1f\x7f]*$",
                               description="only entries about this program/account/token"),
    kind: Literal["program", "settings", "account", "token"] | None = Query(None),
) -> AuditPage:
    before = decode_cursor(cursor, "before", int) if cursor else None
    if target is not None and "@" in target:
        try:
            target = normalize_account(target)
        except AddressError:
            pass  # no account has this address: the filter matches nothing of one

    async with transaction(session):
        rows = await repo.list_audit(session, before=before, limit=limit, target=target,
                                     kind=kind)
    items = [AuditEntry.model_validate(dict(r)) for r in rows]
    next_cursor = encode_cursor({"before": items[-1].id}) if len(items) == limit else None
    return AuditPage(items=items, next_cursor=next_cursor)
