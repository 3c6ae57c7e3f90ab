"""PostgreSQL for every service: asyncpg pools, the SQLAlchemy engine, and what a failure means.

Two ways in, one set of rules:

- **asyncpg directly** (:func:`create_pool`): the executor's and ingest's hot paths, where
  SQLAlchemy would cost more CPU per row than the statement itself.
- **SQLAlchemy** (:func:`get_engine`, :func:`session_scope`): policy, the notifier and the
  token lookups of :mod:`shared.auth`. SQLAlchemy is imported only when an engine is made,
  so an asyncpg-only process does not load it for this module.

Both take ``MAILEXEC_DATABASE_URL`` (SQLAlchemy form, :func:`asyncpg_dsn` converts it) and
the pool sizes and timeouts of :mod:`shared.settings` (``MAILEXEC_DATABASE_*``).

Failures are classified once, by :func:`is_outage`, and translated once, at each
service's database boundary, by :func:`translate_db_errors`:

- the database is not there (connection refused or lost, shutting down or starting up,
  too many connections, a timeout) → :class:`shared.errors.DatabaseUnavailable`: HTTP
  503 with Retry-After, LMTP 451, a worker defers or requeues;
- anything else — a constraint violation (SQLSTATE 23xxx), bad SQL, a bad argument —
  leaves unchanged: the caller maps what it expects (a unique key → its 409) and the
  rest surfaces as a bug (HTTP 500, logged with its traceback). Never a 503: a retry
  would fail the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from functools import lru_cache
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from shared.errors import DatabaseUnavailable
from shared.settings import get_settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

# --- what a failure means ----------------------------------------------------------------

# 57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now (starting up or
# shutting down), 53300 too_many_connections; class 08 (connection exception) by prefix.
# Not the rest of class 57 (57014: a statement cancelled) nor of class 53 (disk full,
# out of memory: an operator's problem, reported as an error rather than retried).
# 40P01 deadlock_detected and 40001 serialization_failure too: PostgreSQL rolled the
# transaction back for a conflict with another one (ingest marking jobs published while
# the executor claims them, say), and the same transaction tried again goes through; to
# the caller that is "retry later", as an outage is — never "the program ran, start it
# again" (a requeued job would run its programs twice).
CONFLICT_SQLSTATES = frozenset({"40P01", "40001"})
OUTAGE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300"}) | CONFLICT_SQLSTATES

# asyncpg's InterfaceError means "no usable connection" (closed, lost, pool closing),
# except for these subclasses, which are a wrong argument or configuration: bugs.
_NOT_OUTAGES = (
    asyncpg.exceptions.DataError,
    asyncpg.exceptions.ClientConfigurationError,
    asyncpg.exceptions.UnsupportedClientFeatureError,
    asyncpg.exceptions.UnsupportedServerFeatureError,
)


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` means the database is not there now, or rolled the transaction back
    for a conflict (:data:`CONFLICT_SQLSTATES`) — retry later — not a bad request.

    Outages: :class:`OSError` and :class:`TimeoutError` (refused, reset, unresolvable,
    timed out); asyncpg's :class:`~asyncpg.InterfaceError` (connection closed or lost);
    SQLSTATE class 08, 57P01/57P02/57P03 and 53300 (asyncpg's
    ``ConnectionDoesNotExistError``, ``CannotConnectNowError``, ``AdminShutdownError``,
    ``TooManyConnectionsError`` …); SQLAlchemy's wrappers of any of these, any
    ``DBAPIError`` whose connection SQLAlchemy found dead (``connection_invalidated``) and
    its pool's timeout.
    Nothing else: a constraint violation is the caller's to answer.
    """
    for err in _chain(exc):
        if isinstance(err, DatabaseUnavailable | OSError | TimeoutError):
            return True
        if isinstance(err, asyncpg.InterfaceError):
            return not isinstance(err, _NOT_OUTAGES)
        sqlstate = getattr(err, "sqlstate", None)
        if isinstance(sqlstate, str) and (sqlstate.startswith("08") or sqlstate in OUTAGE_SQLSTATES):
            return True
        if type(err).__module__.startswith("sqlalchemy."):
            from sqlalchemy import exc as sa  # loaded already: err is one of its exceptions

            if isinstance(err, sa.TimeoutError):  # no pooled connection free in time
                return True
            if isinstance(err, sa.DBAPIError) and err.connection_invalidated:
                return True
    return False


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then — through SQLAlchemy's wrappers only — the errors it wraps: a
    DBAPIError wraps the dialect's adapted error (``orig``), which wraps asyncpg's."""
    seen: set[int] = set()
    err: BaseException | None = exc
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        if not type(err).__module__.startswith("sqlalchemy."):
            return
        from sqlalchemy import exc as sa

        err = err.orig if isinstance(err, sa.StatementError) and err.orig else err.__cause__


@contextlib.contextmanager
def translate_db_errors() -> Iterator[None]:
    """The boundary: an outage (:func:`is_outage`) leaves as :class:`DatabaseUnavailable`,
    every other error unchanged."""
    try:
        yield
    except DatabaseUnavailable:
        raise
    except Exception as exc:
        if is_outage(exc):
            conflict = any(getattr(e, "sqlstate", None) in CONFLICT_SQLSTATES
                           for e in _chain(exc))
            what = "database conflict" if conflict else "database unavailable"
            raise DatabaseUnavailable(f"{what} ({type(exc).__name__}); retry later") from exc
        raise


# --- asyncpg -------------------------------------------------------------------------------


def asyncpg_dsn(database_url: str) -> str:
    """``postgresql+asyncpg://…`` (SQLAlchemy's form, the setting's) → ``postgresql://…``."""
    parts = urlsplit(database_url)
    if parts.scheme.startswith("postgresql+") or parts.scheme == "postgres":
        parts = parts._replace(scheme="postgresql")
    return urlunsplit(parts)


