"""The chaos soak's short form (bench/chaos.py): every fault of the long one, a few seconds apart, on
the tiny dataset, under a mixed workload with plain-SQL writers. Nothing acknowledged is lost or
written twice, nothing drifts, no flag is wrong, no 500 and no 5xx outside a Postgres fault's window,
no traceback or deadlock, every process gone within a second of SIGTERM, and after each Postgres
fault reads, writes and the read models back within a second."""

from __future__ import annotations

import pytest

from bench.chaos import SHORT, run
from denorm.readmodels import REGISTRY

pytestmark = pytest.mark.cluster


def test_the_short_soak_loses_nothing_and_recovers_within_a_second() -> None:
    report = run(SHORT, echo=lambda _line: None)
    print("\n".join(report.lines()))
    assert [f.name for f in report.faults] == [
        "kill -9 api", "kill -9 refresher", "SIGSTOP refresher", "crash postgres", "stop postgres",
        "restart redis", "stall redis", "second refresher", "SIGTERM api",
    ]  # fmt: skip
    checks = report.checks
    # The run did what it says: writes acknowledged, pairs answered, flags compared, every read model checked.
    assert checks["acknowledged"] > 50 and checks["pairs"] > 20 and checks["flags_compared"] >= SHORT.flags
    assert checks["read_models"] == len(REGISTRY) and checks["redis_sets"] == "checked"
    # The Postgres faults were real: requests met them.
    assert all(f.errors > 0 for f in report.faults if f.postgres)
    assert report.problems == []
