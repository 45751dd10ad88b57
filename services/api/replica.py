"""Reads from a streaming replica without anyone seeing time run backwards.

With DATABASE_READ_URL set, the short reads go to the replica. Two rules keep that honest:

- **Read-your-writes.** After a caller's write commits, the API records the primary's WAL position
  for that caller in Redis (`{prefix}wrote:{user}`, kept API_READ_YOUR_WRITES_SECONDS, shared by
  every API process). A caller's read goes to the replica only once the replica has replayed past
  that position; until then, to the primary. Other callers' reads stay on the replica.
- **Lag.** A replica further behind than DATABASE_READ_MAX_LAG_MS, or that does not answer, is
  bypassed for the primary until it catches up.

The replica's replay position and lag are polled here, every REPLICA_POLL_S, on a connection of
their own: a read compares against the last poll, which can only be behind the replica's true
position, so the comparison errs toward the primary, never toward a stale answer. (A pooler that
spreads one URL over several replicas would break that: give each API its own replica's address.)
The answers' `as_of` is the read model's own rule (db/schema/refresh_queue.sql `data_now()`): on a
replica, never later than its last replayed commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
import redis.asyncio as aioredis
from psycopg import AsyncConnection

from denorm.logs import get_logger
from denorm.sql import query
from denorm.usercache import Breaker

if TYPE_CHECKING:
    from services.api.deps import Pool

log = get_logger("denorm.api.replica")
REPLICA_POLL_S = 0.05
# Keeps the larger of two positions: two processes may record one user's writes out of order.
_RECORD_MAX = """
local old = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > old then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
return 1
"""


def lsn_to_int(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


@dataclass
class ReplicaReads:
    """Where a read goes, and the replica's state that decides it."""

    url: str
    max_lag_s: float
    remember_ms: int
    redis: aioredis.Redis
    prefix: str
    breaker: Breaker
    replay_lsn: int = 0  # the replica's replay position at the last poll
    lag_s: float = float("inf")  # how far its replay is behind; inf until a poll succeeds
    polled_at: float = 0.0
    served: dict[str, int] = field(default_factory=lambda: {"replica": 0, "primary": 0})
    _task: asyncio.Task[None] | None = None

    def key(self, user: int) -> str:
        return f"{self.prefix}wrote:{user}"

    @property
    def usable(self) -> bool:
        """Answering, polled recently, and within the lag bound."""
        return self.lag_s <= self.max_lag_s and time.monotonic() - self.polled_at < 1.0

    async def on_replica(self, user: int | None) -> bool:
        """Whether this caller's read may go to the replica."""
        if not self.usable:
            return self._count(False)
        if user is None:
            return self._count(True)
        wrote = await self._last_write(user)
        return self._count(wrote is None or wrote <= self.replay_lsn)

    def _count(self, replica: bool) -> bool:
        self.served["replica" if replica else "primary"] += 1
        return replica

    async def _last_write(self, user: int) -> int | None:
        if not self.breaker.allow():
            return 2**63  # Redis away: the caller's own reads go to the primary
        try:
            value = await self.redis.get(self.key(user))
        except Exception:  # a slow or gone Redis: safe on the primary, and the breaker learns it
            self.breaker.failure()
            return 2**63
        self.breaker.success()
        return int(value) if value is not None else None

    async def remember_write(self, pool: Pool, user: int) -> None:
        """After a write of this caller's has committed: the primary's WAL insert position now (at or
        past the commit record), kept for the caller's next reads. Runs before the write's answer is
        sent (services/api/front.py), so that no read of the caller's can come before it."""
        try:
            async with pool.connection() as conn:
                row = await (await conn.execute(query("wal_insert_position"))).fetchone()
            if row is not None:
                await self.redis.eval(_RECORD_MAX, 1, self.key(user), lsn_to_int(str(row[0])), self.remember_ms)
        except Exception as exc:  # Postgres or Redis away: the reads may miss the write for a moment
            log.warning("could not record a write's position", user=user, error=repr(exc))

    # --- the poll ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._poll(), name="replica-poll")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _poll(self) -> None:
        conn: AsyncConnection[Any] | None = None
        try:
            while True:
                try:
                    if conn is None or conn.closed:
                        conn = await AsyncConnection.connect(self.url, autocommit=True, connect_timeout=2)
                    row = await (await conn.execute(query("replica_state"))).fetchone()
                    if row is not None and row[0] is not None:
                        self.replay_lsn = lsn_to_int(str(row[0]))
                        self.lag_s = float(row[1]) if row[1] is not None else float("inf")
                        self.polled_at = time.monotonic()
                except (psycopg.Error, OSError) as exc:
                    self.lag_s = float("inf")
                    if conn is not None:
                        await conn.close()
                    conn = None
                    log.warning("the replica does not answer", error=repr(exc))
                    await asyncio.sleep(1.0)
                await asyncio.sleep(REPLICA_POLL_S)
        finally:  # stopped (the app's shutdown cancels it)
            if conn is not None:
                await conn.close()
