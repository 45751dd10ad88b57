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


# Every API query is a short index walk whose plan does not depend on its parameters, so:
# - a generic plan, made once per connection: a custom plan would re-plan the view expansion on
#   every call (about 0.4 ms of a 0.5 ms feed query), and because a LIMIT parameter is unknown to
#   the generic planner, Postgres keeps choosing custom plans unless told otherwise;
# - no parallel workers: starting them costs milliseconds, to read twenty rows.
# tests/test_query_plans.py checks every API query's generic plan under these settings.
# - UTC, so that timestamps read the same whatever the server's zone;
# - no sequential scan where an index can serve: a generic plan lives as long as the connection, and
#   one made while a delta ledger was empty (as it is after every fold) scanned the ledger for each
#   row of a page, which costs nothing until the ledger grows (a refresher that is down) and then
#   costs a scan of the whole ledger per item. tests/test_query_plans.py plans with the ledgers empty.
# - no JIT: a generic plan's cost is estimated for the whole index, not the twenty rows a LIMIT
#   reads, which passes jit_above_cost, and compiling took 7 ms of a 7.1 ms feed query.
OLTP_SETTINGS = {
    "jit": "off",
    "plan_cache_mode": "force_generic_plan",
    "max_parallel_workers_per_gather": "0",
    "TimeZone": "UTC",
    "enable_seqscan": "off",
}


def session_options(settings: dict[str, str]) -> str:
    return " ".join(f"-c {name}={value}" for name, value in settings.items())


async def open_pool(
    url: str, application: str, min_size: int, max_size: int
) -> AsyncConnectionPool[AsyncConnection[TupleRow]]:
    """An autocommit pool for the API: OLTP session settings, statements prepared on first use."""
    from psycopg.conninfo import make_conninfo

    pool: AsyncConnectionPool[AsyncConnection[TupleRow]] = AsyncConnectionPool(
        make_conninfo(conninfo(url, application), options=session_options(OLTP_SETTINGS)),
        min_size=min_size,
        max_size=max_size,
        open=False,
        kwargs={"autocommit": True, "prepare_threshold": 0},
    )
    await pool.open(wait=False)
    return pool
