"""Database access of the policy service (schema ``policy``); callers own the transaction."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncSession

from services.policy import tables as t
from services.policy.models import PolicySettings

PROGRAM_META = [c for c in t.programs.c if c.name != "content"]


def now() -> datetime:
    return datetime.now(UTC)


# --- settings --------------------------------------------------------------------------


async def settings_data(s: AsyncSession, *, for_update: bool = False) -> dict[str, Any]:
    stmt = select(t.settings.c.data).where(t.settings.c.id == 1)
    if for_update:
        stmt = stmt.with_for_update()
    data = (await s.execute(stmt)).scalar_one_or_none()
    return dict(data or {})


def effective(data: dict[str, Any]) -> PolicySettings:
    known = {k: v for k, v in data.items() if k in PolicySettings.model_fields}
    return PolicySettings.model_validate(known)


async def load_settings(s: AsyncSession) -> PolicySettings:
    return effective(await settings_data(s))


async def save_settings(s: AsyncSession, data: dict[str, Any], actor: str) -> None:
    stmt = pg_insert(t.settings).values(id=1, data=data, updated_at=now(), updated_by=actor)
    stmt = stmt.on_conflict_do_update(
        index_elements=[t.settings.c.id],
        set_={"data": stmt.excluded.data, "updated_at": stmt.excluded.updated_at,
              "updated_by": stmt.excluded.updated_by},
    )
    await s.execute(stmt)


# --- programs --------------------------------------------------------------------------


async def get_program(s: AsyncSession, name: str, *, for_update: bool = False) -> RowMapping | None:
    stmt = select(*PROGRAM_META).where(t.programs.c.name == name)
    if for_update:
        stmt = stmt.with_for_update()
    return (await s.execute(stmt)).mappings().first()


async def program_content(s: AsyncSession, name: str) -> bytes | None:
    stmt = select(t.programs.c.content).where(t.programs.c.name == name)
    return (await s.execute(stmt)).scalar_one_or_none()


async def put_program(
    s: AsyncSession, *, name: str, sha256: str, content: bytes, interpreter: bool, actor: str
) -> RowMapping:
    at = now()
    values = dict(name=name, sha256=sha256, size=len(content), content=content,
                  interpreter=interpreter, registered_by=actor, registered_at=at, updated_at=at)
    ins = pg_insert(t.programs).values(**values)
    stmt = ins.on_conflict_do_update(
        index_elements=[t.programs.c.name],
        set_={k: ins.excluded[k] for k in values if k not in ("name", "registered_at")},
    ).returning(*PROGRAM_META)
    return (await s.execute(stmt)).mappings().one()


async def set_program_meta(s: AsyncSession, name: str, fields: dict[str, Any]) -> RowMapping:
    """Change ``description``/``network`` of a registered program (the bytes stay)."""
    stmt = (
        update(t.programs)
        .where(t.programs.c.name == name)
        .values(**fields, updated_at=now())
        .returning(*PROGRAM_META)
    )
    return (await s.execute(stmt)).mappings().one()


async def delete_program(s: AsyncSession, name: str) -> bool:
    res = await s.execute(delete(t.programs).where(t.programs.c.name == name))
    return bool(res.rowcount)  # type: ignore[attr-defined]


async def list_programs(s: AsyncSession) -> Sequence[RowMapping]:
    stmt = select(*PROGRAM_META).order_by(t.programs.c.name)
    return (await s.execute(stmt)).mappings().all()


async def registered(s: AsyncSession, names: set[str]) -> set[str]:
    if not names:
        return set()
    stmt = select(t.programs.c.name).where(t.programs.c.name.in_(sorted(names)))
    return set((await s.execute(stmt)).scalars().all())


async def count(s: AsyncSession, table: Any) -> int:
    return int((await s.execute(select(func.count()).select_from(table))).scalar_one())


# --- accounts --------------------------------------------------------------------------


async def get_account(s: AsyncSession, address: str, *, for_update: bool = False) -> RowMapping | None:
    stmt = select(t.accounts).where(t.accounts.c.address == address)
    if for_update:
        stmt = stmt.with_for_update()
    return (await s.execute(stmt)).mappings().first()


async def put_account(s: AsyncSession, address: str, fields: dict[str, Any]) -> RowMapping:
    at = now()
    ins = pg_insert(t.accounts).values(address=address, created_at=at, updated_at=at, **fields)
    stmt = ins.on_conflict_do_update(
        index_elements=[t.accounts.c.address],
        set_={**{k: ins.excluded[k] for k in fields}, "updated_at": at},
    ).returning(t.accounts)
    row: RowMapping = (await s.execute(stmt)).mappings().one()
    return row


async def set_programs(
    s: AsyncSession, address: str, enabled: bool, programs: list[str]
) -> RowMapping:
    stmt = (
        update(t.accounts)
        .where(t.accounts.c.address == address)
        .values(program_delivery_enabled=enabled, programs=programs, updated_at=now())
        .returning(t.accounts)
    )
    row: RowMapping = (await s.execute(stmt)).mappings().one()
    return row


async def delete_account(s: AsyncSession, address: str) -> bool:
    res = await s.execute(delete(t.accounts).where(t.accounts.c.address == address))
    return bool(res.rowcount)  # type: ignore[attr-defined]


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def list_accounts(
    s: AsyncSession, after: str | None, limit: int, contains: str | None = None
) -> Sequence[RowMapping]:
    """A page of accounts in address order; ``contains``: only addresses with that text in
    them, any case (an admin's search; a scan, which a page of an admin's screen can afford)."""
    stmt = select(t.accounts).order_by(t.accounts.c.address).limit(limit)
    if after is not None:
        stmt = stmt.where(t.accounts.c.address > after)
    if contains:
        stmt = stmt.where(
            t.accounts.c.address.ilike(f"%{_like_escape(contains)}%", escape="\\"))
    return (await s.execute(stmt)).mappings().all()


# --- tokens ----------------------------------------------------------------------------

TOKEN_META = [c for c in t.tokens.c if c.name != "token_hash"]


async def insert_token(
    s: AsyncSession, *, token_hash: str, account: str, label: str | None, actor: str
) -> RowMapping:
    stmt = insert(t.tokens).values(
        id=uuid.uuid4(), token_hash=token_hash, role="user", account=account, label=label,
        created_at=now(), created_by=actor,
    ).returning(*TOKEN_META)
    return (await s.execute(stmt)).mappings().one()


async def list_tokens(s: AsyncSession, account: str) -> Sequence[RowMapping]:
    stmt = (
        select(*TOKEN_META).where(t.tokens.c.account == account).order_by(t.tokens.c.created_at)
    )
    return (await s.execute(stmt)).mappings().all()


async def get_token(s: AsyncSession, token_id: uuid.UUID) -> RowMapping | None:
    stmt = select(t.tokens).where(t.tokens.c.id == token_id).with_for_update()
    return (await s.execute(stmt)).mappings().first()


async def revoke_tokens(s: AsyncSession, *, token_id: uuid.UUID | None = None,
                        account: str | None = None) -> list[tuple[uuid.UUID, str]]:
    """Revoke one token or every active token of an account; (id, hash) of each revoked."""
    stmt = update(t.tokens).where(t.tokens.c.revoked_at.is_(None)).values(revoked_at=now())
    if token_id is not None:
        stmt = stmt.where(t.tokens.c.id == token_id)
    if account is not None:
        stmt = stmt.where(t.tokens.c.account == account)
    res = await s.execute(stmt.returning(t.tokens.c.id, t.tokens.c.token_hash))
    return [(row[0], row[1]) for row in res.all()]


# --- console sessions ------------------------------------------------------------------

# A session is live while not ended and seen within its idle timeout.
_SESSION_LIVE = (
    t.console_sessions.c.ended_at.is_(None)
    & (t.console_sessions.c.last_seen_at
       + func.make_interval(0, 0, 0, 0, 0, 0, t.console_sessions.c.idle_timeout_s) > func.now())
)
SESSION_PURGE_AFTER_S = 86400
SESSION_PURGE_BATCH = 500
# Live sessions one token may hold; signing in once more ends its least recently used one,
# so a token holder signing in in a loop cannot grow the table.
SESSIONS_PER_TOKEN = 20


async def insert_session(
    s: AsyncSession, *, id_hash: str, token_hash: str, principal: str, idle_timeout_s: int
) -> RowMapping:
    # the database's clock, the one the expiry checks read
    stmt = insert(t.console_sessions).values(
        id_hash=id_hash, token_hash=token_hash, principal=principal, created_at=func.now(),
        last_seen_at=func.now(), idle_timeout_s=idle_timeout_s,
    ).returning(t.console_sessions)
    row: RowMapping = (await s.execute(stmt)).mappings().one()
    return row


async def end_surplus_sessions(s: AsyncSession, *, token_hash: str, keep: int) -> int:
    """End the live sessions of ``token_hash`` beyond its ``keep`` most recently seen."""
    c = t.console_sessions.c
    surplus = (
        select(c.id_hash)
        .where((c.token_hash == token_hash) & c.ended_at.is_(None))
        .order_by(c.last_seen_at.desc()).offset(keep).scalar_subquery()
    )
    stmt = (update(t.console_sessions).where(c.id_hash.in_(surplus))
            .values(ended_at=func.now()))
    return int((await s.execute(stmt)).rowcount or 0)  # type: ignore[attr-defined]


async def touch_session(s: AsyncSession, *, id_hash: str, token_hash: str) -> RowMapping | None:
    """Slide the idle expiry of the live session ``id_hash`` created with ``token_hash``;
    None when there is none (unknown, another token's, ended or idle-expired alike)."""
    c = t.console_sessions.c
    stmt = (
        update(t.console_sessions)
        .where((c.id_hash == id_hash) & (c.token_hash == token_hash) & _SESSION_LIVE)
        .values(last_seen_at=func.now())
        .returning(t.console_sessions)
    )
    row: RowMapping | None = (await s.execute(stmt)).mappings().first()
    return row


async def end_session(s: AsyncSession, *, id_hash: str, token_hash: str) -> bool:
    c = t.console_sessions.c
    stmt = (
        update(t.console_sessions)
        .where((c.id_hash == id_hash) & (c.token_hash == token_hash) & _SESSION_LIVE)
        .values(ended_at=func.now())
        .returning(c.id_hash)
    )
    return (await s.execute(stmt)).first() is not None


async def purge_sessions(s: AsyncSession) -> int:
    """Delete up to ``SESSION_PURGE_BATCH`` sessions ended or idle-expired more than
    ``SESSION_PURGE_AFTER_S`` ago. Such a row was last seen before that too (the idle
    timeout is at most a day; an ended session is not seen again), so the index on
    ``last_seen_at`` finds the candidates."""
    c = t.console_sessions.c
    horizon = func.now() - func.make_interval(0, 0, 0, 0, 0, 0, SESSION_PURGE_AFTER_S)
    gone = (
        (c.ended_at < horizon)
        | (c.last_seen_at + func.make_interval(0, 0, 0, 0, 0, 0, c.idle_timeout_s) < horizon)
    )
    candidates = (
        select(c.id_hash).where((c.last_seen_at < horizon) & gone)
        .limit(SESSION_PURGE_BATCH).scalar_subquery()
    )
    res = await s.execute(delete(t.console_sessions).where(c.id_hash.in_(candidates)))
    return int(res.rowcount)  # type: ignore[attr-defined]


# --- audit -----------------------------------------------------------------------------


async def add_audit(
    s: AsyncSession, *, actor: str, action: str, kind: str, target: str,
    old: dict[str, Any] | None, new: dict[str, Any] | None,
) -> None:
    await s.execute(
        insert(t.audit).values(at=now(), actor=actor, action=action, target_kind=kind,
                               target=target, old=old, new=new)
    )


async def list_audit(
    s: AsyncSession, *, before: int | None, limit: int, target: str | None, kind: str | None
) -> Sequence[RowMapping]:
    stmt = select(t.audit).order_by(t.audit.c.id.desc()).limit(limit)
    if before is not None:
        stmt = stmt.where(t.audit.c.id < before)
    if target is not None:
        stmt = stmt.where(t.audit.c.target == target)
    if kind is not None:
        stmt = stmt.where(t.audit.c.target_kind == kind)
    return (await s.execute(stmt)).mappings().all()
