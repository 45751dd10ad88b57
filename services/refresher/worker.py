"""The refresher: folds the read-model ledgers (which keeps the fold-kept read models) and drains the
refresh queue of the materialized views, both as denorm/maintenance.py defines them.

Three loops, each on its own connection, so that a REFRESH never delays the fold:

- the folder folds every REFRESHER_FOLD_MS;
- the invalidator drains the upvote-set marks into Redis every REFRESHER_INVALIDATE_MS
  (services/refresher/invalidator.py);
- the refresher coalesces refresh requests into mv_refresh_queue, then refreshes each view whose
  debounce window has passed, CONCURRENTLY, in a transaction that holds the view's claim row. A
  view is refreshed at most once per REFRESHER_MIN_INTERVAL_MS, so that a view that every fold
  makes stale is not refreshed back to back.

NOTIFY mv_refresh only wakes the refresher early; it polls every REFRESHER_POLL_MS regardless.
SIGTERM (or stop()) lets the current fold or refresh finish, then both loops return.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

import psycopg
from psycopg import sql

from denorm import maintenance
from denorm.config import Settings
from denorm.logs import get_logger
from denorm.pg import conninfo
from denorm.readmodels import REGISTRY
from denorm.sql import query
from services.refresher import metrics
from services.refresher.invalidator import Invalidator

log = get_logger("denorm.refresher")
RECONNECT_S = 0.25  # a refused connect while Postgres is down costs nothing


def worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def timing_of(settings: Settings) -> maintenance.Timing:
    return maintenance.Timing(
        debounce_s=settings.refresher_debounce_ms / 1000,
        min_interval_s=settings.refresher_min_interval_ms / 1000,
        retry_base_s=settings.refresher_retry_base_ms / 1000,
        retry_max_s=settings.refresher_retry_max_ms / 1000,
        statement_timeout_ms=settings.refresher_statement_timeout_ms,
    )


class Refresher:
    def __init__(self, settings: Settings, worker: str | None = None) -> None:
        self.settings = settings
        self.worker = worker or worker_id()
        self.timing = timing_of(settings)
        self.stopping = threading.Event()
        self._wake = threading.Event()
        self._over_bound: set[str] = set()  # read models past their bound, logged once per episode

    # --- lifecycle --------------------------------------------------------------------------

    def stop(self) -> None:
        self.stopping.set()
        self._wake.set()

    def run(self) -> None:
        """Run the loops until stop(); returns once they have finished their current work.

        REFRESHER_REFRESH_LOOPS refresh loops run side by side (the claims keep them off each
        other's views), so that one long refresh would not hold the others past their staleness
        bound. (With one refreshed view, one loop is enough.)
        """
        folder = threading.Thread(target=self._fold_loop, name="folder", daemon=True)
        invalidator = threading.Thread(target=self._invalidate_loop, name="invalidator", daemon=True)
        listener = threading.Thread(target=self._listen_loop, name="listener", daemon=True)
        extra = [
            threading.Thread(target=self._refresh_loop, args=(False,), name=f"refresh-{i}", daemon=True)
            for i in range(1, self.settings.refresher_refresh_loops)
        ]
        for thread in (folder, invalidator, listener, *extra):
            thread.start()
        log.info("refresher started", worker=self.worker, refresh_loops=1 + len(extra))
        try:
            self._refresh_loop(gauges=True)
        finally:
            self.stop()
            for thread in extra:
                thread.join(timeout=self.settings.refresher_statement_timeout_ms / 1000)
            folder.join(timeout=60)
            invalidator.join(timeout=5)
            listener.join(timeout=5)
            log.info("refresher stopped", worker=self.worker)

    def _connect(self, role: str) -> psycopg.Connection[Any]:
        conn = psycopg.connect(conninfo(self.settings.database_url, f"refresher-{role}"), autocommit=True)
        conn.execute(
            sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{self.settings.refresher_lock_timeout_ms}ms"))
        )
        return conn

    def _reconnecting(self, role: str, step: Any) -> None:
        """Run step(conn) until stopped, reconnecting after a lost connection every RECONNECT_S: the
        read models move again within that of Postgres's return, however long it was away. The first
        failure of an outage is logged, and the connection's return with how long it took."""
        lost_at: float | None = None
        while not self.stopping.is_set():
            try:
                with self._connect(role) as conn:
                    if lost_at is not None:
                        log.info("connection back", role=role, down_s=round(time.monotonic() - lost_at, 2))
                        lost_at = None
                    step(conn)
            except psycopg.Error as exc:
                if lost_at is None:
                    lost_at = time.monotonic()
                    log.warning("connection lost; retrying", role=role, error=str(exc).strip()[:300],
                                retry_s=RECONNECT_S)  # fmt: skip
                self.stopping.wait(RECONNECT_S)

    # --- the folder -------------------------------------------------------------------------

    def _fold_loop(self) -> None:
        def step(conn: psycopg.Connection[Any]) -> None:
            while not self.stopping.is_set():
                self.fold_once(conn)
                self.stopping.wait(self.settings.refresher_fold_ms / 1000)

        self._reconnecting("folder", step)

    def fold_once(self, conn: psycopg.Connection[Any]) -> int:
        """One fold; returns the number of deltas folded."""
        started = time.perf_counter()
        try:
            steps = maintenance.fold(conn)
        except psycopg.Error as exc:
            if conn.broken:
                raise
            metrics.FOLD_FAILURES.inc()
            log.warning("fold failed", error=str(exc))
            return 0
        if steps is None:  # another folder holds the lock
            return 0
        metrics.FOLD_SECONDS.observe(time.perf_counter() - started)
        for s in steps:
            metrics.DELTAS_FOLDED.labels(s.step).inc(s.deltas_folded)
            metrics.FOLD_STEP_SECONDS.labels(s.step).inc(s.seconds)
            metrics.FOLD_STEP_WAL.labels(s.step).inc(s.wal_bytes)
        return sum(s.deltas_folded for s in steps)

    # --- the invalidator --------------------------------------------------------------------

    def _invalidate_loop(self) -> None:
        invalidator = Invalidator(self.settings)

        def step(conn: psycopg.Connection[Any]) -> None:
            while not self.stopping.is_set():
                if not self.invalidate_once(invalidator, conn):
                    self.stopping.wait(self.settings.refresher_invalidate_ms / 1000)

        try:
            self._reconnecting("invalidator", step)
        finally:
            invalidator.close()

    def invalidate_once(self, invalidator: Invalidator, conn: psycopg.Connection[Any]) -> bool:
        """One drain; True when it filled its batch (more may be waiting: drain again at once)."""
        drained = invalidator.drain_once(conn)
        if drained is None:
            metrics.DRAIN_FAILURES.inc()
            return False
        metrics.MARKS_DRAINED.inc(drained.marks)
        metrics.SETS_DROPPED.inc(drained.users)
        if drained.everyone:
            log.info("every upvote set dropped (a TRUNCATE or a rebuild of project_upvotes)")
        return drained.marks >= self.settings.refresher_invalidate_batch

    # --- the refresher ----------------------------------------------------------------------

    def _listen_loop(self) -> None:
        def step(conn: psycopg.Connection[Any]) -> None:
            conn.execute("LISTEN mv_refresh")
            while not self.stopping.is_set():
                # Short, so that a SIGTERM is seen at once: the process is gone within a second of it.
                for _ in conn.notifies(timeout=0.25, stop_after=1):
                    self._wake.set()

        self._reconnecting("listener", step)

    def _refresh_loop(self, gauges: bool) -> None:
        """Refresh what is due, then sleep until the next view can be due. One loop (`gauges`) also
        keeps the staleness gauges."""

        def step(conn: psycopg.Connection[Any]) -> None:
            pruned_at = 0.0
            while not self.stopping.is_set():
                if time.monotonic() - pruned_at > 600:
                    conn.execute(query("prune_log"), {"days": self.settings.refresher_log_retention_days})
                    conn.execute(query("idempotency_prune"), {"ttl": self.settings.api_idempotency_ttl_seconds})
                    pruned_at = time.monotonic()
                self.collect(conn)
                while not self.stopping.is_set() and self.refresh_one(conn) is not None:
                    pass
                if gauges:
                    self.update_gauges(conn)
                self._wake.clear()
                self._wake.wait(self._sleep_seconds(conn))

        self._reconnecting("refresh", step)

    def _sleep_seconds(self, conn: psycopg.Connection[Any]) -> float:
        """Until the next view can be due, at most a poll interval. A view due already was left to
        this loop by refresh_one only because another loop or replica holds its claim: waking every
        few milliseconds until that refresh ends would be a busy loop (two refreshers once ran ten
        times the transactions of one), so wait a poll interval, or for a NOTIFY."""
        poll = self.settings.refresher_poll_ms / 1000
        row = conn.execute(query("next_due_in"), self.timing.params()).fetchone()
        if row is None or row[0] is None or float(row[0]) <= 0:
            return poll
        return max(0.01, min(poll, float(row[0])))

    def collect(self, conn: psycopg.Connection[Any]) -> int:
        collected = maintenance.collect(conn)
        if collected:
            metrics.REQUESTS_COLLECTED.inc(collected)
        return collected

    def refresh_one(self, conn: psycopg.Connection[Any]) -> maintenance.RefreshResult | None:
        """Claim and refresh one due view; None when no view is due."""
        result = maintenance.refresh_one(conn, self.timing, self.worker)
        if result is None:
            return None
        metrics.REFRESHES.labels(result.view_name, result.status).inc()
        if result.status == "completed":
            metrics.REFRESH_SECONDS.labels(result.view_name).observe(result.duration_ms / 1000)
            log.info("view refreshed", view=result.view_name, duration_ms=result.duration_ms, worker=self.worker)
        else:
            log.warning("refresh failed", view=result.view_name, error=result.error, worker=self.worker)
        return result

    def update_gauges(self, conn: psycopg.Connection[Any]) -> None:
        """Every read model's staleness (its clock's), and each refreshed view's last success. A read
        model past its bound is logged when it passes it, and again when it is back within."""
        queue = conn.execute(query("queue_state")).fetchall()
        metrics.QUEUE_DEPTH.set(sum(1 for r in queue if r[1] == "pending"))
        for view, *_rest, last_epoch in queue:
            if last_epoch is not None:
                metrics.LAST_SUCCESS.labels(view).set(float(last_epoch))
        clocks = {str(r[0]): float(r[2]) for r in conn.execute(query("freshness")).fetchall()}
        staleness = {m.name: clocks.get(m.clock, 0.0) if m.clock else 0.0 for m in REGISTRY}
        over = {m.name for m in REGISTRY if staleness[m.name] > m.bound_seconds}
        for name, seconds in staleness.items():
            metrics.STALENESS.labels(name).set(seconds)
        metrics.OVER_BOUND.set(len(over))
        for name in sorted(over - self._over_bound):
            log.warning("read model past its staleness bound", read_model=name, staleness_s=round(staleness[name], 1))
        for name in sorted(self._over_bound - over):
            log.info("read model back within its staleness bound", read_model=name)
        self._over_bound = over
