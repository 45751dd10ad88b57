"""Entry point of `denorm refresher`: metrics server, signal handling, and the worker."""

from __future__ import annotations

import psycopg
from prometheus_client import REGISTRY, start_http_server

from denorm import maintenance
from denorm.config import Settings
from denorm.logs import get_logger
from denorm.pg import conninfo
from services.refresher.reconcile_runs import ReconcileCollector
from services.refresher.signals import on_stop_signals
from services.refresher.worker import Refresher

log = get_logger("denorm.refresher")


def run(settings: Settings, once: bool = False) -> int:
    refresher = Refresher(settings)
    if once:
        with psycopg.connect(conninfo(settings.database_url, "refresher-once"), autocommit=True) as conn:
            # Everything pending now, however new: no debounce, no spacing.
            timing = maintenance.Timing(statement_timeout_ms=settings.refresher_statement_timeout_ms)
            for result in maintenance.drain(conn, refresher.worker, timing):
                log.info("refresh", view=result.view_name, status=result.status, duration_ms=result.duration_ms)
        return 0

    def on_signal(name: str) -> None:
        log.info("stopping", signal=name)
        refresher.stop()

    on_stop_signals(on_signal)
    if settings.refresher_metrics_port:
        # The reconciler is a CronJob, gone before a scrape: its runs are served from here.
        REGISTRY.register(ReconcileCollector(settings.database_url))
        start_http_server(settings.refresher_metrics_port)
    refresher.run()
    return 0
