"""Console sessions (SPEC §2 "console"): the server-side record behind the console's
cookie, so that signing out makes a captured cookie useless.

What it guarantees:
- A session answers only to the bearer token it was created with: the record keeps the
  SHA-256 of that token, and ``GET``/``DELETE /v1/sessions/{session}`` with any other
  token find nothing. A revoked token is refused before (401, ``shared.auth``).
- Only ``admin`` and ``user`` tokens sign in to the console; ``mta`` and ``service``
  tokens get 403.
- The session id is random (``secrets.token_urlsafe(32)``), shown once in the ``POST``
  answer, stored only as its SHA-256, and never logged (nor is the token).
- Unknown, another token's, ended and idle-expired sessions get the same 404
  ``session_not_found``: the answer does not tell which.
- Each successful ``GET`` slides the idle expiry (``last_seen_at = now``); ``DELETE``
  ends the session for good.

- One token holds at most ``repo.SESSIONS_PER_TOKEN`` live sessions: signing in once more
  ends its least recently used one (tests/policy/test_sessions.py::test_sessions_per_token_are_capped).

What it does not do: sessions are not audited (signing in changes no policy), and
creating one deletes at most ``repo.SESSION_PURGE_BATCH`` rows ended or idle-expired more
than a day ago; nothing else prunes the table.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends, Request, Response, status
from sqlalchemy.engine import RowMapping

from services.policy import repo
from services.policy.deps import SessionDep, transaction
from services.policy.models import SessionIn, SessionOut
from shared.auth import Principal, authenticate, presented_token_hash
from shared.errors import Forbidden, NotFound

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])

CONSOLE_ROLES = ("admin", "user")


async def console_principal(
    principal: Annotated[Principal, Depends(authenticate)],
) -> Principal:
    if principal.role not in CONSOLE_ROLES:
        raise Forbidden(
            f"this token cannot sign in to the console (its role is {principal.role}; "
            "sign in with an admin token or a user token)",
            code="wrong_role",
        )
    return principal


ConsoleDep = Annotated[Principal, Depends(console_principal)]


def session_hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8", "surrogateescape")).hexdigest()


def session_not_found() -> NotFound:
    return NotFound(
        "no live console session with this id for this token (unknown, ended or expired); "
        "sign in again",
        code="session_not_found",
    )


def _out(session_id: str, principal: Principal, row: RowMapping) -> SessionOut:
    role: Literal["admin", "user"] = "admin" if principal.role == "admin" else "user"
    return SessionOut(
        session=session_id, role=role, name=principal.name, account=principal.account,
        expires_at=row["last_seen_at"] + timedelta(seconds=row["idle_timeout_s"]),
        idle_timeout_s=row["idle_timeout_s"],
    )


@router.post("", response_model=SessionOut, status_code=status.HTTP_201_CREATED)
async def create_session(
    request: Request, principal: ConsoleDep, session: SessionDep,
    body: Annotated[SessionIn | None, Body()] = None,
) -> SessionOut:
    idle = (body or SessionIn()).idle_timeout_s
    session_id = secrets.token_urlsafe(32)
    token_hash = presented_token_hash(request)
    async with transaction(session):
        await repo.purge_sessions(session)
        await repo.end_surplus_sessions(session, token_hash=token_hash,
                                        keep=repo.SESSIONS_PER_TOKEN - 1)
        row = await repo.insert_session(
            session, id_hash=session_hash(session_id), token_hash=token_hash,
            principal=principal.name, idle_timeout_s=idle,
        )
    return _out(session_id, principal, row)


@router.get("/{session_id}", response_model=SessionOut)
async def check_session(
    session_id: str, request: Request, principal: ConsoleDep, session: SessionDep
) -> SessionOut:
    async with transaction(session):
        row = await repo.touch_session(session, id_hash=session_hash(session_id),
                                       token_hash=presented_token_hash(request))
    if row is None:
        raise session_not_found()
    return _out(session_id, principal, row)


@router.delete("/{session_id}", status_code=status.HTTP_204_NO_CONTENT,
               response_class=Response)
async def end_session(
    session_id: str, request: Request, principal: ConsoleDep, session: SessionDep
) -> Response:
    async with transaction(session):
        ended = await repo.end_session(session, id_hash=session_hash(session_id),
                                       token_hash=presented_token_hash(request))
    if not ended:
        raise session_not_found()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
