"""What is a database outage (:func:`shared.db.is_outage`), over real exception instances.

asyncpg's exceptions are built as asyncpg builds them (a message; the SQLSTATE is the
class's), SQLAlchemy's wrappers the way its asyncpg dialect and engine wrap them
(``_handle_exception_no_connection`` then ``DBAPIError.instance``). No server: a unit
test (``make test-unit``), without PostgreSQL or RabbitMQ.

The rule: outage → ``DatabaseUnavailable`` (503, defer); a constraint violation and
everything else → unchanged (the caller's 4xx, or a bug: 500), never a 503.
"""

from __future__ import annotations

import socket

import asyncpg
import pytest
from asyncpg import exceptions as pg
from sqlalchemy import exc as sa
from sqlalchemy.dialects.postgresql.asyncpg import (
    AsyncAdapt_asyncpg_connection,
    AsyncAdapt_asyncpg_dbapi,
)

from shared.db import asyncpg_dsn, is_outage, translate_db_errors
from shared.errors import DatabaseUnavailable, Unavailable

_DBAPI = AsyncAdapt_asyncpg_dbapi(asyncpg)


def via_sqlalchemy(orig: Exception, *, invalidated: bool = False) -> sa.DBAPIError:
    """``orig`` as SQLAlchemy hands it to a caller of ``session.execute``."""
    try:
        AsyncAdapt_asyncpg_connection._handle_exception_no_connection(_DBAPI, orig)
    except Exception as adapted:
        wrapped = sa.DBAPIError.instance(
            "SELECT 1", {}, adapted, _DBAPI.Error, connection_invalidated=invalidated
        )
        assert isinstance(wrapped, sa.DBAPIError)
        return wrapped
    raise AssertionError("not translated")


def caused(exc: BaseException, cause: BaseException) -> BaseException:
    exc.__cause__ = cause
    return exc


OUTAGES: dict[str, BaseException] = {
    "connection refused": ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)"),
    "connection reset": ConnectionResetError(104, "Connection reset by peer"),
    "name does not resolve": socket.gaierror(-2, "Name or service not known"),
    "timeout (connect, acquire, command; asyncio's too)": TimeoutError(),
    "interface: connection closed": asyncpg.InterfaceError("connection is closed"),
    "interface: pool closing": asyncpg.InterfaceError("pool is closing"),
    "08003 connection does not exist": pg.ConnectionDoesNotExistError(
        "connection was closed in the middle of operation"),
    "08006 connection failure": pg.ConnectionFailureError("connection failure"),
    "08001 cannot establish": pg.ClientCannotConnectError("cannot connect"),
    "57P01 admin shutdown": pg.AdminShutdownError(
        "terminating connection due to administrator command"),
    "57P02 crash shutdown": pg.CrashShutdownError("terminating connection: crash of another"),
    "57P03 cannot connect now": pg.CannotConnectNowError("the database system is starting up"),
    "53300 too many connections": pg.TooManyConnectionsError("sorry, too many clients already"),
    "SQLAlchemy wraps 57P03": via_sqlalchemy(
        pg.CannotConnectNowError("the database system is shutting down")),
    "SQLAlchemy wraps 57P01": via_sqlalchemy(pg.AdminShutdownError("terminating connection")),
    "SQLAlchemy wraps a lost connection": via_sqlalchemy(
        pg.ConnectionDoesNotExistError("connection was closed in the middle of operation")),
    "SQLAlchemy wraps InterfaceError": via_sqlalchemy(asyncpg.InterfaceError("connection is closed")),
    "SQLAlchemy invalidated the connection": via_sqlalchemy(
        pg.InternalServerError("server closed the connection unexpectedly"), invalidated=True),
    "SQLAlchemy pool timeout": sa.TimeoutError("QueuePool limit of size 10 overflow 10 reached"),
    "already translated": DatabaseUnavailable("database unavailable; retry later"),
    # rolled back for a conflict: the same transaction again goes through (the soak saw
    # ingest's "mark published" and the executor's claim deadlock)
    "40P01 deadlock detected": pg.DeadlockDetectedError("deadlock detected"),
    "40001 serialization failure": pg.SerializationError("could not serialize access"),
    "SQLAlchemy wraps 40P01": via_sqlalchemy(pg.DeadlockDetectedError("deadlock detected")),
}

