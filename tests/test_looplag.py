"""The API's event-loop lag gauge sees a loop held up, and nothing when it is not."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry

from services.api.looplag import TICK_S, LoopLag


def observed(registry: CollectorRegistry, bucket: str) -> float:
    value = registry.get_sample_value("denorm_api_event_loop_lag_seconds_bucket", {"le": bucket})
    return value or 0.0


def test_a_blocked_loop_shows_as_lag() -> None:
    registry = CollectorRegistry()
    lag = LoopLag(registry)

    async def scenario() -> None:
        lag.start()
        await asyncio.sleep(TICK_S * 4)  # idle: ticks on time
        time.sleep(0.2)  # something holds the loop (as a CPU-bound callback would)
        await asyncio.sleep(TICK_S * 2)
        await lag.stop()

    asyncio.run(scenario())
    total = registry.get_sample_value("denorm_api_event_loop_lag_seconds_count") or 0.0
    late = total - observed(registry, "0.1")
    assert total >= 4 and late >= 1  # the tick due during the 200 ms block ran over 100 ms late
    assert observed(registry, "0.025") >= 3  # the idle ones did not
