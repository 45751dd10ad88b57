"""The API's connections to Postgres: its pools (the writers' and the reads'), and the pipelined
short reads' lanes (services/api/pgpipe.py), with the API's session settings."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
from typing import Any

import psycopg
from psycopg import AsyncConnection, pq
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from psycopg_pool.base import AttemptWithBackoff

from denorm.pg import conninfo, session_options
from denorm.sql import query
from services.api.pgpipe import PipelinedReads

Pool = AsyncConnectionPool[AsyncConnection[Any]]


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


# psycopg_pool waits 1 s before it tries a lost connection again, then 2, 4, 8 ... s: after an outage
# of half a minute, the pool's next attempt could come 16 s after Postgres is back, and writes would
# wait for it. A steady quarter second instead (each try a refused connect while Postgres is down,
# a few a second per pool) makes a pool whole within that of Postgres's return, however long it was
# away. The library has no setting for it; tests/test_recovery.py holds it to its word.
AttemptWithBackoff.INITIAL_DELAY = 0.25
AttemptWithBackoff.DELAY_BACKOFF = 1.0


class OutageLog(logging.Filter):
    """psycopg_pool logs every failed attempt to connect (four a second per pool during an outage):
    the first of an outage passes, the rest are counted, and the first connection made after them
    is logged with their number. Everything else of the library's at WARNING or above passes."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if message.startswith("error connecting"):
            self.failed += 1
            return self.failed == 1
        if message.startswith("adding new connection") and self.failed:
            record.msg, record.args, record.levelno, record.levelname = (
                "connected to Postgres again after %d failed attempts",
                (self.failed,),
                logging.WARNING,
                "WARNING",
            )
            self.failed = 0
            return True
        return record.levelno >= logging.WARNING


_pool_log = logging.getLogger("psycopg.pool")
_pool_log.setLevel(logging.INFO)  # the filter needs to see the library's "adding new connection"
_pool_log.addFilter(OutageLog())


def gone(conn: AsyncConnection[Any]) -> bool:
    """Whether an idle connection's server has already closed it: a restarted or stopped Postgres
    leaves every pooled connection dead, and each would fail the request it is handed to. A socket
    that has something to read while idle holds the server's goodbye; reading it tells. One poll,
    no round trip."""
    pgconn = conn.pgconn
    try:
        # A server that goes away sends its last words (a FATAL error), then closes: the first read
        # takes the words, the next one meets the end. A live connection has nothing more to read.
        for _ in range(3):
            if pgconn.status != pq.ConnStatus.OK:
                return True
            if not select.select([pgconn.socket], [], [], 0)[0]:
                return False
            pgconn.consume_input()  # raises once the server has hung up
    except (OSError, psycopg.OperationalError):
        return True
    return pgconn.status != pq.ConnStatus.OK


class GatedPool(AsyncConnectionPool[AsyncConnection[TupleRow]]):
    """psycopg_pool's pool, entered through an asyncio.Semaphore as wide as the pool.

    When more requests are in flight than the pool has connections, they queue on the semaphore:
    a future in a deque each, woken once. Queued inside the pool instead, each waiter costs a
    condition, a timeout task and several wakeups: measured at 32 concurrent requests over ten
    connections, about 30 µs of the API's CPU per request (docs/api.md). A wait past the pool's
    timeout raises PoolTimeout, as the pool itself would.

    `connection()` takes and returns the connection with getconn and putconn, without entering
    the connection's own context: on exit that commits, a no-op for these autocommit connections
    that still cost a lock and a generator per request. putconn still rolls back a connection
    left in a transaction and replaces a broken one.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gate = asyncio.Semaphore(self.max_size)

    def connection(self, timeout: float | None = None) -> _Lease:  # type: ignore[override]
        return _Lease(self, timeout)


class _Lease:
    """One connection of a GatedPool, for the length of an `async with`."""

    __slots__ = ("conn", "pool", "timeout")

    def __init__(self, pool: GatedPool, timeout: float | None) -> None:
        self.pool = pool
        self.timeout = timeout
        self.conn: AsyncConnection[TupleRow] | None = None

    async def __aenter__(self) -> AsyncConnection[TupleRow]:
        pool, gate = self.pool, self.pool._gate
        limit = pool.timeout if self.timeout is None else self.timeout
        if gate.locked():
            try:
                async with asyncio.timeout(limit):
                    await gate.acquire()
            except TimeoutError:
                raise PoolTimeout(f"couldn't get a connection after {limit:.2f} sec") from None
        else:
            await gate.acquire()
        try:
            self.conn = await pool.getconn(limit)
        except BaseException:
            gate.release()
            raise
        return self.conn

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self.conn is not None:
                await self.pool.putconn(self.conn)
        finally:
            self.conn = None
            self.pool._gate.release()


# Run on every new connection before the pool hands it out. A session compiles a PL/pgSQL function
# on its first call: done here, by a call that changes nothing, the first upvote a new connection
# serves does not pay it (in the load test's short steps, each a fresh API, those first calls
# were a visible share of the upvotes over 5 ms).
async def _warm_up(conn: AsyncConnection[TupleRow]) -> None:
    with contextlib.suppress(psycopg.errors.UndefinedFunction):  # a database not migrated yet
        await conn.execute(query("upvote_warm_up"))


async def open_pool(
    url: str, application: str, min_size: int, max_size: int, timeout_s: float = 30.0, gated: bool = True
) -> AsyncConnectionPool[AsyncConnection[TupleRow]]:
    """An autocommit pool for the API (a GatedPool unless not `gated`): OLTP session settings,
    statements prepared on first use; a wait for a connection longer than `timeout_s` raises
    PoolTimeout. A connection is checked as it is handed out (`gone`): a dead one is dropped, the
    pool checks every other idle one in the background, and the request gets a live one instead."""
    checking: set[asyncio.Task[None]] = set()

    async def check(conn: AsyncConnection[Any]) -> None:
        if gone(conn):
            if not checking:  # one sweep at a time: the others it finds are as dead
                task = asyncio.get_running_loop().create_task(pool.check())
                checking.add(task)
                task.add_done_callback(checking.discard)
            raise psycopg.OperationalError("the server closed this pooled connection")

    pool = (GatedPool if gated else AsyncConnectionPool)(
        conninfo(url, application, options=session_options(OLTP_SETTINGS)),
        min_size=min_size,
        max_size=max_size,
        timeout=timeout_s,
        open=False,
        name=application,
        kwargs={"autocommit": True, "prepare_threshold": 0},
        configure=_warm_up,
        check=check,
    )
    await pool.open(wait=False)
    return pool


async def open_pipeline(
    url: str, application: str, queries: dict[str, bytes], lanes: int, timeout_ms: int
) -> PipelinedReads:
    """The API's pipelined short reads (services/api/pgpipe.py), with the pool's session settings and a
    statement_timeout of `timeout_ms`."""
    settings = {**OLTP_SETTINGS, "statement_timeout": str(timeout_ms)}
    info = conninfo(url, application, options=session_options(settings), connect_timeout=5)
    reads = PipelinedReads(info, queries, lanes_wanted=lanes, timeout=timeout_ms / 1000)
    await reads.open()
    return reads
