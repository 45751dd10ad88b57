"""The API's Redis client (services/api/redis_client.py open_redis) and its commands batched across concurrent
callers (Batcher), on a real Redis, and on a private one stalled for real."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bench.faults import PrivateRedis
from loadtest.localproc import free_port
from services.api.redis_client import Batcher, open_redis
from tests.conftest import TEST_REDIS_URL


def test_concurrent_commands_share_batches_and_each_gets_its_own_reply(
    redis_prefix: str, redis_client: redis.Redis
) -> None:
    for user in range(20):
        redis_client.sadd(f"{redis_prefix}s{user}", *range(user, user + 5))

    async def scenario() -> None:
        client = open_redis(TEST_REDIS_URL, 1.0)
        batcher = Batcher(client)
        try:
            calls = [(user, list(range(30))) for user in range(20)] * 5
            replies = await asyncio.gather(
                *(batcher.execute("SMISMEMBER", f"{redis_prefix}s{u}", *members) for u, members in calls)
            )
            for (user, members), reply in zip(calls, replies, strict=True):
                assert reply == [1 if user <= m < user + 5 else 0 for m in members]
            assert batcher.commands == len(calls)
            assert batcher.batches < len(calls)  # they came together, so they went together
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_a_failing_command_fails_only_its_caller(redis_prefix: str, redis_client: redis.Redis) -> None:
    redis_client.set(f"{redis_prefix}plain", "x")
    redis_client.sadd(f"{redis_prefix}set", 1)

    async def scenario() -> None:
        client = open_redis(TEST_REDIS_URL, 1.0)
        batcher = Batcher(client)
        try:
            results: list[object] = await asyncio.gather(
                batcher.execute("SMISMEMBER", f"{redis_prefix}plain", 1),  # WRONGTYPE
                batcher.execute("SMISMEMBER", f"{redis_prefix}set", 1, 2),
                return_exceptions=True,
            )
            assert isinstance(results[0], ResponseError)
            assert results[1] == [1, 0]
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_without_redis_every_caller_gets_the_error_and_later_batches_still_go() -> None:
    async def scenario() -> None:
        client = open_redis(f"redis://127.0.0.1:{free_port()}/0", 0.2)
        batcher = Batcher(client)
        try:
            for _ in range(2):  # a failed batch does not stop the next one
                results = await asyncio.gather(
                    *(batcher.execute("SMISMEMBER", "k", 1) for _ in range(5)), return_exceptions=True
                )
                assert all(isinstance(r, RedisConnectionError | OSError) for r in results), results
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_a_caller_that_goes_away_leaves_the_batch_to_the_others(redis_prefix: str, redis_client: redis.Redis) -> None:
    redis_client.sadd(f"{redis_prefix}set", 7)

    async def scenario() -> None:
        client = open_redis(TEST_REDIS_URL, 1.0)
        batcher = Batcher(client)
        try:
            gone = batcher.execute("SMISMEMBER", f"{redis_prefix}set", 7)
            kept = batcher.execute("SMISMEMBER", f"{redis_prefix}set", 7, 8)
            gone.cancel()
            assert await kept == [1, 0]
            with pytest.raises(asyncio.CancelledError):
                await gone
        finally:
            await client.aclose()

    asyncio.run(scenario())


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
            # The replies to the timed-out GETs of "a" arrive now; none may answer a later command.
            assert await client.get("b") == b"2"
            assert list(await asyncio.gather(batcher.execute("GET", "b"), batcher.execute("GET", "a"))) == [b"2", b"1"]
            assert await client.get("b") == b"2"
        finally:
            await client.aclose()

    asyncio.run(scenario())
