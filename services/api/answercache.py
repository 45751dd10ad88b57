"""A small in-process cache of whole answers, for the one read that is expensive at the database: search.

A search reads a seconds-stale view (mv_search_documents) and costs milliseconds in Postgres,
where every other read costs a tenth of one. The same query asked again within
`API_SEARCH_CACHE_SECONDS` gets the answer computed the first time, as_of included, so the answer
still says truthfully how old it is: every write committed before its as_of is in it.

- Bounded: at most `max_entries` answers, the least recently used evicted first.
- Coalescing: concurrent misses of one key wait for a single computation, so a popular query that
  expires does not send a burst of identical searches to Postgres.
- Errors are not cached: every waiter gets the exception, and the next request computes again.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass


@dataclass
class AnswerCacheStats:
    hits: int = 0
    misses: int = 0  # computations started
    coalesced: int = 0  # misses that waited for another request's computation


class AnswerCache:
    def __init__(self, ttl_seconds: float, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self.clock = clock
        self.stats = AnswerCacheStats()
        self._entries: OrderedDict[Hashable, tuple[float, bytes]] = OrderedDict()
        self._inflight: dict[Hashable, asyncio.Future[bytes]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: Hashable, compute: Callable[[], Awaitable[bytes]]) -> bytes:
        if self.ttl <= 0:
            self.stats.misses += 1
            return await compute()
        entry = self._entries.get(key)
        if entry is not None:
            if entry[0] > self.clock():
                self.stats.hits += 1
                self._entries.move_to_end(key)
                return entry[1]
            del self._entries[key]
        pending = self._inflight.get(key)
        if pending is not None:
            self.stats.coalesced += 1
            return await asyncio.shield(pending)
        self.stats.misses += 1
        # The computation is a task of its own, so that a request that goes away (its client hung
        # up) does not take the answer away from the requests waiting for it.
        task = asyncio.ensure_future(self._compute(key, compute))
        task.add_done_callback(_retrieve)
        self._inflight[key] = task
        return await asyncio.shield(task)

    async def _compute(self, key: Hashable, compute: Callable[[], Awaitable[bytes]]) -> bytes:
        try:
            answer = await compute()
        finally:
            del self._inflight[key]
        self._entries[key] = (self.clock() + self.ttl, answer)
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return answer


def _retrieve(task: asyncio.Future[bytes]) -> None:
    """Mark a failed computation's exception as seen, even when every request waiting for it left."""
    if not task.cancelled():
        task.exception()
