"""The reconciler's runs, as metrics. A CronJob is gone before Prometheus could scrape it, so its runs
are read back from `reconcile_runs` (db/schema/reconcile_runs.sql) by a collector that the
long-running refresher serves (the reconciler also pushes each run to a Pushgateway when
`RECONCILER_PUSHGATEWAY_URL` is set).

- `denorm_reconcile_drift_rows{model,kind}`: what the last finished run found;
- `denorm_reconcile_drift_streak`: how many finished runs in a row, up to the last, found drift.
  Alert on `denorm_reconcile_drift_streak >= 2`: drift two nights running is a bug, not a blip;
- `denorm_reconcile_last_finished_timestamp_seconds` and `denorm_reconcile_last_run_failed`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from denorm.logs import get_logger
from denorm.pg import conninfo
from denorm.sql import query

log = get_logger("denorm.reconciler")
RECENT_RUNS = 30


def drift_total(drift: dict[str, Any] | None) -> int:
    return sum(int(v) for counts in (drift or {}).values() for v in counts.values())


def streak(drifts: list[dict[str, Any] | None]) -> int:
    """Finished runs in a row, newest first, that found drift."""
    n = 0
    for drift in drifts:
        if drift_total(drift) == 0:
            break
        n += 1
    return n


class ReconcileCollector(Collector):
    """Reads the latest runs at scrape time (one short query), so every refresher replica agrees."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url

    def collect(self) -> Iterator[Any]:
        try:
            with psycopg.connect(conninfo(self.database_url, "reconcile-metrics"), connect_timeout=3) as conn:
                rows = conn.execute(query("recent_runs"), {"n": RECENT_RUNS}).fetchall()
        except psycopg.Error as exc:
            log.warning("could not read reconcile runs for metrics", error=repr(exc))
            return
        finished = [r for r in rows if r[0] == "finished"]
        drift = GaugeMetricFamily("denorm_reconcile_drift_rows", "Drift the last finished run found",
                                  labels=["model", "kind"])  # fmt: skip
        if finished:
            for model, counts in (finished[0][1] or {}).items():
                for kind, value in counts.items():
                    drift.add_metric([model, kind], float(value))
        yield drift
        yield GaugeMetricFamily("denorm_reconcile_drift_streak", "Finished runs in a row that found drift",
                                value=float(streak([r[1] for r in finished])))  # fmt: skip
        if finished:
            yield GaugeMetricFamily("denorm_reconcile_last_finished_timestamp_seconds",
                                    "When the last finished run ended", value=float(finished[0][2]))  # fmt: skip
        yield GaugeMetricFamily("denorm_reconcile_last_run_failed", "1 when the latest run failed",
                                value=1.0 if rows and rows[0][0] == "failed" else 0.0)  # fmt: skip
