"""Rate limits on what costs the system most per request: writes, and searches that miss the
answer cache. Each counts against the caller's token and against the client's address, in fixed
windows (a counter per identity and limit that expires a window after its first hit, the `limits`
package's fixed window), in Redis so that every API process shares them: every counter a request
counts against in one script, one round trip (the package's Redis storage makes one per counter,
and on a slow machine those cost a write 1.5 ms of its 5: docs/performance.md). When Redis does not
answer (the breaker is open), each process counts on its own with the package's memory storage
until it does, so a limit still holds per process. Over a limit: 429 with Retry-After, before any
work is done.

The caller is recorded once per request by the front door (services/api/front.py) in a context
variable: the search's miss, computed later in a task of the answer cache, still sees it.
"""

from __future__ import annotations

import asyncio
import hashlib
from contextvars import ContextVar
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import FixedWindowRateLimiter
from redis.exceptions import RedisError

from denorm.config import Settings
from denorm.logs import get_logger
from services.api.breaker import Breaker
from services.api.errors import ApiError

log = get_logger("denorm.api.ratelimit")
# A limit check never holds a request longer than this, whatever REDIS_TIMEOUT_MS allows the
# upvote sets: past it, the check counts per process (and the Redis breaker hears of it).
MAX_WAIT_S = 0.1
# Count one hit on each counter (KEYS), starting a counter's window (ARGV: seconds) at its first hit;
# the counts after the hits.
_HIT = """
local counts = {}
for i, key in ipairs(KEYS) do
    local n = redis.call('INCR', key)
    if n == 1 then redis.call('EXPIRE', key, ARGV[i]) end
    counts[i] = n
end
return counts
"""

# Who is asking: the request's bearer token and client address, as the front door saw them (the
# identities are worked out only when a limit is checked: most requests are reads that never are).
CALLER: ContextVar[tuple[str | None, str | None]] = ContextVar("caller", default=(None, None))


def caller_of(token: str | None, address: str | None) -> tuple[tuple[str, str], ...]:
    """The identities a request counts against. A token by its digest: a signed one names its user
    for as long as it lives, and a forged one is refused anyway, within the address's limit."""
    ids: list[tuple[str, str]] = []
    if token:
        ids.append(("token", hashlib.blake2b(token.encode(), digest_size=12).hexdigest()))
    if address:
        ids.append(("address", address))
    return tuple(ids)


@dataclass
class RateLimitStats:
    limited: dict[str, int] = field(default_factory=lambda: {"writes": 0, "search_misses": 0})
    local: int = 0  # checks counted per process because Redis did not answer


class RateLimits:
    def __init__(self, settings: Settings, client: aioredis.Redis, breaker: Breaker) -> None:
        self.hit_shared = client.register_script(_HIT)
        self.prefix = f"{settings.redis_key_prefix}ratelimit:"
        self.local = FixedWindowRateLimiter(MemoryStorage())
        self.breaker = breaker  # the Redis breaker the upvote sets use: one view of Redis's health
        self.wait_s = min(settings.redis_timeout_ms / 1000, MAX_WAIT_S)
        self.rules: dict[str, dict[str, list[RateLimitItem]]] = {
            "writes": {"token": parse_many(settings.api_rate_writes_per_token),
                       "address": parse_many(settings.api_rate_writes_per_address)},
            "search_misses": {"token": parse_many(settings.api_rate_search_misses_per_token),
                              "address": parse_many(settings.api_rate_search_misses_per_address)},
        }  # fmt: skip
        self.stats = RateLimitStats()

    async def check(self, kind: str, caller: tuple[tuple[str, str], ...] | None = None) -> None:
        """Count one `kind` for the caller (the current request's by default); ApiError 429 over a
        limit. Every limit is counted, the refused ones too."""
        ids = caller if caller is not None else caller_of(*CALLER.get())
        checks = [(item, (kind, scope, identity)) for scope, identity in ids for item in self.rules[kind][scope]]
        allowed = await self._shared(checks)
        if allowed is None:
            self.stats.local += 1
            allowed = [await self.local.hit(item, *names) for item, names in checks]
        for (item, (_, scope, _)), ok in zip(checks, allowed, strict=True):
            if not ok:
                self.stats.limited[kind] += 1
                raise ApiError(
                    429, "too_many_requests", f"{kind.replace('_', ' ')} are limited to {item} per {scope}",
                    retry_after=item.get_expiry(),
                )  # fmt: skip

    async def _shared(self, checks: list[tuple[RateLimitItem, tuple[str, str, str]]]) -> list[bool] | None:
        """Each limit's verdict from the shared counters, or None when Redis cannot say."""
        if not self.breaker.allow():
            return None
        keys = [self.prefix + item.key_for(*names) for item, names in checks]
        expiries = [item.get_expiry() for item, _ in checks]
        try:
            counts = await asyncio.wait_for(self.hit_shared(keys=keys, args=expiries), self.wait_s)
        except (RedisError, OSError, TimeoutError) as exc:
            self.breaker.failure()
            log.warning("rate limits counted per process: redis failed", error=type(exc).__name__)
            return None
        self.breaker.success()
        return [int(n) <= item.amount for n, (item, _) in zip(counts, checks, strict=True)]
