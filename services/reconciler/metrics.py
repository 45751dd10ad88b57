"""A run's drift, pushed to a Pushgateway when `RECONCILER_PUSHGATEWAY_URL` is set. (Every run is also
recorded in `reconcile_runs`, which the refresher serves as metrics: services/refresher/reconcile_runs.py.)"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

from denorm.logs import get_logger

if TYPE_CHECKING:
    from services.reconciler.reconcile import Report

log = get_logger("denorm.reconciler")


def push_run(gateway: str, report: Report) -> None:
    """Push this run's drift to a Pushgateway; a gateway that is down does not fail the run."""
    registry = CollectorRegistry()
    drift = Gauge("denorm_reconcile_drift_rows", "Drift this run found", ["model", "kind"], registry=registry)
    for model, finding in report.models.items():
        for kind, value in finding.counts.items():
            drift.labels(model, kind).set(value)
    try:
        push_to_gateway(gateway, job="denorm-reconciler", registry=registry)
    except OSError as exc:
        log.warning("could not push to the Pushgateway", error=repr(exc))
