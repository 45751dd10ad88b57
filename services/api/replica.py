"""Reads from a streaming replica without anyone seeing time run backwards.

With DATABASE_READ_URL set, the short reads go to the replica. Two rules keep that honest:

- **Read-your-writes.** After a caller's write commits, the API records the primary's WAL position
  for that caller in Redis (`{prefix}wrote:{user}`, kept API_READ_YOUR_WRITES_SECONDS, shared by
  every API process). A caller's read goes to the replica only once the replica has replayed past
  that position; until then, to the primary. Other callers' reads stay on the replica.
- **Lag.** A replica further behind than DATABASE_READ_MAX_LAG_MS, or that does not answer, is
  bypassed for the primary until it catches up.

Each pipelined read connection (a lane) is asked, every REPLICA_POLL_S, how far its own server has
replayed; a caller's read goes only to a lane that had replayed past the caller's last write when
last asked. A server's replay only moves forward, so the check errs toward the primary, never
toward a stale answer, and it holds behind a pooler that spreads one address over several
replicas: the position checked is that of the server the read goes to (the trap GitLab's load
balancer fell into, issue 413203, was to check one replica and read from another).
The answers' `as_of` is the read model's own rule (db/schema/refresh_queue.sql `data_now()`): on a
replica, never later than its last replayed commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import psycopg
import redis.asyncio as aioredis

from denorm.logs import get_logger
from denorm.sql import query
from services.api.breaker import Breaker
from services.api.pgpipe import PipelinedReads
from services.api.pools import Pool

log = get_logger("denorm.api.replica")
REPLICA_POLL_S = 0.05
# Keeps the larger of two positions: two processes may record one user's writes out of order.
_RECORD_MAX = """
local old = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > old then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
return 1
"""


@dataclass
class ReplicaReads:
    """Where a read goes, and the replica's state that decides it."""

    reads: PipelinedReads  # the lanes to the replica: each is asked where its own server is
    max_lag_s: float
    remember_ms: int
    redis: aioredis.Redis
    prefix: str
    breaker: Breaker
    lag_s: float = float("inf")  # how far the lanes' replay is behind, the worst of them; inf: unknown
    polled_at: float = 0.0
    served: dict[str, int] = field(default_factory=lambda: {"replica": 0, "primary": 0})
    _task: asyncio.Task[None] | None = None

    def key(self, user: int) -> str:
        return f"{self.prefix}wrote:{user}"

    @property
    def usable(self) -> bool:
        """Answering, polled recently, and within the lag bound."""
        return self.lag_s <= self.max_lag_s and time.monotonic() - self.polled_at < 1.0

    async def needed(self, user: int | None) -> int | None:
        """The replay position a lane must have reached to serve this caller's read (0: any lane
        that has answered a poll), or None: the primary."""
        if not self.usable:
            return None
        if user is None:
            return 0
        if not self.breaker.allow():
            return None  # Redis away: the caller's own writes cannot be looked up
        try:
            value = await self.redis.get(self.key(user))
        except Exception:  # a slow or gone Redis: safe on the primary, and the breaker learns it
            self.breaker.failure()
            return None
        self.breaker.success()
        return int(value) if value is not None else 0

    def count(self, on_replica: bool) -> None:
        self.served["replica" if on_replica else "primary"] += 1

    async def remember_write(self, pool: Pool, user: int) -> None:
        """After a write of this caller's has committed: the primary's WAL insert position now (at or
        past the commit record), kept for the caller's next reads. Runs before the write's answer is
        sent (services/api/front.py), so that no read of the caller's can come before it."""
        try:
            async with pool.connection() as conn:
                row = await (await conn.execute(query("wal_insert_position"))).fetchone()
            if row is not None:
                await self.redis.eval(_RECORD_MAX, 1, self.key(user), int(row[0]), self.remember_ms)
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
        """Ask each lane's own server where its replay is (behind a pooler that spreads one address
        over several replicas, each lane may be on another), every REPLICA_POLL_S."""
        while True:
            lags = []
            for index, lane in enumerate(self.reads.lanes):
                if not lane.ready:
                    continue
                try:
                    row = await self.reads.fetch_on(index, "replica_state", {})
                except (psycopg.Error, OSError) as exc:
                    log.warning("a replica lane did not answer", lane=index, error=repr(exc))
                    continue
                if row is None or row[0] is None:  # not a replica: never read from as one
                    continue
                lane.replay_lsn = int(row[0])
                lags.append(float(row[1]) if row[1] is not None else float("inf"))
            if lags:
                self.lag_s, self.polled_at = max(lags), time.monotonic()
            await asyncio.sleep(REPLICA_POLL_S)