async def keep_session(conn: object) -> None:
    """``asyncpg.create_pool(reset=keep_session)``: skip the pool's per-release ``RESET
    ALL``/``UNLISTEN``/``pg_advisory_unlock_all`` round trip (an open transaction is
    still rolled back). Only for pools whose users never change session state, LISTEN
    or take advisory locks — the hot paths of ingest and the executor, which release a
    connection after every statement."""


async def create_pool(database_url: str, *, max_size: int, min_size: int = 0) -> asyncpg.Pool:
    """An asyncpg pool with the settings' timeouts; ``min_size=0`` connects lazily (the
    service starts while PostgreSQL is down), ``min_size>0`` connects now (and raises
    what :func:`is_outage` classifies when it cannot)."""
    s = get_settings()
    return await asyncpg.create_pool(
        asyncpg_dsn(database_url),
        min_size=min_size,
        max_size=max_size,
        timeout=s.database_connect_timeout_s,
        command_timeout=s.database_command_timeout_s,
        max_inactive_connection_lifetime=60,
        reset=keep_session,
    )


@contextlib.asynccontextmanager
async def acquire(pool: asyncpg.Pool | None) -> AsyncIterator[asyncpg.Connection]:
    """A connection of ``pool`` for one unit of work, errors translated at this boundary."""
    if pool is None:
        raise DatabaseUnavailable("database pool not started")
    with translate_db_errors():
        async with pool.acquire(timeout=get_settings().database_acquire_timeout_s) as conn:
            yield conn


# --- SQLAlchemy ----------------------------------------------------------------------------


@lru_cache(maxsize=1)
def get_engine() -> AsyncEngine:
    from sqlalchemy.ext.asyncio import create_async_engine

    s = get_settings()
    return create_async_engine(
        s.database_url,
        pool_size=s.database_pool_size,
        max_overflow=s.database_pool_size,
        pool_pre_ping=True,
        pool_timeout=s.database_acquire_timeout_s,
        connect_args={"timeout": s.database_connect_timeout_s,
                      "command_timeout": s.database_command_timeout_s},
    )


@lru_cache(maxsize=1)
def get_sessionmaker() -> async_sessionmaker[AsyncSession]:
    from sqlalchemy.ext.asyncio import async_sessionmaker

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


async def ping() -> bool:
    """Readiness of the SQLAlchemy engine's database."""
    from sqlalchemy import text

    try:
        async with get_engine().connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False

