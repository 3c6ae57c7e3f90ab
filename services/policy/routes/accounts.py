"""Accounts: owner, program list, mailbox flag; the per-account program list for its user."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Response, status
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncSession

from services.policy import repo
from services.policy.deps import (
    AccountReaderDep,
    AdminDep,
    BrokerDep,
    ProgramsReaderDep,
    ProgramsWriterDep,
    SessionDep,
    ensure_own_account,
    transaction,
)
from services.policy.events import announce
from services.policy.models import (
    Account,
    AccountIn,
    AccountPage,
    AccountWritten,
    Owner,
    PolicySettings,
    ProgramDelivery,
    ProgramDeliveryIn,
    ProgramsWritten,
)
from services.policy.validation import (
    account_key,
    check_program_entries,
    decode_cursor,
    encode_cursor,
)
from shared.auth import Principal, forget_token
from shared.errors import NotFound

router = APIRouter(prefix="/v1/accounts", tags=["accounts"])


def to_account(row: RowMapping) -> Account:
    return Account(
        address=row["address"],
        owner=Owner.model_construct(name=row["owner_name"], uid=row["uid"], gid=row["gid"],
                                    home=row["home"], shell=row["shell"]),
        program_delivery=ProgramDelivery.model_construct(
            enabled=row["program_delivery_enabled"], programs=list(row["programs"])),
        mailbox_delivery=row["mailbox_delivery"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def audit_view(row: RowMapping | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return to_account(row).model_dump(mode="json", exclude={"address", "created_at", "updated_at"})


def not_found(address: str) -> NotFound:
    return NotFound(f"no account {address!r}; create it with PUT /v1/accounts/{address}",
                    code="no_such_account")


async def read_own_account(address: str, principal: Principal, session: AsyncSession) -> RowMapping:
    """The row of the account ``address`` names, read for ``principal``: 400 for an address
    no account can have, 403 for someone else's account, 404 when there is none."""
    key = account_key(address)
    ensure_own_account(principal, key)
    async with transaction(session):
        row = await repo.get_account(session, key)
    if row is None:
        raise not_found(key)
    return row


async def program_warnings(
    session: AsyncSession, settings: PolicySettings, enabled: bool, programs: list[str]
) -> list[str]:
    """What will make deliveries fail later (the guide accepts these entries anyway)."""
    warnings: list[str] = []
    if enabled and not programs:
        warnings.append("program delivery is enabled but no program is listed")
    if settings.mode == "insecure":
        for entry in programs:
            if not entry.startswith("/"):
                warnings.append(
                    f"{entry!r} is not an absolute path: in insecure mode deliveries to it "
                    "will fail (give e.g. /usr/local/bin/" + entry.rsplit("/", 1)[-1] + ")"
                )
        return warnings
    names = {entry.rsplit("/", 1)[-1] for entry in programs}
    known = await repo.registered(session, names)
    for entry in programs:
        base = entry.rsplit("/", 1)[-1]
        if base not in known:
            warnings.append(
                f"program {base!r} is not a registered trusted program: deliveries will fail "
                f"until an admin registers it (PUT /v1/programs/{base})"
            )
        elif base != entry:
            warnings.append(
                f"secure mode ignores the path in {entry!r}: the trusted program {base!r} runs"
            )
    return warnings


def owner_warnings(settings: PolicySettings, owner: Owner) -> list[str]:
    warnings = []
    if owner.shell not in settings.valid_shells:
        warnings.append(
            f"the owner's shell {owner.shell} is not in valid_shells: program deliveries will "
            "fail until it is added (PATCH /v1/settings)"
        )
    if owner.uid == 0 and settings.safe_user is None:
        warnings.append(
            "the owner is root (uid 0) and no safe_user is set: program deliveries will fail "
            "(programs never run as root; set safe_user with PATCH /v1/settings)"
        )
    return warnings


@router.get("", response_model=AccountPage)
async def list_accounts(
    principal: AdminDep,
    session: SessionDep,
    limit: int = Query(100, ge=1, le=500),
    cursor: str | None = Query(None, description="next_cursor of the previous page"),
    q: str | None = Query(None, max_length=320,
                          description="only addresses containing this text (any case)"),
) -> AccountPage:
    after = decode_cursor(cursor, "after", str) if cursor else None
    async with transaction(session):
        rows = await repo.list_accounts(session, after, limit, q)
    items = [to_account(r) for r in rows]
    next_cursor = encode_cursor({"after": items[-1].address}) if len(items) == limit else None
    return AccountPage(items=items, next_cursor=next_cursor)


