"""FastAPI dependencies of the policy service: sessions, the broker, roles."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from shared.amqp import Broker
from shared.auth import Principal, require
from shared.db import get_sessionmaker, translate_db_errors
from shared.errors import Forbidden


async def get_session() -> AsyncIterator[AsyncSession]:
    async with get_sessionmaker()() as session:
        yield session


@contextlib.asynccontextmanager
async def transaction(session: AsyncSession) -> AsyncIterator[AsyncSession]:
    """Commit on success, roll back on error; a lost database becomes 503."""
    with translate_db_errors():
        async with session.begin():
            yield session


def get_broker(request: Request) -> Broker:
    broker: Broker = request.app.state.broker
    return broker


def ensure_own_account(principal: Principal, address: str) -> None:
    """A user token may only touch the account it was issued for."""
    if principal.role == "user" and principal.account != address:
        raise Forbidden(
            f"this token belongs to account {principal.account}; it cannot access {address}",
            code="wrong_account",
        )


SessionDep = Annotated[AsyncSession, Depends(get_session)]
BrokerDep = Annotated[Broker, Depends(get_broker)]
AdminDep = Annotated[Principal, Depends(require("admin"))]
ReaderDep = Annotated[Principal, Depends(require("admin", "service"))]
# GET /v1/status: a user's console chooses between a name picker and absolute paths by it
StatusReaderDep = Annotated[Principal, Depends(require("admin", "service", "user"))]
AccountReaderDep = Annotated[Principal, Depends(require("admin", "service", "mta", "user"))]
ProgramsReaderDep = Annotated[Principal, Depends(require("admin", "service", "user"))]
ProgramsWriterDep = Annotated[Principal, Depends(require("admin", "user"))]
