"""The API's side of the upvote sets (denorm/upvote_sets.py): which of a page's projects the caller
upvoted, in one round trip, the lazy load of a set from Postgres and the write-through of the API's
own changes. When Redis is down, slow or empty, callers get None and ask Postgres, and the breaker
(services/api/breaker.py) keeps a dead Redis from costing every request its timeout."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from denorm.logs import get_logger
from denorm.upvote_sets import LOADED, applied_key, epoch_key, generation_key, set_key
from services.api.breaker import Breaker
from services.api.redis_client import Batcher

log = get_logger("denorm.api.usercache")

# KEYS: set, gen, epoch; ARGV: "gen:epoch" seen before reading Postgres, ttl, members...
_LOAD = """
local seen = (redis.call('GET', KEYS[2]) or '0') .. ':' .. (redis.call('GET', KEYS[3]) or '0')
if seen ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SADD', KEYS[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""
# KEYS: set, gen, applied; ARGV: member, 1 to add / 0 to remove, ttl, the change's mark id ('' if none)
_WRITE = """
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
if redis.call('EXISTS', KEYS[1]) == 1 then
  if ARGV[2] == '1' then redis.call('SADD', KEYS[1], ARGV[1]) else redis.call('SREM', KEYS[1], ARGV[1]) end
end
if ARGV[4] ~= '' then
  redis.call('SADD', KEYS[3], ARGV[4])
  redis.call('EXPIRE', KEYS[3], ARGV[3])
end
return 1
"""


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

    batching: bool = True  # the feed's checks pipelined across requests (Batcher), or each sent alone

    def __post_init__(self) -> None:
        self.batcher = Batcher(self.client)

    def _keys(self, user_id: int) -> list[str]:
        return [set_key(self.prefix, user_id), generation_key(self.prefix, user_id), epoch_key(self.prefix)]

    def _failed(self, exc: Exception) -> None:
        self.stats.errors += 1
        self.breaker.failure()
        log.warning("redis call failed", error=type(exc).__name__, breaker=self.breaker.state)

    async def generation(self, user_id: int) -> str | None:
        """The user's write generation and the epoch, read before a lazy load's Postgres query;
        None: Redis unusable."""
        if not self.breaker.allow():
            return None
        try:
            gen, epoch = await self.client.mget(self._keys(user_id)[1:])
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return None
        self.breaker.success()
        return f"{_text(gen)}:{_text(epoch)}"

    async def upvoted_among(self, user_id: int, project_ids: Sequence[int]) -> set[int] | None:
        """Which of these projects the user upvoted, in one round trip; None when Redis cannot say."""
        if not self.breaker.allow():
            return None
        try:
            command = ("SMISMEMBER", self._keys(user_id)[0], LOADED, *project_ids)
            flags = await (self.batcher.execute(*command) if self.batching else self.client.execute_command(*command))  # type: ignore[no-untyped-call]
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return None
        self.breaker.success()
        if not flags[0]:
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        return {pid for pid, flag in zip(project_ids, flags[1:], strict=True) if flag}

    async def load(self, user_id: int, generation: str, project_ids: Iterable[int]) -> bool:
        """Install the user's set read from Postgres, unless a write came in since `generation`."""
        if not self.breaker.allow():
            return False
        try:
            loaded = await self.client.eval(
                _LOAD, 3, *self._keys(user_id), generation, self.ttl_seconds, LOADED, *project_ids
            )
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return False
        self.breaker.success()
        return bool(loaded)

    async def write_through(self, user_id: int, project_id: int, upvoted: bool, mark: int | None) -> bool:
        """Apply one committed change and record its mark (upvote_set_changes) as applied; True when
        Redis confirmed it. A change that does not reach Redis leaves its mark unrecorded, and the
        drain drops the user's set."""
        if not self.breaker.allow():
            return False
        keys = [set_key(self.prefix, user_id), generation_key(self.prefix, user_id), applied_key(self.prefix, user_id)]
        try:
            await self.client.eval(
                _WRITE, 3, *keys, project_id, "1" if upvoted else "0", self.ttl_seconds, "" if mark is None else mark
            )
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return False
        self.breaker.success()
        return True


def _text(value: bytes | str | None) -> str:
    if value is None:
        return "0"
    return value.decode() if isinstance(value, bytes) else str(value)
