"""Per-user upvote sets in Redis (the seed's RedisUserCache), never needed for a right answer.

A user's set is loaded lazily from Postgres, checked for a whole feed page in one SMISMEMBER, and
written through after each Postgres commit. Every answer has a Postgres fallback: when Redis is
down, slow or empty, callers get None and ask Postgres, and a circuit breaker keeps a dead Redis
from costing every request its timeout.

Why a set is never wrong for long (db/readmodels/upvote_sets.sql has the Postgres side):
- Every change to project_upvotes, whoever makes it, leaves a mark in Postgres
  (upvote_set_changes, by a statement trigger). The refresher drains the marks: drop_sets() bumps
  each marked user's generation and deletes the set, unless Redis recorded that very change as
  applied; the next read loads a dropped set again.
- The API's own change is written through (INCR gen; SADD/SREM if the set exists; its mark's id
  recorded as applied, all in one script) while the writer still holds the Postgres advisory lock
  of that (user, project), so write-throughs for one upvote apply in commit order. A write-through
  that failed, or never reached Redis, leaves its mark unrecorded, and the drain drops the set.
- A lazy load reads the generation (the user's and the global epoch a TRUNCATE bumps), then
  Postgres, then installs the set only if neither has moved (a Lua script). If a change committed
  after the load's read, either the load is refused, or the write-through or the drain lands after
  it and corrects it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import redis
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


def applied_key(prefix: str, user_id: int) -> str:
    """The ids of the user's marks whose change a write-through applied (the drain skips those)."""
    return f"{prefix}upvotes-applied:{user_id}"


def epoch_key(prefix: str) -> str:
    """Bumped when every set goes at once (a TRUNCATE): a load that read it before is refused."""
    return f"{prefix}upvotes-epoch"


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
# KEYS: set1, gen1, applied1, set2, ...; ARGV: ttl, then each mark's id ('' for a mark of no single
# change). The generation first, so that a load in flight is refused. Returns the sets dropped.
_DROP = """
local dropped = 0
for i = 1, #KEYS, 3 do
  local id = ARGV[(i - 1) / 3 + 2]
  if id == '' or redis.call('SREM', KEYS[i + 2], id) == 0 then
    redis.call('INCR', KEYS[i + 1])
    redis.call('EXPIRE', KEYS[i + 1], ARGV[1])
    redis.call('DEL', KEYS[i])
    dropped = dropped + 1
  end
end
return dropped
"""


def drop_sets(
    client: redis.Redis, prefix: str, marks: Sequence[tuple[int, int | None]], everyone: bool, ttl_seconds: int
) -> int:
    """Act on these marks, (user, id of the mark when it is one API change, else None): drop each
    user's set unless Redis recorded that change as applied; with `everyone`, every set. Returns
    the users' sets dropped. Raises RedisError when Redis did not confirm: the caller keeps its
    marks and tries again."""
    if everyone:
        client.incr(epoch_key(prefix))
        batch: list[bytes] = []
        for key in client.scan_iter(match=set_key(prefix, 0)[:-1] + "*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                client.delete(*batch)
                batch = []
        if batch:
            client.delete(*batch)
    if not marks:
        return 0
    keys = [k for u, _ in marks for k in (set_key(prefix, u), generation_key(prefix, u), applied_key(prefix, u))]
    ids = ["" if mark is None else str(mark) for _, mark in marks]
    return int(client.eval(_DROP, len(keys), *keys, ttl_seconds, *ids))


@dataclass
class Breaker:
    """Closed: use Redis. Open after `threshold` failures in a row: skip it for `cooldown` seconds.
    Then half open: one call goes through as a probe (another only if it never reports within a
    cooldown); its success closes the breaker, its failure opens it again."""

    threshold: int = 3
    cooldown: float = 5.0
    failures: int = 0
    opened_at: float | None = None
    probe_at: float | None = None  # when the half-open breaker let its probe through

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half_open" if time.monotonic() - self.opened_at >= self.cooldown else "open"

    def allow(self) -> bool:
        state = self.state
        if state != "half_open":
            return state == "closed"
        now = time.monotonic()
        if self.probe_at is not None and now - self.probe_at < self.cooldown:
            return False  # the probe is out
        self.probe_at = now
        return True

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.probe_at = None

    def failure(self) -> None:
        self.failures += 1
        self.probe_at = None
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