NOT_OUTAGES: dict[str, BaseException] = {
    "23505 unique violation": pg.UniqueViolationError(
        'duplicate key value violates unique constraint "messages_pkey"'),
    "23503 foreign key violation": pg.ForeignKeyViolationError("violates foreign key constraint"),
    "23502 not null violation": pg.NotNullViolationError('null value in column "sender"'),
    "23514 check violation": pg.CheckViolationError('violates check constraint "state_ck"'),
    "SQLAlchemy wraps 23505": via_sqlalchemy(
        pg.UniqueViolationError('duplicate key value violates unique constraint "accounts_pkey"')),
    "SQLAlchemy wraps 23503": via_sqlalchemy(pg.ForeignKeyViolationError("violates foreign key")),
    "57014 statement cancelled": pg.QueryCanceledError("canceling statement due to user request"),
    "53100 disk full": pg.DiskFullError("could not extend file"),
    "28P01 wrong password": pg.InvalidPasswordError('password authentication failed for "mx"'),
    "3D000 no such database": pg.InvalidCatalogNameError('database "mx" does not exist'),
    "42P01 no such table": pg.UndefinedTableError('relation "mail.nope" does not exist'),
    "22P02 bad input": pg.InvalidTextRepresentationError("invalid input syntax for type uuid"),
    "SQLAlchemy wraps 42P01": via_sqlalchemy(pg.UndefinedTableError('relation "x" does not exist')),
    "asyncpg DataError (a bad argument)": pg.DataError("invalid input for query argument $1"),
    "asyncpg client configuration": pg.ClientConfigurationError("invalid sslmode"),
    "protocol error": pg.ProtocolError("unexpected message"),
    "ValueError": ValueError("bad value"),
    "RuntimeError caused by an OSError": caused(RuntimeError("not ours to unwrap"), OSError()),
    "Unavailable of another dependency": Unavailable("broker down", code="broker_unavailable"),
}


@pytest.mark.parametrize("exc", OUTAGES.values(), ids=OUTAGES.keys())
def test_outages(exc: BaseException) -> None:
    assert is_outage(exc)
    with pytest.raises(DatabaseUnavailable) as raised, translate_db_errors():
        raise exc
    assert raised.value.status_code == 503
    assert raised.value.code == "database_unavailable"
    assert raised.value.retry_after > 0
    assert raised.value.__cause__ is exc or exc is raised.value


@pytest.mark.parametrize("exc", [OUTAGES["40P01 deadlock detected"],
                                 OUTAGES["SQLAlchemy wraps 40P01"]])
def test_a_conflict_says_so(exc: BaseException) -> None:
    with pytest.raises(DatabaseUnavailable) as raised, translate_db_errors():
        raise exc
    assert raised.value.message.startswith("database conflict (")


@pytest.mark.parametrize("exc", NOT_OUTAGES.values(), ids=NOT_OUTAGES.keys())
def test_not_outages_leave_unchanged(exc: BaseException) -> None:
    assert not is_outage(exc)
    with pytest.raises(type(exc)) as raised, translate_db_errors():
        raise exc
    assert raised.value is exc


def test_wrappers_are_what_sqlalchemy_raises() -> None:
    """The table's SQLAlchemy rows are the real classes, not look-alikes."""
    wrapped = NOT_OUTAGES["SQLAlchemy wraps 23505"]
    assert isinstance(wrapped, sa.IntegrityError)
    assert isinstance(wrapped.orig, _DBAPI.UniqueViolationError)
    assert isinstance(wrapped.orig.__cause__, pg.UniqueViolationError)
    assert isinstance(OUTAGES["SQLAlchemy wraps InterfaceError"], sa.InterfaceError)


@pytest.mark.parametrize(
    ("url", "dsn"),
    [
        ("postgresql+asyncpg://mx:s%40cret@db:5432/mailexec?sslmode=require",
         "postgresql://mx:s%40cret@db:5432/mailexec?sslmode=require"),
        ("postgresql://postgres@127.0.0.1/mailexec", "postgresql://postgres@127.0.0.1/mailexec"),
        ("postgres://u@[::1]:5433/m", "postgresql://u@[::1]:5433/m"),
        ("postgresql+psycopg://u@h/m", "postgresql://u@h/m"),
    ],
)
def test_asyncpg_dsn(url: str, dsn: str) -> None:
    assert asyncpg_dsn(url) == dsn
