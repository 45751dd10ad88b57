"""The API's Redis client (denorm/cache.py TimedRedis): each command bounded by a timeout scope of
the caller's own task, on a real Redis, stalled for real."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from denorm.cache import Batcher, open_redis
from tests.faults import PrivateRedis


def test_a_command_starts_no_task_of_its_own(private_redis: PrivateRedis) -> None:
    """redis-py's socket_timeout sends each command under asyncio.wait_for, which on Python 3.11
    runs it as a task of its own: two more turns of the event loop per command. This client must
    not (a redis-py upgrade that brings a new default back fails here)."""

    async def scenario() -> list[str]:
        loop = asyncio.get_running_loop()
        started: list[str] = []

        def factory(loop: asyncio.AbstractEventLoop, coro: Any) -> asyncio.Task[Any]:
            started.append(getattr(coro, "__qualname__", repr(coro)))
            return asyncio.Task(coro, loop=loop)

        client = open_redis(private_redis.url, 1.0)
        try:
            await client.ping()  # the connection, once
            loop.set_task_factory(factory)
            await client.set("k", "v")
            assert await client.get("k") == b"v"
            await Batcher(client).execute("GET", "k")  # a batch of one: the batcher's task only
        finally:
            loop.set_task_factory(None)
            await client.aclose()
        return started

    assert asyncio.run(scenario()) == ["Batcher._run"]


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
            with pytest.raises(TimeoutError):
                await client.get("a")
            with pytest.raises(TimeoutError):
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
