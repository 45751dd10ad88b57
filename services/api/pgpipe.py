"""Single-statement reads from many concurrent requests, pipelined to Postgres on a few connections.

Why: a read sent on its own connection costs the API a socket write, a reader registered and
removed, a wakeup and psycopg's cursor machinery, and costs Postgres a wakeup and a read: 81 µs
of the API's CPU per feed read with the pool against 20-27 µs here, and 139 against 100 µs of
Postgres's (measured side by side, docs/api.md).

How: each connection ("lane") stays in libpq's pipeline mode, its socket's reader always
registered. A read joins the first lane with no batch out, else the one with the fewest reads.
A lane sends what it has queued as one batch (Bind and Execute per read, one Sync, one
socket write), and sends the next batch when the last one's answers are in, so that the busier
the API is, the more reads share a write. The reader hands each result, in order, to the request
waiting for it. A batch is one implicit transaction: when a read fails, Postgres skips the rest
of its batch, and those reads are sent again. The statements are prepared once per connection.

A lane whose connection breaks fails the reads it holds and reconnects in the background; the
others carry on. A lane whose oldest read has waited well past `timeout` is failed the same way
(a hung server or network: the server's statement_timeout, set to `timeout`, ends a slow query
first).

Only short reads belong here: a lane answers in order, so a slow query delays the ones queued
behind it. Search (milliseconds on a miss) and every write use the ordinary pool.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import psycopg
from psycopg import AsyncConnection, pq
from psycopg.errors import error_from_result

from denorm.logs import get_logger
from denorm.sql import positional

log = get_logger("services.api.pgpipe")
# A lost lane tries again this often: a refused connect while Postgres is down, and back within this
# of its return.
RECONNECT_S = 0.25

Row = tuple[bytes | None, ...]
_TUPLES_OK = pq.ExecStatus.TUPLES_OK
_COMMAND_OK = pq.ExecStatus.COMMAND_OK
_PIPELINE_SYNC = pq.ExecStatus.PIPELINE_SYNC
_FATAL_ERROR = pq.ExecStatus.FATAL_ERROR
_PIPELINE_ABORTED = pq.ExecStatus.PIPELINE_ABORTED
# Marks a read skipped because an earlier read of its batch failed (it is sent again).
_ABORTED = psycopg.OperationalError("skipped: an earlier read of its pipeline batch failed")


@dataclass(frozen=True)
class Statement:
    """A query in psycopg's `%(name)s` style, as a server-side prepared statement with `$n` slots."""

    name: bytes
    sql: bytes
    params: tuple[str, ...]

    @classmethod
    def compile(cls, name: str, query: bytes) -> Statement:
        sql, names = positional(query.decode())
        return cls(f"pipe_{name}".encode(), sql.encode(), tuple(names))


