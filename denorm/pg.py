"""Postgres connections: one place that knows how services open pools and plain connections."""

from __future__ import annotations

from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

APPLICATION_NAME = "denorm"


def conninfo(url: str, application: str) -> str:
    """The URL with an application_name, so pg_stat_activity tells our services apart."""
    from psycopg.conninfo import make_conninfo

    return make_conninfo(url, application_name=f"{APPLICATION_NAME}-{application}")


async def open_pool(
    url: str, application: str, min_size: int, max_size: int
) -> AsyncConnectionPool[AsyncConnection[TupleRow]]:
    pool: AsyncConnectionPool[AsyncConnection[TupleRow]] = AsyncConnectionPool(
        conninfo(url, application),
        min_size=min_size,
        max_size=max_size,
        open=False,
        kwargs={"autocommit": True},
    )
    await pool.open(wait=False)
    return pool
