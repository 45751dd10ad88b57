"""Garbage-collection pauses, measured and kept short: a pause stalls every request in flight.

A full collection walks every object the collector tracks. The API process holds about 100k of
them once its modules are imported and the app is built, and a full collection of those alone
took 53 ms; under the 5000-user load test, with thousands of open connections on top, full
collections took 70 to 150 ms, every few seconds, and showed up as the upvote's p95 and as Redis
calls past their 50 ms timeout (docs/performance.md). So, once the app is ready, everything it
holds then is frozen (`gc.freeze()`): moved out of the collector's sight, since it lives as long
as the process. The pauses go into `denorm_api_gc_pause_seconds{generation}`, and a long one is
logged.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from prometheus_client import CollectorRegistry, Histogram

from denorm.logs import get_logger

log = get_logger("denorm.api")
LONG_PAUSE_S = 0.02


class GcPauses:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.histogram = Histogram(
            "denorm_api_gc_pause_seconds",
            "Garbage-collection pauses of the API process, by generation collected",
            ["generation"],
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
        )
        self._children = [self.histogram.labels(str(g)) for g in range(3)]
        self._started = 0.0
        self._thresholds = gc.get_threshold()

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        generation = int(info.get("generation", 2))
        self._children[min(generation, 2)].observe(pause)
        if pause >= LONG_PAUSE_S:
            log.warning("long gc pause", generation=generation, ms=round(pause * 1000, 1),
                        collected=info.get("collected"))  # fmt: skip

    def install(self, thresholds: tuple[int, int, int] | None = None) -> None:
        """Watch the pauses, freeze what the ready app holds (collect first: garbage is not kept),
        and collect less often (`thresholds`, gc.set_threshold's three)."""
        gc.collect()
        gc.freeze()
        gc.callbacks.append(self)
        self._thresholds = gc.get_threshold()
        if thresholds is not None:
            gc.set_threshold(*thresholds)

    def uninstall(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)
        gc.set_threshold(*self._thresholds)
        gc.unfreeze()  # back in sight, so a process that builds many apps (the tests) can free them
