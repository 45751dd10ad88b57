"""Recompute every trigger-kept read model, and the Redis upvote sets, from the source tables; report
the drift per read model and, with repair, repair it.

- **Batched.** Each model is walked in key ranges of `RECONCILER_BATCH_SIZE` ids. A range's truth and
  its read model are read in one statement (db/queries/reconcile.sql), so memory stays bounded by
  a batch and no lock is held between batches.
- **Repairs that never clobber a fresher write.** A repair appends a correction (truth minus model,
  read in one statement's snapshot) to the model's delta ledger, as a writer does, and the fold
  carries it on. A write that commits during the repair adds its own delta: nothing is overwritten.
  After repairing a range the reconciler reads it again, and counts what is still wrong as unrepaired.
- **One at a time.** A session advisory lock; a second run exits at once and says so.
"""

from __future__ import annotations

import contextlib
import json
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import redis

from db import SQL_DIR
from denorm.config import Settings
from denorm.logs import get_logger
from denorm.pg import conninfo, session_options
from denorm.sqlfile import load_queries
from services.reconciler.redis_sets import check_upvote_sets

log = get_logger("denorm.reconciler")
# Its own key ("denorm" + 2, after the migration runner's + 1). Never a key the SQL takes: the
# collector's and the fold's transaction locks are 7305798357383151617 and ...618, and sharing one
# would stall every refresher's collect for the whole run (and make a run "busy" during a collect).
LOCK_KEY = 0x64656E6F726D02
KINDS = ("missing", "extra", "different")

# The user_stats_diff query's column order, and which contract table each column belongs to.
USER_COLUMNS = (
    "project_count", "upvotes_received", "comments_received", "upvotes_given", "unread_messages", "chains_joined",
    "sent_pending", "sent_accepted", "sent_declined", "received_pending", "received_accepted", "received_declined",
)  # fmt: skip
DASHBOARD_COLUMNS = frozenset(USER_COLUMNS[:6]) | {"received_pending"}  # pending_intros_received
INTRO_COLUMNS = frozenset(USER_COLUMNS[6:])


def queries() -> dict[str, bytes]:
    return {name: text.encode() for name, text in load_queries(SQL_DIR / "queries" / "reconcile.sql").items()}


class Busy(Exception):
    """Another reconciler holds the lock."""


@dataclass
class Finding:
    """What one read model (or the Redis sets) looked like against the truth."""

    examples_kept: int
    checked: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    examples: dict[str, list[Any]] = field(default_factory=lambda: {k: [] for k in KINDS})
    repaired: int = 0
    unrepaired: int = 0

    def add(self, kind: str, key: Any) -> None:
        self.counts[kind] += 1
        if len(self.examples[kind]) < self.examples_kept:
            self.examples[kind].append(key)

    @property
    def drift(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            **self.counts,
            "repaired": self.repaired,
            "unrepaired": self.unrepaired,
            "examples": {k: v for k, v in self.examples.items() if v},
        }


