"""Rate limits on what costs the system most per request: writes, and searches that miss the
answer cache. Each counts against the caller's token and against the client's address, in fixed
windows kept by the `limits` package, in Redis so that every API process shares them; when Redis
does not answer (the breaker is open), each process keeps its own count until it does, so a limit
still holds per process. Over a limit: 429 with Retry-After, before any work is done.

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
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import FixedWindowRateLimiter
from limits.errors import StorageError
from redis.exceptions import RedisError

from denorm.config import Settings
from denorm.logs import get_logger
from denorm.usercache import Breaker
from services.api.errors import ApiError

log = get_logger("denorm.api.ratelimit")
# A limit check never holds a request longer than this, whatever REDIS_TIMEOUT_MS allows the
# upvote sets: past it, the check counts per process (and the Redis breaker hears of it).
MAX_WAIT_S = 0.1

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
        self.shared = FixedWindowRateLimiter(
            RedisStorage(
                "async+redis://",
                implementation="redispy",
                wrap_exceptions=True,
                key_prefix=f"{settings.redis_key_prefix}ratelimit",
                connection_pool=client.connection_pool,  # type: ignore[arg-type]  # the API's client and timeouts
            )
        )
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
        limit. Every limit is counted at once (concurrent round trips to Redis, not one after another)."""
        ids = caller if caller is not None else caller_of(*CALLER.get())
        checks = [(scope, item, identity) for scope, identity in ids for item in self.rules[kind][scope]]
        allowed = await asyncio.gather(*(self._hit(item, kind, scope, identity) for scope, item, identity in checks))
        for (scope, item, _), ok in zip(checks, allowed, strict=True):
            if not ok:
                self.stats.limited[kind] += 1
                raise ApiError(
                    429, "too_many_requests", f"{kind.replace('_', ' ')} are limited to {item} per {scope}",
                    retry_after=item.get_expiry(),
                )  # fmt: skip

    async def _hit(self, item: RateLimitItem, *identifiers: str) -> bool:
        if self.breaker.allow():
            try:
                allowed = await asyncio.wait_for(self.shared.hit(item, *identifiers), self.wait_s)
            except (StorageError, RedisError, OSError, TimeoutError) as exc:
                self.breaker.failure()
                log.warning("rate limits counted per process: redis failed", error=type(exc).__name__)
            else:
                self.breaker.success()
                return allowed
        self.stats.local += 1
        return await self.local.hit(item, *identifiers)
