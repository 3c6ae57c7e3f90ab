"""User tokens: issued by the admin for one account, shown once, stored hashed, revocable."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Response, status
from pydantic import UUID4

from services.policy import repo
from services.policy.deps import AdminDep, BrokerDep, SessionDep, transaction
from services.policy.events import announce
from services.policy.models import TokenIn, TokenIssued, TokenList, TokenMeta
from services.policy.routes.accounts import not_found
from services.policy.validation import account_key
from shared.auth import forget_token, hash_token, new_token
from shared.errors import NotFound

router = APIRouter(prefix="/v1", tags=["tokens"])


@router.post("/accounts/{address}/tokens", response_model=TokenIssued,
             status_code=status.HTTP_201_CREATED)
async def issue_token(
    address: str, principal: AdminDep, session: SessionDep, broker: BrokerDep,
    body: Annotated[TokenIn | None, Body()] = None,
) -> TokenIssued:
    key = account_key(address)
    label = body.label if body else None
    token = new_token("mxu")
    async with transaction(session):
        if await repo.get_account(session, key, for_update=True) is None:
            raise not_found(key)
        row = await repo.insert_token(session, token_hash=hash_token(token), account=key,
                                      label=label, actor=principal.name)
        # The token itself never reaches the audit log, only its id.
        await repo.add_audit(session, actor=principal.name, action="create", kind="token",
                             target=str(row["id"]), old=None,
                             new={"account": key, "role": "user", "label": label})
        suspended = (await repo.load_settings(session)).suspended
    await announce(broker, what="token", key=str(row["id"]), action="put", suspended=suspended)
    return TokenIssued(**dict(row), token=token)


@router.get("/accounts/{address}/tokens", response_model=TokenList)
async def list_tokens(address: str, principal: AdminDep, session: SessionDep) -> TokenList:
    key = account_key(address)
    async with transaction(session):
        rows = await repo.list_tokens(session, key)
    return TokenList(items=[TokenMeta.model_validate(dict(r)) for r in rows])


@router.delete("/tokens/{token_id}", status_code=status.HTTP_204_NO_CONTENT,
               response_class=Response)
async def revoke_token(
    token_id: UUID4, principal: AdminDep, session: SessionDep, broker: BrokerDep
) -> Response:
    async with transaction(session):
        row = await repo.get_token(session, token_id)
        if row is None or row["role"] != "user":
            raise NotFound(f"no user token with id {token_id}", code="no_such_token")
        revoked = await repo.revoke_tokens(session, token_id=token_id)
        if revoked:
            await repo.add_audit(session, actor=principal.name, action="revoke", kind="token",
                                 target=str(token_id), old={"account": row["account"]},
                                 new={"revoked": True})
        suspended = (await repo.load_settings(session)).suspended
    forget_token(row["token_hash"])
    if revoked:
        await announce(broker, what="token", key=str(token_id), action="delete",
                       suspended=suspended)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