def encode(value: Any) -> bytes | None:
    """A parameter in Postgres's text format (the server infers each slot's type from the query)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return b"t" if value else b"f"
    if isinstance(value, str):
        if "\x00" in value:  # libpq would cut a text parameter at its first NUL
            raise psycopg.DataError("a text parameter cannot contain NUL characters")
        return value.encode()
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, float):
        return repr(value).encode()  # inf and nan read back as Postgres's own
    if isinstance(value, datetime | date):
        return value.isoformat().encode()
    raise TypeError(f"no text form for {type(value).__name__}")


class _Read:
    __slots__ = ("answered", "error", "future", "params", "prepare", "row", "sent_at", "statement")

    def __init__(
        self,
        statement: bytes,
        params: list[bytes | None],
        future: asyncio.Future[Row | None],
        prepare: bytes | None = None,  # SQL: prepare `statement` instead of running it
    ) -> None:
        self.statement = statement
        self.params = params
        self.prepare = prepare
        self.future = future
        self.row: Row | None = None
        self.answered = False  # a result came for it
        self.error: BaseException | None = None
        self.sent_at = 0.0

    def finish(self) -> None:
        if self.future.done():  # the request went away
            return
        if self.error is not None:
            self.future.set_exception(self.error)
        else:
            self.future.set_result(self.row)


@dataclass
class PipeStats:
    reads: int = 0  # reads answered or failed
    writes: int = 0  # socket flushes that carried them
    reconnects: int = 0


class _Lane:
    """One connection in pipeline mode; see the module docstring."""

    def __init__(self, pipe: PipelinedReads, index: int) -> None:
        self.pipe = pipe
        self.index = index
        self.conn: AsyncConnection[Any] | None = None
        self.ready = False  # connected, statements prepared
        self.queued: deque[_Read] = deque()
        self.sent: deque[_Read] = deque()
        self.send_scheduled = False
        self.open_batches = 0  # batches sent whose Sync has not come back
        self.writer_on = False
        self.fd = -1
        # On a replica: how far this connection's server had replayed when last asked
        # (services/api/replica.py); reads that need a later position go elsewhere. Reset with
        # the connection: after a reconnect it may be another server.
        self.replay_lsn = -1

    @property
    def up(self) -> bool:
        return self.ready

    @property
    def load(self) -> int:
        return len(self.queued) + len(self.sent)

    async def connect(self) -> None:
        """Connect, and prepare every statement (protocol-level, as PgBouncer 1.21+ can follow)
        through the pipeline itself, before the lane takes any read."""
        self.replay_lsn = -1
        conn = await AsyncConnection.connect(self.pipe.conninfo, autocommit=True)
        pg = conn.pgconn
        pg.enter_pipeline_mode()
        self.open_batches = 0
        self.fd = pg.socket
        self.conn = conn
        loop = asyncio.get_running_loop()
        loop.add_reader(self.fd, self._readable)
        prepared: list[asyncio.Future[Row | None]] = []
        for st in self.pipe.statements.values():
            prepared.append(loop.create_future())
            self.submit(_Read(st.name, [], prepared[-1], prepare=st.sql))
        try:
            await asyncio.gather(*prepared)
        except BaseException:
            self.fail(psycopg.OperationalError("could not prepare the pipelined statements"), reconnect=False)
            raise
        self.ready = True

    def submit(self, read: _Read) -> None:
        self.queued.append(read)
        if not self.send_scheduled and not self.open_batches:
            self.send_scheduled = True
            # After the other requests of this loop turn have queued theirs: one write for all.
            asyncio.get_running_loop().call_soon(self._send)

    def _send(self) -> None:
        self.send_scheduled = False
        if self.conn is None:
            return
        pg = self.conn.pgconn
        now = time.monotonic()
        try:
            while self.queued:
                read = self.queued.popleft()
                self.sent.append(read)  # before sending: a failure below fails it with the rest
                read.sent_at = now
                if read.prepare is None:
                    pg.send_query_prepared(read.statement, read.params)
                else:
                    pg.send_prepare(read.statement, read.prepare)
            pg.pipeline_sync()  # one Sync per batch: libpq flushes on each (PQsendPipelineSync is newer)
            self.open_batches += 1
            self.pipe.stats.writes += 1
            if pg.flush() == 1 and not self.writer_on:  # the socket is full: finish when it drains
                self.writer_on = True
                asyncio.get_running_loop().add_writer(self.fd, self._writable)
        except psycopg.Error as exc:
            self.fail(exc)

    def _writable(self) -> None:
        if self.conn is None:
            return
        try:
            if self.conn.pgconn.flush() == 0:
                self.writer_on = False
                asyncio.get_running_loop().remove_writer(self.fd)
        except psycopg.Error as exc:
            self.fail(exc)

    def _readable(self) -> None:
        if self.conn is None:
            return
        pg = self.conn.pgconn
        try:
            pg.consume_input()
            aborted: list[_Read] = []
            while (self.sent or self.open_batches) and not pg.is_busy():
                res = pg.get_result()
                if res is None:  # the end of one read's results
                    if not self.sent:
                        break
                    if not self.sent[0].answered:  # ended with no result at all: the connection broke
                        raise psycopg.OperationalError("the connection to Postgres was lost")
                    read = self.sent.popleft()
                    if read.error is _ABORTED:  # an earlier read of its batch failed: send it again
                        read.error = None
                        read.answered = False
                        aborted.append(read)
                    else:
                        self.pipe.stats.reads += 1
                        read.finish()
                    continue
                status = res.status
                if status == _PIPELINE_SYNC:  # the end of a batch
                    self.open_batches -= 1
                    continue
                read = self.sent[0]
                read.answered = True
                if status == _PIPELINE_ABORTED:
                    read.error = _ABORTED
                elif status == _TUPLES_OK:
                    if res.ntuples and read.row is None:
                        read.row = tuple(res.get_value(0, i) for i in range(res.nfields))
                elif status == _FATAL_ERROR:
                    read.error = error_from_result(res, encoding=self.conn.info.encoding)
                elif status != _COMMAND_OK:
                    read.error = psycopg.OperationalError(f"unexpected result status {pq.ExecStatus(status).name}")
            if pg.status == pq.ConnStatus.BAD:  # the server said goodbye (the reads it failed have their error)
                raise psycopg.OperationalError("the connection to Postgres was closed")
            if aborted:
                self.queued.extendleft(reversed(aborted))
            if self.queued and not self.open_batches and not self.send_scheduled:
                self.send_scheduled = True  # what queued while the last batch was out goes now
                asyncio.get_running_loop().call_soon(self._send)
        except psycopg.Error as exc:
            self.fail(exc)

    def fail(self, exc: BaseException, reconnect: bool = True) -> None:
        """Fail every read this lane holds, drop the connection, and reconnect in the background."""
        conn, self.conn = self.conn, None
        self.ready = False
        if conn is None:
            return
        loop = asyncio.get_running_loop()
        loop.remove_reader(self.fd)
        if self.writer_on:
            loop.remove_writer(self.fd)
            self.writer_on = False
        reads = [*self.sent, *self.queued]
        self.sent.clear()
        self.queued.clear()
        self.open_batches = 0
        error = exc if isinstance(exc, psycopg.OperationalError) else psycopg.OperationalError(str(exc))
        for read in reads:
            read.error = error
            read.finish()
        self.pipe.stats.reads += len(reads)
        log.warning("pipeline connection lost", lane=self.index, error=str(exc)[:200], failed_reads=len(reads))
        conn.pgconn.finish()
        if reconnect:
            self.pipe.reconnect_soon(self)


class Behind(Exception):
    """No lane's server has replayed as far as a read needs (read-your-writes on a replica)."""


