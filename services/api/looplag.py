"""How late the event loop runs what is due: a tick scheduled every TICK_S measures how much later
than asked it ran. Anything that holds the loop (a slow callback, CPU-bound work, a GC pause, a
blocking call) delays every request in flight by as much, and shows here whatever route it came
from: `denorm_api_event_loop_lag_seconds`. The load test's runner reads it per step."""

from __future__ import annotations

import asyncio
import contextlib
import time

from prometheus_client import CollectorRegistry, Histogram

TICK_S = 0.05


class LoopLag:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.histogram = Histogram(
            "denorm_api_event_loop_lag_seconds",
            f"How much later than scheduled a {TICK_S * 1000:g} ms tick of the API's event loop ran",
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
        )
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._tick(), name="loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _tick(self) -> None:
        while True:
            due = time.perf_counter() + TICK_S
            await asyncio.sleep(TICK_S)
            self.histogram.observe(max(0.0, time.perf_counter() - due))
