"""Running the API's SQL: the short reads pipelined (services/api/pgpipe.py), everything else on the pool
with statements prepared by psycopg, and database errors turned into 4xx or 503 answers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache
from typing import Any, NoReturn

import psycopg
from psycopg import AsyncConnection, errors, pq
from psycopg_pool import PoolTimeout

from denorm.sql import queries, query
from services.api import feed
from services.api.deps import Services
from services.api.errors import ApiError
from services.api.pgpipe import Behind, PipelinedReads
from services.api.pools import Pool

TUPLES_OK = pq.ExecStatus.TUPLES_OK


# The reads that go through the pipeline, besides the feed's: each a short index walk answering one row.
PIPELINED = (
    "leaderboard_projects",
    "leaderboard_users",
    "dashboard",
    "chains",
    "chain_page",
    "conversations",
    "project_page",
    "project_comments",
    "thread_page",
    "chain_projects",
    "chain_threads",
    "conversation_messages",
    "intro_requests",
    "user_profile",
    "replica_state",  # each lane asked where its own server's replay is (services/api/replica.py)
)


@cache
def _short_reads() -> dict[str, str]:
    return {name: queries()[name] for name in PIPELINED} | feed.statements()


def pipelined_queries() -> dict[str, bytes]:
    return {name: text.encode() for name, text in _short_reads().items()}


def as_api_error(exc: psycopg.Error) -> ApiError | None:
    if isinstance(exc, errors.ForeignKeyViolation):
        return ApiError(404, "not_found", "a referenced user, project or chain does not exist")
    if isinstance(exc, errors.UniqueViolation):
        return ApiError(409, "conflict", "that already exists")
    if isinstance(exc, errors.CheckViolation | errors.NotNullViolation | errors.StringDataRightTruncation):
        return ApiError(422, "invalid_input", "the values break a rule of the data model")
    if isinstance(exc, errors.DataError):  # a NUL in text, a number out of range, ...
        return ApiError(422, "invalid_input", "a value cannot be stored as given")
    if isinstance(exc, errors.LockNotAvailable):  # a bounded wait ran out (upvote_set)
        return ApiError(503, "unavailable", "busy; try again")
    if isinstance(exc, errors.QueryCanceled):  # statement_timeout
        return ApiError(503, "unavailable", "the database did not answer in time; try again")
    if isinstance(exc, errors.InvalidSqlStatementName | errors.DuplicatePreparedStatement):
        # A connection lost or shares its prepared statements: a pooler in transaction mode
        # (docs/deploy.md, "A pooler"). Not the client's fault, and not one to hide.
        return ApiError(503, "unavailable", "the database connection lost its prepared statements; try again")
    if isinstance(exc, psycopg.OperationalError):  # no connection (down, restarting, reconnecting)
        return ApiError(503, "unavailable", "the database is unreachable; try again")
    return None


def raise_mapped(exc: psycopg.Error) -> NoReturn:
    """Raise the 4xx or 503 a database error means for the client, or the error itself."""
    mapped = as_api_error(exc)
    if mapped is None:
        raise exc
    raise mapped from exc


@asynccontextmanager
async def connection(pool: Pool) -> AsyncIterator[AsyncConnection[Any]]:
    """A pooled connection; no connection within DB_POOL_TIMEOUT_MS (Postgres down, or every
    connection busy) is a 503, as is a database error that means the same."""
    try:
        async with pool.connection() as conn:
            yield conn
    except PoolTimeout as exc:
        raise ApiError(503, "unavailable", "no database connection is free or reachable; try again") from exc
    except psycopg.Error as exc:
        raise_mapped(exc)


async def fetch_all(
    pool: Pool, name: str, params: dict[str, Any] | None = None, *, read: bool = False
) -> list[tuple[Any, ...]]:
    """The rows of a named statement (denorm/sql.py), run on the pool. A `read` that loses its
    connection (a server that went away since the pool last saw it) is run once more on a fresh
    one; a write is not, since it may have committed before the connection was lost."""
    for attempt in (1, 2):
        conn: AsyncConnection[Any] | None = None
        try:
            async with pool.connection() as conn:
                cur = await conn.execute(query(name), params)
                # The result status, not cur.description: that builds a Column object per column per call.
                result = cur.pgresult
                return await cur.fetchall() if result is not None and result.status == TUPLES_OK else []
        except PoolTimeout as exc:
            raise ApiError(503, "unavailable", "no database connection is free or reachable; try again") from exc
        except psycopg.Error as exc:
            if read and attempt == 1 and conn is not None and conn.broken:
                continue
            raise_mapped(exc)
    raise AssertionError("unreachable")


async def fetch_one(
    pool: Pool, name: str, params: dict[str, Any] | None = None, *, read: bool = False
) -> tuple[Any, ...] | None:
    rows = await fetch_all(pool, name, params, read=read)
    return rows[0] if rows else None


async def row_on(conn: AsyncConnection[Any], name: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
    """The first row of a named statement on this connection (a write in the caller's transaction);
    a database error as its 4xx or 503."""
    try:
        return await (await conn.execute(query(name), params)).fetchone()
    except psycopg.Error as exc:
        raise_mapped(exc)


async def rows_on(conn: AsyncConnection[Any], name: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Every row of a named statement on this connection; a database error as its 4xx or 503."""
    try:
        return await (await conn.execute(query(name), params)).fetchall()
    except psycopg.Error as exc:
        raise_mapped(exc)


async def read_row(
    reads: PipelinedReads, name: str, params: dict[str, Any], min_replay_lsn: int | None = None
) -> tuple[bytes | None, ...] | None:
    """The row of a pipelined read (each column as Postgres's text), or None."""
    try:
        return await reads.fetch(name, params, min_replay_lsn)
    except psycopg.Error as exc:
        raise_mapped(exc)


async def read(
    svc: Services, name: str, params: dict[str, Any], user: int | None = None
) -> tuple[bytes | None, ...] | None:
    """A short read (one row, Postgres's text as bytes): pipelined to DATABASE_READ_URL, or run on
    the primary while that replica lags or has not replayed the caller's last write
    (services/api/replica.py)."""
    if svc.reads is None:  # API_WITHOUT=pipeline: on the read pool, one read a connection
        return await _on_pool(svc.read_pool, name, params)
    if svc.replica is None:
        return await read_row(svc.reads, name, params)
    needed = await svc.replica.needed(user)
    if needed is not None:
        try:
            row = await read_row(svc.reads, name, params, needed)
            svc.replica.count(True)
            return row
        except Behind:  # no lane's replica has this caller's last write yet
            pass
    svc.replica.count(False)
    return await _on_pool(svc.write_pool, name, params)


async def _on_pool(pool: Pool, name: str, params: dict[str, Any]) -> tuple[bytes | None, ...] | None:
    """A short read on a pooled connection, its columns as the pipeline gives them (text as bytes)."""
    async with connection(pool) as conn:
        row = await (await conn.execute(_short_reads()[name], params)).fetchone()
    return None if row is None else tuple(v.encode() if isinstance(v, str) else v for v in row)


async def read_json(
    svc: Services, name: str, params: dict[str, Any], user: int | None = None, missing: str = ""
) -> bytes:
    """The JSON document a short read built, as `read` routes it: no row is a 404 saying `missing`."""
    return _document(await read(svc, name, params, user), missing)


def _document(row: tuple[Any, ...] | None, missing: str) -> bytes:
    if row is None or row[0] is None:
        raise ApiError(404, "not_found", missing or "not found")
    value = row[0]
    return value if isinstance(value, bytes) else str(value).encode()


async def json_of_pool(pool: Pool, name: str, params: dict[str, Any], missing: str = "") -> bytes:
    """As json_of, for a read that stays on the pool (a slow one: see services/api/pgpipe.py)."""
    return _document(await fetch_one(pool, name, params, read=True), missing)
