"""The API process's garbage collector: watched (pauses into a histogram), its thresholds set while
the app runs and restored after (services/api/gcwatch.py)."""

from __future__ import annotations

import gc
from typing import Any

from prometheus_client import CollectorRegistry

from services.api.gcwatch import GcPauses


def test_the_pauses_are_measured_and_the_thresholds_set_then_restored() -> None:
    before = gc.get_threshold()
    registry = CollectorRegistry()
    pauses = GcPauses(registry)
    pauses.install((50_000, 20, 100))
    try:
        assert gc.get_threshold() == (50_000, 20, 100)
        cycle: list[Any] = []
        cycle.append(cycle)  # garbage only the collector frees
        del cycle
        gc.collect()
        assert (registry.get_sample_value("denorm_api_gc_pause_seconds_count", {"generation": "2"}) or 0) >= 1
    finally:
        pauses.uninstall()
    assert gc.get_threshold() == before