@router.get("/{address}/programs", response_model=ProgramDelivery)
async def get_programs(
    address: str, principal: ProgramsReaderDep, session: SessionDep
) -> ProgramDelivery:
    return to_account(await read_own_account(address, principal, session)).program_delivery


@router.put("/{address}/programs", response_model=ProgramsWritten)
async def put_programs(
    address: str, body: ProgramDeliveryIn, principal: ProgramsWriterDep, session: SessionDep,
    broker: BrokerDep,
) -> ProgramsWritten:
    key = account_key(address)
    ensure_own_account(principal, key)
    check_program_entries(body.programs)
    async with transaction(session):
        old = await repo.get_account(session, key, for_update=True)
        if old is None:
            raise not_found(key)
        row = await repo.set_programs(session, key, body.enabled, body.programs)
        before = to_account(old).program_delivery.model_dump()
        await repo.add_audit(session, actor=principal.name, action="put_programs",
                             kind="account", target=key, old=before, new=body.model_dump())
        settings = await repo.load_settings(session)
        warnings = await program_warnings(session, settings, body.enabled, body.programs)
    await announce(broker, what="account", key=key, action="put", suspended=settings.suspended)
    delivery = to_account(row).program_delivery
    return ProgramsWritten(address=key, enabled=delivery.enabled, programs=delivery.programs,
                           warnings=warnings)


@router.get("/{address:raw}", response_model=Account)
async def get_account(address: str, principal: AccountReaderDep, session: SessionDep) -> Account:
    return to_account(await read_own_account(address, principal, session))


@router.put(
    "/{address:raw}",
    response_model=AccountWritten,
    responses={201: {"description": "created"}, 200: {"description": "replaced"}},
)
async def put_account(
    address: str, body: AccountIn, response: Response, principal: AdminDep, session: SessionDep,
    broker: BrokerDep,
) -> AccountWritten:
    key = account_key(address)
    check_program_entries(body.program_delivery.programs)
    fields = {
        "owner_name": body.owner.name, "uid": body.owner.uid, "gid": body.owner.gid,
        "home": body.owner.home, "shell": body.owner.shell,
        "program_delivery_enabled": body.program_delivery.enabled,
        "programs": body.program_delivery.programs,
        "mailbox_delivery": body.mailbox_delivery,
    }
    async with transaction(session):
        old = await repo.get_account(session, key, for_update=True)
        row = await repo.put_account(session, key, fields)
        await repo.add_audit(session, actor=principal.name, action="put", kind="account",
                             target=key, old=audit_view(old), new=audit_view(row))
        settings = await repo.load_settings(session)
        warnings = owner_warnings(settings, body.owner) + await program_warnings(
            session, settings, body.program_delivery.enabled, body.program_delivery.programs)
    await announce(broker, what="account", key=key, action="put", suspended=settings.suspended)
    response.status_code = status.HTTP_201_CREATED if old is None else status.HTTP_200_OK
    return AccountWritten(**to_account(row).model_dump(), warnings=warnings)


@router.delete("/{address:raw}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
async def delete_account(
    address: str, principal: AdminDep, session: SessionDep, broker: BrokerDep
) -> Response:
    key = account_key(address)
    async with transaction(session):
        old = await repo.get_account(session, key, for_update=True)
        if old is None:
            raise not_found(key)
        await repo.delete_account(session, key)
        # A later account with this address is someone else until the admin says otherwise.
        revoked = await repo.revoke_tokens(session, account=key)
        new = {"revoked_tokens": [str(token_id) for token_id, _ in revoked]} if revoked else None
        await repo.add_audit(session, actor=principal.name, action="delete", kind="account",
                             target=key, old=audit_view(old), new=new)
        suspended = (await repo.load_settings(session)).suspended
    for _, digest in revoked:
        forget_token(digest)
    await announce(broker, what="account", key=key, action="delete", suspended=suspended)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
