"""The search answer cache (services/api/answercache.py): expiry, bounds, coalescing, errors."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from services.api.answercache import AnswerCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def computing(answers: list[bytes], delay: float = 0.0) -> tuple[Callable[[], Awaitable[bytes]], list[int]]:
    """A computation that returns the next answer each time it runs, and a list that counts its runs."""
    runs: list[int] = []

    async def compute() -> bytes:
        runs.append(1)
        await asyncio.sleep(delay)
        return answers[len(runs) - 1]

    return compute, runs


def test_an_answer_is_reused_until_it_expires() -> None:
    async def scenario() -> None:
        clock = Clock()
        cache = AnswerCache(5.0, 100, clock)
        compute, runs = computing([b"first", b"second"])
        assert await cache.get("q", compute) == b"first"
        clock.now += 3.9  # before the refresh-ahead window (the last second here)
        assert await cache.get("q", compute) == b"first"
        clock.now += 1.2
        assert await cache.get("q", compute) == b"second"
        assert len(runs) == 2 and (cache.stats.hits, cache.stats.misses) == (1, 2)

    asyncio.run(scenario())


def test_an_answer_asked_for_near_its_end_is_replaced_before_it_expires() -> None:
    async def scenario() -> None:
        clock = Clock()
        cache = AnswerCache(5.0, 100, clock)
        compute, runs = computing([b"first", b"second", b"third"], delay=0.01)
        assert await cache.get("q", compute) == b"first"
        clock.now += 4.5  # in the last fifth: answered at once from the cache, recomputed behind
        assert await cache.get("q", compute) == b"first"
        assert await cache.get("q", compute) == b"first"  # one recomputation at a time
        await asyncio.sleep(0.05)
        assert len(runs) == 2
        clock.now += 1.0  # past the first answer's end, within the second's life
        assert await cache.get("q", compute) == b"second"
        assert len(runs) == 2 and (cache.stats.hits, cache.stats.misses) == (3, 2)

    asyncio.run(scenario())


def test_the_least_recently_used_answer_goes_first() -> None:
    async def scenario() -> None:
        cache = AnswerCache(60.0, 2, Clock())
        for key in ("a", "b"):
            await cache.get(key, computing([key.encode()])[0])
        await cache.get("a", computing([b"unused"])[0])  # a hit: "a" is now the most recent
        await cache.get("c", computing([b"c"])[0])
        assert len(cache) == 2
        compute, runs = computing([b"b again"])
        assert await cache.get("b", compute) == b"b again" and runs == [1]  # evicted, computed again
        compute, runs = computing([b"unused"])
        assert await cache.get("c", compute) == b"c" and runs == []

    asyncio.run(scenario())


def test_concurrent_misses_share_one_computation() -> None:
    async def scenario() -> None:
        cache = AnswerCache(5.0, 100, Clock())
        compute, runs = computing([b"once"], delay=0.05)
        answers = await asyncio.gather(*(cache.get("q", compute) for _ in range(10)))
        assert answers == [b"once"] * 10 and runs == [1]
        assert (cache.stats.misses, cache.stats.coalesced) == (1, 9)

    asyncio.run(scenario())


def test_a_failure_reaches_every_waiter_and_is_not_cached() -> None:
    async def scenario() -> None:
        cache = AnswerCache(5.0, 100, Clock())

        async def failing() -> bytes:
            await asyncio.sleep(0.02)
            raise RuntimeError("database gone")

        results = await asyncio.gather(*(cache.get("q", failing) for _ in range(3)), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results)
        compute, runs = computing([b"recovered"])
        assert await cache.get("q", compute) == b"recovered" and runs == [1]

    asyncio.run(scenario())


def test_a_waiter_keeps_its_answer_when_the_request_that_started_it_goes_away() -> None:
    async def scenario() -> None:
        cache = AnswerCache(5.0, 100, Clock())
        compute, runs = computing([b"shared"], delay=0.05)
        first = asyncio.ensure_future(cache.get("q", compute))
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(cache.get("q", compute))
        await asyncio.sleep(0.01)
        first.cancel()  # its client hung up
        assert await second == b"shared" and runs == [1]
        with pytest.raises(asyncio.CancelledError):
            await first

    asyncio.run(scenario())


def test_zero_seconds_turns_the_cache_off() -> None:
    async def scenario() -> None:
        cache = AnswerCache(0.0, 100, Clock())
        compute, runs = computing([b"1", b"2"])
        assert [await cache.get("q", compute), await cache.get("q", compute)] == [b"1", b"2"]
        assert len(runs) == 2 and len(cache) == 0

    asyncio.run(scenario())
