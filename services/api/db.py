"""Running the API's SQL: one round trip per call, prepared by psycopg after a few uses, and
constraint violations turned into 4xx answers."""

from __future__ import annotations

from functools import cache
from typing import Any

import psycopg
from psycopg import errors, pq

from db import SQL_DIR
from denorm.sqlfile import load_queries
from services.api.deps import Pool
from services.api.errors import ApiError

TUPLES_OK = pq.ExecStatus.TUPLES_OK


@cache
def queries() -> dict[str, bytes]:
    return {name: text.encode() for name, text in load_queries(SQL_DIR / "queries" / "api.sql").items()}


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
    return None


async def fetch_all(pool: Pool, query: bytes | str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    try:
        async with pool.connection() as conn:
            cur = await conn.execute(query if isinstance(query, bytes) else query.encode(), params)
            # The result status, not cur.description: that builds a Column object per column per call.
            result = cur.pgresult
            return await cur.fetchall() if result is not None and result.status == TUPLES_OK else []
    except psycopg.Error as exc:
        mapped = as_api_error(exc)
        if mapped is None:
            raise
        raise mapped from exc


async def fetch_one(pool: Pool, query: bytes | str, params: dict[str, Any] | None = None) -> tuple[Any, ...] | None:
    rows = await fetch_all(pool, query, params)
    return rows[0] if rows else None


async def json_of(pool: Pool, query: str, params: dict[str, Any], missing: str = "") -> bytes:
    """The JSON document a read query built (one row, one text column); no row is a 404 saying `missing`."""
    row = await fetch_one(pool, queries()[query], params)
    if row is None:
        raise ApiError(404, "not_found", missing or "not found")
    return str(row[0]).encode()
