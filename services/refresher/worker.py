"""The refresher: folds the read-model ledgers (which keeps the feed) and drains the refresh queue.

Two loops, each on its own connection, so that a long REFRESH never delays the feed:

- the folder calls fold_read_model_deltas() every REFRESHER_FOLD_MS;
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
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from db import SQL_DIR
from denorm.config import Settings
from denorm.logs import get_logger
from denorm.pg import conninfo
from denorm.sqlfile import load_queries
from services.refresher import metrics

log = get_logger("denorm.refresher")
QUERIES = load_queries(SQL_DIR / "queries" / "refresher.sql")

# The only views this worker will name in a REFRESH; names read from the queue must be among them.
REFRESHABLE = frozenset(
    {
        "mv_leaderboard_projects",
        "mv_leaderboard_users",
        "mv_chain_directory",
        "mv_forum_threads",
        "mv_trending_tags",
        "mv_search_documents",
    }
)
# Views refreshed together with another, in the same transaction, right after it.
FOLLOWERS = {"mv_search_documents": ("mv_search_words",)}


@dataclass(frozen=True)
class RefreshResult:
    view_name: str
    status: str
    duration_ms: int
    error: str | None = None


def worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Refresher:
    def __init__(self, settings: Settings, worker: str | None = None) -> None:
        self.settings = settings
        self.worker = worker or worker_id()
        self.stopping = threading.Event()
        self._wake = threading.Event()

    # --- lifecycle --------------------------------------------------------------------------

    def stop(self) -> None:
        self.stopping.set()
        self._wake.set()

    def run(self) -> None:
        """Run the loops until stop(); returns once they have finished their current work.

        REFRESHER_REFRESH_LOOPS refresh loops run side by side (the claims keep them off each
        other's views), so one long refresh, such as search, does not hold the others past their
        staleness bound.
        """
        folder = threading.Thread(target=self._fold_loop, name="folder", daemon=True)
        listener = threading.Thread(target=self._listen_loop, name="listener", daemon=True)
        extra = [
            threading.Thread(target=self._refresh_loop, name=f"refresh-{i}", daemon=True)
            for i in range(1, self.settings.refresher_refresh_loops)
        ]
        for thread in (folder, listener, *extra):
            thread.start()
        log.info("refresher started", worker=self.worker, refresh_loops=1 + len(extra))
        try:
            self._refresh_loop()
        finally:
            self.stop()
            for thread in extra:
                thread.join(timeout=self.settings.refresher_statement_timeout_ms / 1000)
            folder.join(timeout=60)
            listener.join(timeout=5)
            log.info("refresher stopped", worker=self.worker)

    def _connect(self, role: str) -> psycopg.Connection[Any]:
        conn = psycopg.connect(conninfo(self.settings.database_url, f"refresher-{role}"), autocommit=True)
        conn.execute(
            sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{self.settings.refresher_lock_timeout_ms}ms"))
        )
        return conn

    def _reconnecting(self, role: str, step: Any) -> None:
        """Run step(conn) until stopped, reconnecting after a lost connection (backing off)."""
        backoff = 0.5
        while not self.stopping.is_set():
            try:
                with self._connect(role) as conn:
                    backoff = 0.5
                    step(conn)
            except psycopg.Error as exc:
                log.warning("connection lost", role=role, error=str(exc), retry_in_s=backoff)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 30.0)

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
            rows = conn.execute("SELECT model, keys_folded, deltas_folded FROM fold_read_model_deltas()").fetchall()
        except psycopg.Error as exc:
            if conn.broken:
                raise
            metrics.FOLD_FAILURES.inc()
            log.warning("fold failed", error=str(exc))
            return 0
        elapsed = time.perf_counter() - started
        metrics.FOLD_SECONDS.observe(elapsed)
        folded = 0
        for model, _keys, deltas in rows:
            metrics.DELTAS_FOLDED.labels(model).inc(int(deltas))
            folded += int(deltas)
        if rows:  # the feed now reflects every write committed before this fold began
            conn.execute(QUERIES["mark_feed_folded"].encode(), {"duration_ms": round(elapsed * 1000)})
        return folded

    # --- the refresher ----------------------------------------------------------------------

    def _listen_loop(self) -> None:
        def step(conn: psycopg.Connection[Any]) -> None:
            conn.execute("LISTEN mv_refresh")
            while not self.stopping.is_set():
                for _ in conn.notifies(timeout=1.0, stop_after=1):
                    self._wake.set()

        self._reconnecting("listener", step)

    def _refresh_loop(self) -> None:
        def step(conn: psycopg.Connection[Any]) -> None:
            pruned_at = 0.0
            while not self.stopping.is_set():
                if time.monotonic() - pruned_at > 600:
                    conn.execute(QUERIES["prune_log"].encode(), {"days": self.settings.refresher_log_retention_days})
                    pruned_at = time.monotonic()
                self.collect(conn)
                while not self.stopping.is_set() and self.refresh_one(conn) is not None:
                    pass
                self.update_gauges(conn)
                self._wake.clear()
                self._wake.wait(self._sleep_seconds(conn))

        self._reconnecting("refresh", step)

    def _sleep_seconds(self, conn: psycopg.Connection[Any]) -> float:
        poll = self.settings.refresher_poll_ms / 1000
        row = conn.execute(QUERIES["next_due_in"].encode(), self._timing()).fetchone()
        if row is None or row[0] is None:
            return poll
        return max(0.01, min(poll, float(row[0])))

    def _timing(self, spacing: bool = True) -> dict[str, float]:
        return {
            "debounce_s": self.settings.refresher_debounce_ms / 1000,
            "min_interval_s": self.settings.refresher_min_interval_ms / 1000 if spacing else 0.0,
            "retry_base_s": self.settings.refresher_retry_base_ms / 1000,
            "retry_max_s": self.settings.refresher_retry_max_ms / 1000,
        }

    def collect(self, conn: psycopg.Connection[Any]) -> int:
        row = conn.execute("SELECT mv_collect_requests()").fetchone()
        collected = int(row[0]) if row else 0
        if collected:
            metrics.REQUESTS_COLLECTED.inc(collected)
        return collected

    def refresh_one(self, conn: psycopg.Connection[Any], spacing: bool = True) -> RefreshResult | None:
        """Claim and refresh one due view; None when no view is due. Without spacing, a view refreshed
        less than REFRESHER_MIN_INTERVAL_MS ago is due too."""
        timing = self._timing(spacing)
        claimed: tuple[str, int, datetime | None] | None = None
        started_at: datetime | None = None
        started = time.perf_counter()
        try:
            with conn.transaction():
                row = conn.execute(QUERIES["claim_due_view"].encode(), timing).fetchone()
                if row is None:
                    return None
                claimed = (str(row[0]), int(row[1]), row[2])
                view, generation, _first = claimed
                if view != "mv_feed_projects" and view not in REFRESHABLE:
                    raise ValueError(f"the queue names {view!r}, which this refresher does not know")
                conn.execute(
                    sql.SQL("SET LOCAL statement_timeout = {}").format(
                        sql.Literal(f"{self.settings.refresher_statement_timeout_ms}ms")
                    )
                )
                started_row = conn.execute("SELECT now()").fetchone()
                started_at = started_row[0] if started_row else None
                started = time.perf_counter()
                self._refresh(conn, view)
                duration_ms = round((time.perf_counter() - started) * 1000)
                conn.execute(
                    QUERIES["finish_refresh"].encode(),
                    {"generation": generation, "started_at": started_at, "duration_ms": duration_ms, "view_name": view},
                )
                self._log(conn, view, started_at, duration_ms, "completed", None, claimed[2])
        except (psycopg.Error, ValueError) as exc:
            # A lost connection goes up to the reconnect loop; anything else fails this view only.
            if claimed is None or conn.broken:
                raise
            return self._failed(conn, claimed, started_at, started, exc)
        metrics.REFRESH_SECONDS.labels(view).observe(duration_ms / 1000)
        metrics.REFRESHES.labels(view, "completed").inc()
        log.info("view refreshed", view=view, duration_ms=duration_ms, worker=self.worker)
        return RefreshResult(view, "completed", duration_ms)

    def _refresh(self, conn: psycopg.Connection[Any], view: str) -> None:
        if view == "mv_feed_projects":
            conn.execute("SELECT rebuild_feed()")
            return
        for name in (view, *FOLLOWERS.get(view, ())):
            conn.execute(sql.SQL("REFRESH MATERIALIZED VIEW CONCURRENTLY {}").format(sql.Identifier(name)))

    def _failed(
        self,
        conn: psycopg.Connection[Any],
        claimed: tuple[str, int, datetime | None],
        started_at: datetime | None,
        started: float,
        exc: Exception,
    ) -> RefreshResult:
        view = claimed[0]
        duration_ms = round((time.perf_counter() - started) * 1000)
        error = f"{type(exc).__name__}: {exc}".strip()
        with conn.transaction():
            conn.execute(QUERIES["fail_refresh"].encode(), {**self._timing(), "error": error, "view_name": view})
            if started_at is None:
                now = conn.execute("SELECT now()").fetchone()
                started_at = now[0] if now else None
            self._log(conn, view, started_at, duration_ms, "failed", error, claimed[2])
        metrics.REFRESHES.labels(view, "failed").inc()
        log.warning("refresh failed", view=view, error=error, worker=self.worker)
        return RefreshResult(view, "failed", duration_ms, error)

    def _log(
        self,
        conn: psycopg.Connection[Any],
        view: str,
        started_at: datetime | None,
        duration_ms: int,
        status: str,
        error: str | None,
        first_requested_at: datetime | None,
    ) -> None:
        conn.execute(
            QUERIES["log_refresh"].encode(),
            {
                "view_name": view,
                "started_at": started_at,
                "duration_ms": duration_ms,
                "status": status,
                "error": error,
                "worker": self.worker,
                "first_requested_at": first_requested_at,
            },
        )

    def update_gauges(self, conn: psycopg.Connection[Any]) -> None:
        rows = conn.execute(QUERIES["queue_state"].encode()).fetchall()
        metrics.QUEUE_DEPTH.set(sum(1 for r in rows if r[1] == "pending"))
        bound = self.settings.refresher_max_staleness_ms / 1000
        over = [r[0] for r in rows if r[1] == "pending" and r[6] is not None and float(r[6]) > bound]
        metrics.OVER_BOUND.set(len(over))
        if over:
            log.warning("views past their staleness bound", views=over, bound_s=bound)
        for view, status, _first, _last, _dur, _att, pending_s, last_epoch in rows:
            if view == "mv_feed_projects":
                continue
            metrics.STALENESS.labels(view).set(float(pending_s) if status == "pending" and pending_s else 0.0)
            if last_epoch is not None:
                metrics.LAST_SUCCESS.labels(view).set(float(last_epoch))
        feed = conn.execute(QUERIES["feed_state"].encode()).fetchone()
        metrics.STALENESS.labels("mv_feed_projects").set(float(feed[0]) if feed and feed[0] else 0.0)

    def drain(self, conn: psycopg.Connection[Any]) -> list[RefreshResult]:
        """Fold, collect, and refresh every pending view now, however recently it was refreshed (for
        tests and `--once`)."""
        self.fold_once(conn)
        self.collect(conn)
        done = []
        while (result := self.refresh_one(conn, spacing=False)) is not None:
            done.append(result)
        self.update_gauges(conn)
        return done