@dataclass
class PipelinedReads:
    """Named single-statement reads, pipelined over `lanes` connections (module docstring)."""

    conninfo: str
    queries: Mapping[str, bytes]  # name -> SQL with %(param)s placeholders
    lanes_wanted: int = 2
    timeout: float = 5.0  # seconds a read may wait for its answer
    max_in_flight: int = 4096  # beyond this, reads fail at once: Postgres is not keeping up
    stats: PipeStats = field(default_factory=PipeStats)

    def __post_init__(self) -> None:
        self.statements = {name: Statement.compile(name, sql) for name, sql in self.queries.items()}
        self.lanes = [_Lane(self, i) for i in range(self.lanes_wanted)]
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def open(self) -> None:
        """Connect every lane; a lane that cannot connect yet keeps trying in the background."""
        for lane in self.lanes:
            try:
                await lane.connect()
            except psycopg.Error as exc:
                log.warning("pipeline connection failed", lane=lane.index, error=str(exc)[:200])
                self.reconnect_soon(lane)
        self._spawn(self._watch())

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        for lane in self.lanes:
            conn, lane.conn = lane.conn, None
            lane.ready = False
            if conn is not None:
                asyncio.get_running_loop().remove_reader(lane.fd)
                for read in [*lane.sent, *lane.queued]:
                    read.error = psycopg.OperationalError("the API is shutting down")
                    read.finish()
                conn.pgconn.finish()

    @property
    def up(self) -> int:
        return sum(lane.up for lane in self.lanes)

    async def fetch(self, name: str, params: Mapping[str, Any], min_replay_lsn: int | None = None) -> Row | None:
        """The first row of a named read (each column's text, or None for NULL), or None. With
        `min_replay_lsn`, only on a lane whose server had replayed that far when last asked;
        Behind when no lane has."""
        statement = self.statements[name]
        # The first lane with no batch out (the read goes this turn), else the one with the
        # fewest reads (it goes with the lane's next batch). At everyday load the first lane
        # carries nearly everything; the others work in parallel when it is busy.
        best: _Lane | None = None
        for lane in self.lanes:
            if not lane.ready or (min_replay_lsn is not None and lane.replay_lsn < min_replay_lsn):
                continue
            if not lane.open_batches:
                best = lane
                break
            if best is None or lane.load < best.load:
                best = lane
        if best is None and min_replay_lsn is not None and any(lane.ready for lane in self.lanes):
            raise Behind(min_replay_lsn)
        if best is None:
            raise psycopg.OperationalError("no connection to Postgres (the read pipeline is reconnecting)")
        if best.load >= self.max_in_flight:
            raise psycopg.OperationalError("too many reads waiting for Postgres")
        return await self._read_on(best, statement, params)

    async def fetch_on(self, index: int, name: str, params: Mapping[str, Any]) -> Row | None:
        """A named read on one lane (to ask that lane's server something about itself)."""
        lane = self.lanes[index]
        if not lane.ready:
            raise psycopg.OperationalError(f"lane {index} is not connected")
        return await self._read_on(lane, self.statements[name], params)

    @staticmethod
    async def _read_on(lane: _Lane, statement: Statement, params: Mapping[str, Any]) -> Row | None:
        future: asyncio.Future[Row | None] = asyncio.get_running_loop().create_future()
        lane.submit(_Read(statement.name, [encode(params[p]) for p in statement.params], future))
        return await future

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def reconnect_soon(self, lane: _Lane) -> None:
        if not self._closed:
            self._spawn(self._reconnect(lane))

    async def _reconnect(self, lane: _Lane) -> None:
        """Try again every RECONNECT_S until the lane is back: within that of Postgres's return,
        however long it was away. The first failure is logged, the rest counted."""
        failed = 0
        while not self._closed and lane.conn is None:
            await asyncio.sleep(RECONNECT_S)
            try:
                await lane.connect()
                self.stats.reconnects += 1
                log.info("pipeline connection back", lane=lane.index, failed_attempts=failed)
            except psycopg.Error as exc:
                failed += 1
                if failed == 1:
                    log.warning("pipeline reconnect failed; retrying", lane=lane.index, error=str(exc)[:200],
                                retry_s=RECONNECT_S)  # fmt: skip

    async def _watch(self) -> None:
        """Fail a lane whose oldest read has waited past the timeout (a hung server or network)."""
        while True:
            await asyncio.sleep(min(1.0, self.timeout / 2))
            now = time.monotonic()
            bound = self.timeout + 2.0  # past the server's own statement_timeout
            for lane in self.lanes:
                if lane.sent and now - lane.sent[0].sent_at > bound:
                    lane.fail(psycopg.OperationalError(f"no answer from Postgres within {bound:g} s"))
