"""The API's Redis client (denorm/cache.py open_redis) against a Redis stalled for real: each wait
is bounded, and a reply that comes after its caller gave up never answers another command."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.exceptions import TimeoutError as RedisTimeoutError

from denorm.cache import Batcher, open_redis
from tests.faults import PrivateRedis


def test_a_stalled_redis_times_out_within_the_bound_and_no_late_reply_is_misread(
    private_redis: PrivateRedis,
) -> None:
    async def scenario() -> None:
        client = open_redis(private_redis.url, 0.1)
        batcher = Batcher(client)
        try:
            await client.set("a", "1")
            await client.set("b", "2")
            sleeper = private_redis.stall(1.0)
            began = time.perf_counter()
            with pytest.raises(RedisTimeoutError):
                await client.get("a")
            with pytest.raises(RedisTimeoutError):
                await batcher.execute("GET", "a")
            await asyncio.gather(batcher.execute("GET", "a"), batcher.execute("GET", "b"), return_exceptions=True)
            assert time.perf_counter() - began < 0.9  # the bound, not the stall, ended each wait
            await asyncio.to_thread(sleeper.wait)
            # The replies to the cancelled GETs of "a" arrive now; none may answer a later command.
            assert await client.get("b") == b"2"
            assert list(await asyncio.gather(batcher.execute("GET", "b"), batcher.execute("GET", "a"))) == [b"2", b"1"]
            assert await client.get("b") == b"2"
        finally:
            await client.aclose()

    asyncio.run(scenario())
