"""Per-user upvote sets in Redis (the seed's RedisUserCache), never needed for a right answer.

A user's set is loaded lazily from Postgres, checked for a whole feed page in one SMISMEMBER, and
written through after each Postgres commit. Every answer has a Postgres fallback: when Redis is
down, slow or empty, callers get None and ask Postgres, and a circuit breaker keeps a dead Redis
from costing every request its timeout.

Races, and why the set stays right:
- A write-through (INCR gen; SADD/SREM if the set exists) runs while the writer still holds the
  Postgres advisory lock of that (user, project). So write-throughs for one upvote apply in commit
  order.
- A lazy load reads the generation, then Postgres, then installs the set only if the generation has
  not moved (a Lua script). If a write committed after the load's read, either the load is refused,
  or the write-through lands after it and corrects it.
- A write-through that cannot reach Redis leaves the user's key to be deleted once Redis answers
  again; until then the breaker is open and nobody reads the set.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from denorm.cache import Batcher
from denorm.logs import get_logger

log = get_logger("denorm.usercache")

LOADED = b"-"  # member that marks a set as loaded (an empty set does not exist in Redis)


def set_key(prefix: str, user_id: int) -> str:
    """The Redis key of a user's upvote set (the reconciler scans them: `{prefix}upvotes:*`)."""
    return f"{prefix}upvotes:{user_id}"


def generation_key(prefix: str, user_id: int) -> str:
    return f"{prefix}upvotes-gen:{user_id}"


# KEYS: set, gen; ARGV: generation seen before reading Postgres, ttl, members...
_LOAD = """
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SADD', KEYS[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""
# KEYS: set, gen; ARGV: member, 1 to add / 0 to remove, ttl
_WRITE = """
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
if redis.call('EXISTS', KEYS[1]) == 1 then
  if ARGV[2] == '1' then redis.call('SADD', KEYS[1], ARGV[1]) else redis.call('SREM', KEYS[1], ARGV[1]) end
end
return 1
"""


@dataclass
class Breaker:
    """Closed: use Redis. Open after `threshold` failures in a row: skip it for `cooldown` seconds,
    then let one call through (half open) to see whether it is back."""

    threshold: int = 3
    cooldown: float = 5.0
    failures: int = 0
    opened_at: float | None = None

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half_open" if time.monotonic() - self.opened_at >= self.cooldown else "open"

    def allow(self) -> bool:
        return self.state != "open"

    def success(self) -> bool:
        """Record a success; True when this closed an open breaker."""
        was_open = self.opened_at is not None
        self.failures = 0
        self.opened_at = None
        return was_open

    def failure(self) -> None:
        self.failures += 1
        if self.failures >= self.threshold or self.opened_at is not None:
            self.opened_at = time.monotonic()


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    errors: int = 0


@dataclass
class UserCache:
    client: aioredis.Redis
    prefix: str
    ttl_seconds: int = 3600
    breaker: Breaker = field(default_factory=Breaker)
    stats: CacheStats = field(default_factory=CacheStats)
    # Users whose write-through failed: their sets may be stale and go once Redis is back.
    stale_users: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.batcher = Batcher(self.client)  # the feed's checks, pipelined across requests

    def _keys(self, user_id: int) -> list[str]:
        return [set_key(self.prefix, user_id), generation_key(self.prefix, user_id)]

    async def _recovered(self) -> None:
        if self.stale_users:
            users, self.stale_users = self.stale_users, set()
            keys = [k for u in users for k in self._keys(u)[:1]]
            await self.client.delete(*keys)
            log.info("redis back; dropped sets written during the outage", users=len(users))

    async def _ok(self) -> None:
        if self.breaker.success():
            try:
                await self._recovered()
            except RedisError:
                self.breaker.failure()

    def _failed(self, exc: Exception) -> None:
        self.stats.errors += 1
        self.breaker.failure()
        log.warning("redis call failed", error=type(exc).__name__, breaker=self.breaker.state)

    async def generation(self, user_id: int) -> str | None:
        """The user's write generation, read before a lazy load's Postgres query; None: Redis unusable."""
        if not self.breaker.allow():
            return None
        try:
            value = await self.client.get(self._keys(user_id)[1])
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return None
        await self._ok()
        if value is None:
            return "0"
        return value.decode() if isinstance(value, bytes) else str(value)

    async def upvoted_among(self, user_id: int, project_ids: Sequence[int]) -> set[int] | None:
        """Which of these projects the user upvoted, in one round trip; None when Redis cannot say."""
        if not self.breaker.allow():
            return None
        try:
            flags = await self.batcher.execute("SMISMEMBER", self._keys(user_id)[0], LOADED, *project_ids)
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return None
        await self._ok()
        if not flags[0]:
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        return {pid for pid, flag in zip(project_ids, flags[1:], strict=True) if flag}

    async def load(self, user_id: int, generation: str, project_ids: Iterable[int]) -> bool:
        """Install the user's set read from Postgres, unless a write came in since `generation`."""
        if not self.breaker.allow():
            return False
        keys = self._keys(user_id)
        try:
            loaded = await self.client.eval(_LOAD, 2, *keys, generation, self.ttl_seconds, LOADED, *project_ids)
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return False
        await self._ok()
        return bool(loaded)

    async def write_through(self, user_id: int, project_id: int, upvoted: bool) -> None:
        """Apply one committed change; on failure the user's set is dropped once Redis is back."""
        if not self.breaker.allow():
            self.stale_users.add(user_id)
            return
        try:
            await self.client.eval(
                _WRITE, 2, *self._keys(user_id), project_id, "1" if upvoted else "0", self.ttl_seconds
            )
        except (RedisError, OSError) as exc:
            self.stale_users.add(user_id)
            self._failed(exc)
            return
        await self._ok()
