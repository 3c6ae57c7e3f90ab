"""Async PostgreSQL plumbing: one engine per process, sessions, a readiness ping.

Library exceptions that mean "the database is not there" are translated to
:class:`shared.errors.Unavailable` by :func:`translate_db_errors`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from functools import lru_cache

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from shared.errors import Unavailable
from shared.settings import get_settings


@lru_cache(maxsize=1)
def get_engine() -> AsyncEngine:
    s = get_settings()
    return create_async_engine(
        s.database_url,
        pool_size=10,
        max_overflow=10,
        pool_pre_ping=True,
        pool_timeout=10,
        connect_args={"timeout": 5, "command_timeout": 30},
    )


@lru_cache(maxsize=1)
def get_sessionmaker() -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(get_engine(), expire_on_commit=False)


async def dispose_engine() -> None:
    if get_engine.cache_info().currsize:
        await get_engine().dispose()
    get_engine.cache_clear()
    get_sessionmaker.cache_clear()


@contextlib.asynccontextmanager
async def session_scope() -> AsyncIterator[AsyncSession]:
    """A session in a transaction: committed on success, rolled back on error."""
    with translate_db_errors():
        async with get_sessionmaker()() as session, session.begin():
            yield session


def _is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    # SQLAlchemy wraps asyncpg's errors in its own ``Error`` (so the class names below never
    # match); a refused connect while the server shuts down or starts up (57P03) would
    # otherwise escape as a plain DBAPIError. 08 = connection exception, 57P = shutdown.
    sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None) or ""
    if sqlstate.startswith(("08", "57P")):
        return True
    name = type(getattr(exc, "orig", exc)).__name__
    return any(
        s in name
        for s in ("ConnectionDoesNotExist", "CannotConnectNow", "ConnectionFailure",
                  "AdminShutdown", "InterfaceError", "ConnectionRefused")
    )


@contextlib.contextmanager
def translate_db_errors() -> Iterator[None]:
    try:
        yield
    except (OSError, TimeoutError) as exc:
        raise Unavailable(f"database unreachable: {exc}", code="database_unavailable") from exc
    except DBAPIError as exc:
        if _is_connection_error(exc):
            raise Unavailable(
                "database unreachable; retry later", code="database_unavailable"
            ) from exc
        raise


async def ping() -> bool:
    try:
        async with get_engine().connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False

