"""A small in-process cache of whole answers, for the read that costs the database the most: search.

A search reads the fold-kept search documents and costs Postgres up to a millisecond, where every
other read costs a tenth of one, and a popular query is asked by many users at once. The same query asked again within
`API_SEARCH_CACHE_SECONDS` gets the answer computed the first time, as_of included, so the answer
still says truthfully how old it is: every write committed before its as_of is in it.

- Bounded: at most `max_entries` answers, the least recently used evicted first.
- Coalescing: concurrent misses of one key wait for a single computation, so a popular query that
  expires does not send a burst of identical searches to Postgres.
- Refresh ahead: a hit in the last fifth of an answer's life starts its recomputation in the
  background, so an answer that keeps being asked for is replaced before it expires, and its
  readers never wait for Postgres: without it, answers computed together expired together, and
  every request for them waited for their recomputation. An answer is still never older than the
  TTL.
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
    misses: int = 0  # computations started (refreshes ahead included)
    coalesced: int = 0  # misses that waited for another request's computation


REFRESH_AHEAD = 0.2  # the fraction of an answer's life at its end when a hit refreshes it


class AnswerCache:
    def __init__(
        self,
        ttl_seconds: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
        coalescing: bool = True,
        refresh_ahead: bool = True,
    ) -> None:
        self.ttl = ttl_seconds
        self.coalescing = coalescing
        self.refresh_ahead = refresh_ahead
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
            left = entry[0] - self.clock()
            if left > 0:
                self.stats.hits += 1
                self._entries.move_to_end(key)
                if self.refresh_ahead and left < self.ttl * REFRESH_AHEAD and key not in self._inflight:
                    self._start(key, compute)
                return entry[1]
            del self._entries[key]
        pending = self._inflight.get(key)
        if pending is not None and self.coalescing:
            self.stats.coalesced += 1
            return await asyncio.shield(pending)
        return await asyncio.shield(self._start(key, compute))

    def _start(self, key: Hashable, compute: Callable[[], Awaitable[bytes]]) -> asyncio.Future[bytes]:
        self.stats.misses += 1
        # The computation is a task of its own, so that a request that goes away (its client hung
        # up) does not take the answer away from the requests waiting for it.
        task = asyncio.ensure_future(self._compute(key, compute))
        task.add_done_callback(_retrieve)
        self._inflight[key] = task
        return task

    async def _compute(self, key: Hashable, compute: Callable[[], Awaitable[bytes]]) -> bytes:
        try:
            answer = await compute()
        finally:
            self._inflight.pop(key, None)  # (without coalescing, another computation may have replaced it)
        self._entries[key] = (self.clock() + self.ttl, answer)
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return answer


def _retrieve(task: asyncio.Future[bytes]) -> None:
    """Mark a failed computation's exception as seen, even when every request waiting for it left."""
    if not task.cancelled():
        task.exception()