@dataclass
class Report:
    run_id: int
    mode: str
    models: dict[str, Finding]
    stale_views: dict[str, float] = field(default_factory=dict)
    refreshed_views: list[str] = field(default_factory=list)
    redis: str = "checked"
    status: str = "running"
    seconds: float = 0.0

    @property
    def drift_rows(self) -> int:
        return sum(f.drift for f in self.models.values())

    def line(self) -> str:
        """The one-line JSON summary a run ends with."""
        return json.dumps(
            {
                "event": "reconcile summary",
                "run_id": self.run_id,
                "mode": self.mode,
                "status": self.status,
                "seconds": round(self.seconds, 1),
                "drift_rows": self.drift_rows,
                "models": {name: f.summary() for name, f in self.models.items()},
                "redis": self.redis,
                "stale_views": self.stale_views,
                "refreshed_views": self.refreshed_views,
                "peak_rss_mib": round(peak_rss_mib(), 1),
            },
            default=str,
            separators=(",", ":"),
        )


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class Reconciler:
    def __init__(self, settings: Settings, repair: bool) -> None:
        self.settings = settings
        self.repair = repair
        self.sql = queries()
        self.size = settings.reconciler_batch_size
        names = ("project_counters", "user_dashboard_stats", "intro_request_stats", "message_conversations_denorm")
        self.findings = {n: Finding(settings.reconciler_examples) for n in (*names, "redis_upvote_sets")}

    def _connect(self) -> psycopg.Connection[Any]:
        options = session_options({"statement_timeout": f"{self.settings.reconciler_statement_timeout_ms}ms"})
        return psycopg.connect(conninfo(self.settings.database_url, "reconciler"), autocommit=True, options=options)

    def run(self) -> Report:
        started = time.perf_counter()
        mode = "repair" if self.repair else "dry-run"
        with self._connect() as conn:
            locked = conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
            if not locked or not locked[0]:
                raise Busy("another reconciler is running (advisory lock held); this run did nothing")
            try:
                return self._run(conn, mode, started)
            finally:
                # Released here, not left to the close: a backend lets go of its locks only once it
                # has exited, after close() returns, and a run started right after would find it held.
                if not conn.broken:
                    with contextlib.suppress(psycopg.Error):
                        conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))

    def _run(self, conn: psycopg.Connection[Any], mode: str, started: float) -> Report:
        row = conn.execute(self.sql["record_start"], {"mode": mode}).fetchone()
        assert row is not None
        report = Report(int(row[0]), mode, self.findings)
        log.info("reconcile started", run_id=report.run_id, mode=mode, batch_size=self.size)
        try:
            self._project_counters(conn)
            self._user_stats(conn)
            self._conversations(conn)
            report.redis = self._redis_sets(conn)
            self._views(conn, report)
            report.status = "finished"
        except Exception as exc:
            report.status = "failed"
            report.seconds = time.perf_counter() - started
            self._record(conn, report, repr(exc))
            raise
        report.seconds = time.perf_counter() - started
        self._record(conn, report, None)
        return report

    def _record(self, conn: psycopg.Connection[Any], report: Report, error: str | None) -> None:
        drift = {name: f.counts for name, f in report.models.items()}
        repaired = {name: f.repaired for name, f in report.models.items()}
        params = {"id": report.run_id, "status": report.status, "error": error}
        params |= {"drift": json.dumps(drift), "repaired": json.dumps(repaired)}
        if error is None:
            conn.execute(self.sql["record_finish"], params)
            return
        # A failure is recorded on a fresh connection, without the statement timeout that may be
        # what failed the run (the run's connection may also be broken).
        try:
            with psycopg.connect(conninfo(self.settings.database_url, "reconciler"), autocommit=True,
                                 connect_timeout=10) as fresh:  # fmt: skip
                fresh.execute(self.sql["record_finish"], params)
        except psycopg.Error as exc:
            log.error("could not record the failed run", run_id=report.run_id, error=repr(exc))

    def _walk(self, conn: psycopg.Connection[Any], model: str, key: str) -> Iterator[tuple[int, int]]:
        """Key ranges [lo, hi) of `batch_size` ids, skipping gaps; logs progress every few seconds."""
        sql_next = self.sql[f"{key}_next"]
        row = conn.execute(self.sql[f"{key}_last"]).fetchone()
        highest = int(row[0]) if row and row[0] is not None else 0
        last_log = time.monotonic()
        after = -(2**63)
        while (row := conn.execute(sql_next, {"after": after}).fetchone()) and row[0] is not None:
            lo = int(row[0])
            after = lo + self.size
            yield lo, after
            if time.monotonic() - last_log > 2 or after > highest:
                last_log = time.monotonic()
                log.info("reconcile progress", model=model, percent=round(100 * min(1.0, after / max(highest, 1)), 1),
                         up_to_id=after - 1, drift=self.findings[model].drift)  # fmt: skip

    def _count(self, conn: psycopg.Connection[Any], key: str, lo: int, hi: int) -> int:
        row = conn.execute(self.sql[f"{key}_count"], {"lo": lo, "hi": hi}).fetchone()
        return int(row[0]) if row else 0

    # --- project counters ---------------------------------------------------------------------

    def _project_counters(self, conn: psycopg.Connection[Any]) -> None:
        finding = self.findings["project_counters"]
        for lo, hi in self._walk(conn, "project_counters", "project"):
            rows = conn.execute(self.sql["project_counters_diff"], {"lo": lo, "hi": hi}).fetchall()
            finding.checked += self._count(conn, "project", lo, hi)
            for key, kind, _model, _truth in rows:
                finding.add(kind, key)
            if rows and self.repair:
                self._repair_keys(conn, "project_counters", rows)
                after = conn.execute(self.sql["project_counters_diff"], {"lo": lo, "hi": hi}).fetchall()
                self._settle(finding, rows, after)

    def _repair_keys(self, conn: psycopg.Connection[Any], prefix: str, rows: list[Any]) -> None:
        keys = [r[0] for r in rows]
        with conn.transaction():
            missing = [r[0] for r in rows if r[1] == "missing"]
            if missing:
                conn.execute(self.sql[f"{prefix}_add_missing"], {"keys": missing})
            extra = [r[0] for r in rows if r[1] == "extra"]
            if extra:
                conn.execute(self.sql[f"{prefix}_drop_extra"], {"keys": extra})
        # A separate statement, after the base rows exist: its snapshot reads model and truth together.
        conn.execute(self.sql[f"{prefix}_correct"], {"keys": keys})

    @staticmethod
    def _settle(finding: Finding, before: list[Any], after: list[Any]) -> None:
        """Count the keys found before a repair that the re-read after it finds clean."""
        still = {key(r) for r in after}
        fixed = [k for k in map(key, before) if k not in still]
        finding.repaired += len(fixed)
        finding.unrepaired += len(before) - len(fixed)
        if len(before) != len(fixed):
            log.warning("drift left after repair", keys=sorted(still)[:5])

    # --- user stats: the dashboard and the intro-request stats -----------------------------------

    def _user_stats(self, conn: psycopg.Connection[Any]) -> None:
        dashboard, intro = self.findings["user_dashboard_stats"], self.findings["intro_request_stats"]
        for lo, hi in self._walk(conn, "user_dashboard_stats", "user"):
            rows = conn.execute(self.sql["user_stats_diff"], {"lo": lo, "hi": hi}).fetchall()
            users = self._count(conn, "user", lo, hi)
            dashboard.checked += users
            intro.checked += users
            # One user row feeds two contract tables: each reports the users whose columns differ.
            split: dict[str, list[Any]] = {"dashboard": [], "intro": []}
            for row in rows:
                user, kind, model, truth = row
                for name, finding, columns in (("dashboard", dashboard, DASHBOARD_COLUMNS),
                                               ("intro", intro, INTRO_COLUMNS)):  # fmt: skip
                    if kind != "different" or differing(model, truth) & columns:
                        finding.add(kind, user)
                        split[name].append(row)
            if rows and self.repair:
                self._repair_keys(conn, "user_stats", rows)
                after = conn.execute(self.sql["user_stats_diff"], {"lo": lo, "hi": hi}).fetchall()
                self._settle(dashboard, split["dashboard"], after)
                self._settle(intro, split["intro"], after)

    # --- conversations ------------------------------------------------------------------------

    def _conversations(self, conn: psycopg.Connection[Any]) -> None:
        finding = self.findings["message_conversations_denorm"]
        for lo, hi in self._walk(conn, "message_conversations_denorm", "conversation"):
            rows = conn.execute(self.sql["conversations_diff"], {"lo": lo, "hi": hi}).fetchall()
            finding.checked += self._count(conn, "user", lo, hi)  # users whose conversations were compared
            for user, other, kind, _model, _truth in rows:
                finding.add(kind, [user, other])
            if rows and self.repair:
                pairs = {"users": [r[0] for r in rows], "others": [r[1] for r in rows]}
                conn.execute(self.sql["conversations_drop_orphans"], pairs)
                conn.execute(self.sql["conversations_correct"], pairs)
                after = conn.execute(self.sql["conversations_diff"], {"lo": lo, "hi": hi}).fetchall()
                self._settle(finding, rows, after)

    # --- Redis and the refreshed views ------------------------------------------------------------

    def _redis_sets(self, conn: psycopg.Connection[Any]) -> str:
        client = redis.Redis.from_url(self.settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
        try:
            client.ping()
        except redis.RedisError as exc:
            log.warning("redis unreachable; its upvote sets were not checked", error=repr(exc))
            return f"unreachable: {type(exc).__name__}"
        try:
            check_upvote_sets(conn, client, self.settings, self.sql["upvote_sets"], self.findings["redis_upvote_sets"],
                              repair=self.repair)  # fmt: skip
        finally:
            client.close()
        return "checked"

    def _views(self, conn: psycopg.Connection[Any], report: Report) -> None:
        bound_s = self.settings.refresher_max_staleness_ms / 1000
        rows = conn.execute(self.sql["stale_views"], {"bound_s": bound_s}).fetchall()
        report.stale_views = {str(r[0]): round(float(r[1]), 1) for r in rows}
        if report.stale_views:
            log.warning("views past their staleness bound", views=report.stale_views)
        if report.stale_views and self.repair:
            from services.refresher.worker import Refresher

            done = Refresher(self.settings, worker="reconciler").drain(conn)
            report.refreshed_views = [r.view_name for r in done if r.status == "completed"]


def key(row: Any) -> tuple[Any, ...]:
    """A diff row's key: everything before (kind, model, truth)."""
    return tuple(row[:-3])


def differing(model: str | None, truth: str | None) -> set[str]:
    """The USER_COLUMNS whose values differ between two JSON arrays of the user_stats_diff query."""
    m = json.loads(model) if model else [None] * len(USER_COLUMNS)
    t = json.loads(truth) if truth else [None] * len(USER_COLUMNS)
    return {c for c, a, b in zip(USER_COLUMNS, m, t, strict=True) if a != b}
