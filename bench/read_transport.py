"""The two ways a read reaches its store, side by side, without HTTP: the CPU each read costs.

Postgres: the trending feed page (the route's own query) sent by concurrent tasks through the
pool (GatedPool, psycopg's cursor, one round trip each) and through the pipeline
(services/api/pgpipe.py). Redis: a feed page's SMISMEMBER (the marker and twenty ids) sent directly with
redis-py and through the Batcher (services/api/redis_client.py). Each runs for --seconds with --tasks
concurrent callers on uvloop, in this one process; the CPU of this process, of the Postgres
backends and of redis-server is read from /proc.

    python -m bench.read_transport [--scale standard] [--database-url URL] [--redis-url URL] [--seconds 6]
                                   [--tasks 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
import uvloop

from bench.api_throughput import backends, cpu_ticks
from bench.scratch import add_dataset_arguments, seeded_database
from denorm.logs import configure_logging
from services.api.db import pipelined_queries
from services.api.feed import SORTS, Sort
from services.api.pools import open_pipeline, open_pool
from services.api.redis_client import Batcher, open_redis

FEED = SORTS[Sort.TRENDING].statement
FEED_PARAMS = {"sort": "trending", "limit": 20, "offset": 0, "page": None, "after_key": float("inf"),
               "after_id": 2**63 - 1}  # fmt: skip
MEMBERS = [b"-", *range(1000, 1020)]


def redis_server_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() == "redis-server":
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


async def measure(
    call: Callable[[], Awaitable[Any]], tasks: int, seconds: float, others: list[int]
) -> tuple[float, float, float]:
    """(calls per second, µs of this process's CPU per call, µs of `others`' CPU per call)."""
    done = 0
    stop = False

    async def worker() -> None:
        nonlocal done
        while not stop:
            await call()
            done += 1

    workers = [asyncio.create_task(worker()) for _ in range(tasks)]
    await asyncio.sleep(1)  # warm
    tick = os.sysconf("SC_CLK_TCK")
    start, mine, theirs = done, cpu_ticks([os.getpid()]), cpu_ticks(others)
    began = time.perf_counter()
    await asyncio.sleep(seconds)
    calls, elapsed = done - start, time.perf_counter() - began
    mine, theirs = cpu_ticks([os.getpid()]) - mine, cpu_ticks(others) - theirs
    stop = True
    await asyncio.gather(*workers)
    return calls / elapsed, mine / tick / calls * 1e6, theirs / tick / calls * 1e6


async def run(url: str, redis_url: str, seconds: float, tasks: int) -> None:
    print(f"{tasks} concurrent callers, {seconds:g} s each, one process (uvloop)")
    print(f"{'store':<9}{'way':<34}{'calls/s':>10}{'this µs/call':>14}{'server µs/call':>16}")
    pool = await open_pool(url, "bench", 10, 10)
    await pool.wait()
    pipe = await open_pipeline(url, "bench", pipelined_queries(), 2, 5000)
    query = pipelined_queries()[FEED]
    try:

        async def via_pool() -> Any:
            async with pool.connection() as conn:
                return await (await conn.execute(query, FEED_PARAMS)).fetchone()

        async def via_pipe() -> Any:
            return await pipe.fetch(FEED, FEED_PARAMS)

        first = await via_pool()
        assert first is not None and (await via_pipe()) == (first[0].encode(), first[1].encode())
        for way, call in (("pool (one round trip each)", via_pool), ("pipeline (services/api/pgpipe.py)", via_pipe)):
            rate, mine, theirs = await measure(call, tasks, seconds, backends(url))
            print(f"{'postgres':<9}{way:<34}{rate:>10,.0f}{mine:>14.0f}{theirs:>16.0f}")
        print(f"{'':<9}pipeline: {pipe.stats.reads / max(pipe.stats.writes, 1):.1f} reads per socket write")
    finally:
        await pipe.close()
        await pool.close()

    client: aioredis.Redis = open_redis(redis_url, 1.0)
    batcher = Batcher(client)
    key = f"bench-read-transport:{os.getpid()}"
    await client.sadd(key, b"-", *range(1000, 1040, 3))
    try:

        async def direct() -> Any:
            return await client.smismember(key, MEMBERS)

        async def batched() -> Any:
            return await batcher.execute("SMISMEMBER", key, *MEMBERS)

        assert await direct() == await batched()
        for way, call in (("redis-py, one command each", direct), ("Batcher (services/api/redis_client.py)", batched)):
            rate, mine, theirs = await measure(call, tasks, seconds, redis_server_pids())
            print(f"{'redis':<9}{way:<34}{rate:>10,.0f}{mine:>14.0f}{theirs:>16.0f}")
        print(f"{'':<9}Batcher: {batcher.commands / max(batcher.batches, 1):.1f} commands per pipeline")
    finally:
        await client.delete(key)
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_arguments(parser)
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--tasks", type=int, default=32)
    args = parser.parse_args()
    configure_logging("WARNING")
    with seeded_database("bench_transport", args.scale, args.database_url) as url:
        uvloop.run(run(url, args.redis_url, args.seconds, args.tasks))


if __name__ == "__main__":
    main()
