"""The system under a benchmark: `denorm api` and `denorm refresher` as processes on a database."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from denorm.config import DEV_JWT_SECRET
from loadtest.localproc import free_port, wait_ready


@dataclass(frozen=True)
class System:
    base: str  # the API's URL
    admin: str  # its admin port's: /metrics, /api/admin/*
    api: subprocess.Popen[bytes]
    refresher: subprocess.Popen[bytes]


def bench_settings(url: str, port: int) -> dict[str, str]:
    """The settings a benchmark's API (on `port`) and refresher run with: the development token
    secret, no access log, rate limits out of the way, Redis keys of their own."""
    return {"DATABASE_URL": url, "JWT_SECRET": DEV_JWT_SECRET, "ENVIRONMENT": "development",
            "API_ACCESS_LOG": "false", "API_RATE_WRITES_PER_ADDRESS": "1000000/second",
            "API_RATE_SEARCH_MISSES_PER_ADDRESS": "1000000/second",
            "REFRESHER_METRICS_PORT": "0", "LOG_LEVEL": "WARNING", "REDIS_KEY_PREFIX": f"bench-{port}:"}  # fmt: skip


@contextmanager
def running_system(url: str, **env: str) -> Iterator[System]:
    """One API process and the refresher on `url`, ready once the refresher's first pass is done;
    `env` adds settings (API_UPVOTE_DURABLE="false", ...). Both are stopped on the way out."""
    port, admin_port = free_port(), free_port()
    environment = {**os.environ, **bench_settings(url, port), **env}
    denorm = os.path.join(os.path.dirname(sys.executable), "denorm")
    refresher = subprocess.Popen([denorm, "refresher"], env=environment, stdout=subprocess.DEVNULL)
    api = subprocess.Popen(
        [denorm, "api", "--port", str(port), "--admin-port", str(admin_port)],
        env=environment,
        stdout=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, api)
        time.sleep(3)  # the refresher's first pass
        yield System(base, f"http://127.0.0.1:{admin_port}", api, refresher)
    finally:
        api.terminate()
        refresher.terminate()
        api.wait(timeout=30)
        refresher.wait(timeout=90)  # its current fold first: after a write burst, a backlog


async def paced(one: Callable[[], Awaitable[None]], rate: float, seconds: float) -> int:
    """`one()` started `rate` times a second for `seconds`, each on its own (an open loop: a slow
    answer does not hold back the next request); returns how many, once all have finished."""
    tasks = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        tasks.append(asyncio.ensure_future(one()))
        await asyncio.sleep(1 / rate)
    await asyncio.gather(*tasks)
    return len(tasks)
