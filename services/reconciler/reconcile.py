"""Recompute every read model of the registry (denorm/readmodels.py) from the source tables; report the
drift per read model (rows missing, extra and different) and, with repair, repair it.

- **Ledger- and fold-kept read models** are walked in key ranges of `RECONCILER_BATCH_SIZE` keys of
  their first key column (one whose key is not a number, the typo vocabulary, is compared whole).
  A range's truth and model are read in one statement (services/reconciler/drift.py), so memory stays bounded
  by a range and no lock is held between ranges. The keys a fold-kept model has waiting for the
  next fold are left out: the fold will write them. Read models that share their keys (the
  dashboard and the intro stats) are compared together before either is repaired, so each reports
  what it had.
- **Repairs never clobber a fresher write.** A ledger-kept model gets a correction (truth minus
  model, read in one statement's snapshot) appended to its ledger, as a writer's delta is: a write
  that commits during the repair adds its own. A fold-kept model's rows are recomputed from the
  source as the fold would, under the fold's lock, so the fold stays its only writer. After a
  range's repair it is read again, and what is still wrong is counted as unrepaired.
- **Materialized views** (the project leaderboard) are compared with their own definition when
  they are idle (refreshed since the last write they depend on, read in the comparison's
  snapshot): then the two must be equal, and a difference is drift, repaired by a refresh. A
  pending view cannot be compared (its definition has moved on since its refresh): one past its
  staleness bound is refreshed (repair) or reported stale; one within it is left to the
  refresher. The report says which, per view.
- **The Redis upvote sets** are compared with project_upvotes (services/reconciler/redis_sets.py).
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
from psycopg import sql

from denorm import maintenance
from denorm.cache import open_sync_redis
from denorm.config import Settings
from denorm.ids import MAX_ID
from denorm.logs import get_logger
from denorm.pg import conninfo, session_options
from denorm.readmodels import REGISTRY, Kind, ReadModel, of_kind
from denorm.sql import query
from services.reconciler.drift import DriftRow, Finding, compare
from services.reconciler.redis_sets import check_upvote_sets

log = get_logger("denorm.reconciler")
WORKER = "reconciler"


class Busy(Exception):
    """Another reconciler holds the lock."""


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


def walk_groups() -> list[list[ReadModel]]:
    """The ledger- and fold-kept read models, grouped by where their keys live, in registry order."""
    groups: dict[tuple[tuple[str, str], ...], list[ReadModel]] = {}
    for model in of_kind(Kind.LEDGER, Kind.FOLD):
        groups.setdefault(model.keys_from, []).append(model)
    return list(groups.values())


def _key_bounds(keys_from: tuple[tuple[str, str], ...], aggregate: str, combine: str) -> sql.Composed:
    """SELECT least/greatest of min/max(key) over each relation the keys live in."""
    where = sql.SQL(" WHERE {} >= %(after)s") if aggregate == "min" else sql.SQL("")
    parts = [
        sql.SQL("(SELECT {agg}({c}) FROM {r}{where})").format(
            agg=sql.SQL(aggregate), c=sql.Identifier(c), r=sql.Identifier(r), where=where.format(sql.Identifier(c))
        )
        for r, c in keys_from
    ]
    return sql.SQL("SELECT {}({})").format(sql.SQL(combine), sql.SQL(", ").join(parts))


class Reconciler:
    def __init__(self, settings: Settings, repair: bool) -> None:
        self.settings = settings
        self.repair = repair
        self.size = settings.reconciler_batch_size
        self.findings = {m.name: Finding(settings.reconciler_examples) for m in REGISTRY}

    def _connect(self) -> psycopg.Connection[Any]:
        options = session_options({"statement_timeout": f"{self.settings.reconciler_statement_timeout_ms}ms"})
        return psycopg.connect(conninfo(self.settings.database_url, "reconciler"), autocommit=True, options=options)

    def run(self) -> Report:
        started = time.perf_counter()
        mode = "repair" if self.repair else "dry-run"
        with self._connect() as conn:
            locked = conn.execute(query("reconcile_lock")).fetchone()
            if not locked or not locked[0]:
                raise Busy("another reconciler is running (advisory lock held); this run did nothing")
            try:
                return self._run(conn, mode, started)
            finally:
                # Released here, not left to the close: a backend lets go of its locks only once it
                # has exited, after close() returns, and a run started right after would find it held.
                if not conn.broken:
                    with contextlib.suppress(psycopg.Error):
                        conn.execute(query("reconcile_unlock"))

    def _run(self, conn: psycopg.Connection[Any], mode: str, started: float) -> Report:
        row = conn.execute(query("record_start"), {"mode": mode}).fetchone()
        assert row is not None
        report = Report(int(row[0]), mode, self.findings)
        log.info("reconcile started", run_id=report.run_id, mode=mode, batch_size=self.size)
        try:
            # The views first: a repair of the feed asks for a refresh of the views that read it,
            # which would leave them pending, not compared.
            self._views(conn, report)
            for group in walk_groups():
                self._walk_group(conn, group)
            report.redis = self._redis_sets(conn)
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
            conn.execute(query("record_finish"), params)
            return
        # A failure is recorded on a fresh connection, without the statement timeout that may be
        # what failed the run (the run's connection may also be broken).
        try:
            with psycopg.connect(conninfo(self.settings.database_url, "reconciler"), autocommit=True,
                                 connect_timeout=10) as fresh:  # fmt: skip
                fresh.execute(query("record_finish"), params)
        except psycopg.Error as exc:
            log.error("could not record the failed run", run_id=report.run_id, error=repr(exc))

    # --- ledger- and fold-kept read models, a key range at a time ----------------------------------

    def _ranges(self, conn: psycopg.Connection[Any], group: list[ReadModel]) -> Iterator[tuple[int, int]]:
        """Key ranges [lo, hi) of `batch_size` keys, skipping gaps; logs progress every few seconds."""
        keys_from = group[0].keys_from
        row = conn.execute(_key_bounds(keys_from, "max", "greatest")).fetchone()
        highest = int(row[0]) if row and row[0] is not None else 0
        next_key = _key_bounds(keys_from, "min", "least")
        last_log = time.monotonic()
        after = -MAX_ID - 1
        while (row := conn.execute(next_key, {"after": after}).fetchone()) and row[0] is not None:
            lo = int(row[0])
            after = lo + self.size
            yield lo, after
            if time.monotonic() - last_log > 2 or after > highest:
                last_log = time.monotonic()
                log.info("reconcile progress", models=[m.name for m in group],
                         percent=round(100 * min(1.0, after / max(highest, 1)), 1), up_to_key=after - 1,
                         drift={m.name: self.findings[m.name].drift for m in group})  # fmt: skip

    def _walk_group(self, conn: psycopg.Connection[Any], group: list[ReadModel]) -> None:
        if not group[0].keys_from:
            # Keys that are not numbers (the vocabulary's words): compared whole, in one statement.
            (model,) = group
            row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(model.name))).fetchone()
            self._check(conn, group, int(row[0]) if row else 0, None, None)
            return
        source, column = group[0].keys_from[0]
        count = sql.SQL("SELECT count(*) FROM {r} WHERE {c} >= %(lo)s AND {c} < %(hi)s").format(
            r=sql.Identifier(source), c=sql.Identifier(column)
        )
        for lo, hi in self._ranges(conn, group):
            row = conn.execute(count, {"lo": lo, "hi": hi}).fetchone()
            self._check(conn, group, int(row[0]) if row else 0, lo, hi)

    def _check(
        self, conn: psycopg.Connection[Any], group: list[ReadModel], checked: int, lo: int | None, hi: int | None
    ) -> None:
        """Compare the group's read models over [lo, hi) (whole, without one); repair what differs."""
        found = {m.name: compare(conn, m, lo=lo, hi=hi) for m in group}
        for model in group:
            self.findings[model.name].checked += checked
            for drift in found[model.name]:
                self.findings[model.name].add(drift.kind, list(drift.key) if len(drift.key) > 1 else drift.key[0])
        if self.repair and any(found.values()):
            self._repair(conn, group, found)
            for model in group:
                after = compare(conn, model, lo=lo, hi=hi)
                self._settle(self.findings[model.name], found[model.name], after)

    def _repair(self, conn: psycopg.Connection[Any], group: list[ReadModel], found: dict[str, list[DriftRow]]) -> None:
        keys: dict[tuple[Kind, str], set[Any]] = {}
        for model in group:
            if found[model.name] and model.repair:
                keys.setdefault((model.kind, model.repair), set()).update(d.key[0] for d in found[model.name])
        for (kind, function), ids in keys.items():
            if kind is Kind.FOLD:
                maintenance.repair_folded(conn, function, sorted(ids))
            else:
                conn.execute(sql.SQL("SELECT {}(%s)").format(sql.Identifier(function)), (sorted(ids),))

    @staticmethod
    def _settle(finding: Finding, before: list[DriftRow], after: list[DriftRow]) -> None:
        """Count the rows found before a repair that the re-read after it finds clean."""
        still = {d.key for d in after}
        fixed = [d for d in before if d.key not in still]
        finding.repaired += len(fixed)
        finding.unrepaired += len(before) - len(fixed)
        if len(before) != len(fixed):
            log.warning("drift left after repair", keys=sorted(still)[:5])

    # --- materialized views -------------------------------------------------------------------------

    def _views(self, conn: psycopg.Connection[Any], report: Report) -> None:
        staleness = {str(r[0]): float(r[2]) for r in conn.execute(query("freshness")).fetchall()}
        for clock in dict.fromkeys(m.clock for m in of_kind(Kind.MATVIEW)):
            assert clock is not None
            views = [m for m in of_kind(Kind.MATVIEW) if m.clock == clock]
            found = self._compare_views(conn, clock, views)
            if found is not None:
                if self.repair and any(found.values()):
                    self._refresh(conn, clock, report)
                    after = self._compare_views(conn, clock, views)
                    for model in views:
                        self._settle(self.findings[model.name], found[model.name], (after or {}).get(model.name, []))
                continue
            age, bound = staleness.get(clock, 0.0), views[0].bound_seconds
            if age <= bound:
                for model in views:
                    self.findings[model.name].how = f"pending {age:.1f} s, within its {bound:g} s bound: not compared"
                continue
            report.stale_views[clock] = round(age, 1)
            log.warning("view past its staleness bound", view=clock, staleness_s=round(age, 1), bound_s=bound)
            if self.repair:
                self._refresh(conn, clock, report)
            for model in views:
                done = "refreshed" if clock in report.refreshed_views else "reported"
                self.findings[model.name].how = f"pending {age:.1f} s, past its {bound:g} s bound: {done}"

    def _compare_views(
        self, conn: psycopg.Connection[Any], clock: str, views: list[ReadModel]
    ) -> dict[str, list[DriftRow]] | None:
        """Each view against its definition, in one snapshot in which it is idle; None when it is not."""
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            idle = conn.execute(query("view_idle"), {"view_name": clock}).fetchone()
            if not idle or not idle[0]:
                return None
            found = {m.name: compare(conn, m, against="definition") for m in views}
            for model in views:
                finding = self.findings[model.name]
                row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(model.name))).fetchone()
                finding.checked = int(row[0]) if row else 0
                for drift in found[model.name]:
                    finding.add(drift.kind, list(drift.key) if len(drift.key) > 1 else drift.key[0])
                finding.how = "compared with its definition (idle)"
        return found

    def _refresh(self, conn: psycopg.Connection[Any], clock: str, report: Report) -> None:
        result = maintenance.refresh_view(conn, clock, WORKER)
        if result is not None and result.status == "completed":
            report.refreshed_views.append(clock)

    # --- Redis ----------------------------------------------------------------------------------------

    def _redis_sets(self, conn: psycopg.Connection[Any]) -> str:
        client = open_sync_redis(self.settings.redis_url, timeout_seconds=5)
        try:
            client.ping()
        except redis.RedisError as exc:
            log.warning("redis unreachable; its upvote sets were not checked", error=repr(exc))
            return f"unreachable: {type(exc).__name__}"
        try:
            (sets,) = of_kind(Kind.REDIS)
            check_upvote_sets(conn, client, self.settings, self.findings[sets.name], repair=self.repair)
        finally:
            client.close()
        return "checked"
