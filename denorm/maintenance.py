"""Keeping the read models, as the registry says: the fold, the refresh of a materialized view, the
rebuild. The refresher runs these in its loops; the reconciler, the seed, the load test's runner,
the benchmarks and the tests call them directly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from denorm.readmodels import Kind, fold_ledgers, fold_steps, rebuilds, refreshed_with
from denorm.sql import query

Connection = psycopg.Connection[Any]


@dataclass(frozen=True)
class FoldStep:
    step: str
    keys_folded: int
    deltas_folded: int
    seconds: float
    wal_bytes: int  # the write-ahead log the step wrote: what keeping its read models costs the disk


@dataclass(frozen=True)
class RefreshResult:
    view_name: str
    status: str  # completed | failed
    duration_ms: int
    error: str | None = None


@dataclass(frozen=True)
class Timing:
    """When a pending view is due (the refresher's settings, in seconds)."""

    debounce_s: float = 0.0
    min_interval_s: float = 0.0
    retry_base_s: float = 1.0
    retry_max_s: float = 60.0
    statement_timeout_ms: int = 120_000

    def params(self) -> dict[str, float]:
        return {
            "debounce_s": self.debounce_s,
            "min_interval_s": self.min_interval_s,
            "retry_base_s": self.retry_base_s,
            "retry_max_s": self.retry_max_s,
        }


def _call(conn: Connection, function: str, *args: Any, wal: bool = False) -> psycopg.Cursor[Any]:
    """SELECT * FROM function(args): the function's name is the registry's, never input. With `wal`,
    the WAL insert position after it as a last column (a set-returning function has run whole
    before its first row is read)."""
    params = sql.SQL(", ").join(sql.Placeholder() for _ in args)
    after = sql.SQL(", pg_current_wal_insert_lsn() - '0/0'::pg_lsn") if wal else sql.SQL("")
    return conn.execute(sql.SQL("SELECT *{} FROM {}({})").format(after, sql.Identifier(function), params), args)


# --- the fold ----------------------------------------------------------------------------------


def fold(conn: Connection, max_keys: int = 20_000) -> list[FoldStep] | None:
    """One fold, in one transaction: each step of the registry in its order, each given the projects,
    users and chains the steps before it touched (db/schema/ledgers.sql). None when another fold
    holds the lock, or when a table the fold uses is taken (it gives way, never waits)."""
    started = time.perf_counter()
    steps: list[FoldStep] = []
    try:
        with conn.transaction():
            row = conn.execute(query("fold_begin")).fetchone()
            if row is None or not row[0]:
                return None
            _fold_steps(conn, steps, started, max_keys)
    except psycopg.errors.LockNotAvailable:  # a table of the fold's is taken (a TRUNCATE): give way
        return None
    return steps


def _fold_steps(conn: Connection, steps: list[FoldStep], started: float, max_keys: int) -> None:
    touched: dict[str, set[int]] = {"projects": set(), "users": set(), "chains": set()}
    wal = wal_position(conn)
    for step in fold_steps():
        at = time.perf_counter()
        given = [sorted(touched[kind]) for kind in ("projects", "users", "chains")]
        row = _call(conn, step, max_keys, *given, wal=True).fetchone()
        assert row is not None  # a step returns one row
        keys, deltas, *touches, wal_after = row
        for kind, ids in zip(("projects", "users", "chains"), touches, strict=True):
            touched[kind].update(ids or ())
        steps.append(FoldStep(step, int(keys or 0), int(deltas or 0), time.perf_counter() - at, int(wal_after - wal)))
        wal = wal_after
    conn.execute(_fold_done(), {"duration_ms": round((time.perf_counter() - started) * 1000)})


def wal_position(conn: Connection) -> int:
    """The WAL insert position, in bytes: the difference of two is the WAL written between them."""
    row = conn.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn").fetchone()
    assert row is not None
    return int(row[0])


def _fold_done() -> sql.Composed:
    """The fold's clock, at the end of its transaction (db/schema/ledgers.sql): now() is the
    transaction's start, or earlier, the oldest delta left in a ledger a fold-kept model follows."""
    oldest = [sql.SQL("(SELECT min(created_at) FROM {})").format(sql.Identifier(t)) for t in fold_ledgers()]
    return sql.SQL(
        "UPDATE fold_state SET as_of = least(now(), {}), folded_at = clock_timestamp(), duration_ms = %(duration_ms)s"
    ).format(sql.SQL(", ").join(oldest))


def fold_all(conn: Connection, max_keys: int = 100_000) -> int:
    """Fold until every ledger is empty; the number of deltas folded. Waits for another folder."""
    total = 0
    while True:
        steps = fold(conn, max_keys)
        if steps is None:
            time.sleep(0.05)
            continue
        folded = sum(s.deltas_folded for s in steps)
        total += folded
        if folded == 0:
            return total


def repair_folded(conn: Connection, apply: str, keys: list[Any]) -> None:
    """Recompute these keys of a fold-kept read model as the fold would, holding the fold's lock so
    that the fold is its only writer."""
    with conn.transaction():
        conn.execute(query("fold_lock"))
        _call(conn, apply, keys)


def rebuild_all(conn: Connection, *kinds: Kind) -> None:
    """Every read model (of these kinds) rebuilt from the source: after a bulk load, one set-based
    pass each."""
    for function in rebuilds(*kinds):
        _call(conn, function)


# --- the refresh queue ---------------------------------------------------------------------------


def collect(conn: Connection) -> int:
    """Coalesce the pending refresh requests into the queue; how many requests it took."""
    row = conn.execute(query("collect_requests")).fetchone()
    return int(row[0]) if row else 0


def refresh_statements(view: str) -> list[sql.Composed]:
    """What a refresh of this queue row runs: the view, then each view refreshed with it (through
    the owner's function, so that a role that does not own the views may run it)."""
    return [sql.SQL("SELECT refresh_materialized_view({})").format(sql.Literal(m.name)) for m in refreshed_with(view)]


def refresh_one(conn: Connection, timing: Timing, worker: str) -> RefreshResult | None:
    """Claim and refresh the oldest due view; None when no view is due."""
    return _refresh(conn, "claim_due_view", timing.params(), timing, worker)


def refresh_view(conn: Connection, view: str, worker: str, timing: Timing | None = None) -> RefreshResult | None:
    """Refresh this queue row's views now, due or not (the reconciler's repair); None when another
    refresher is refreshing it at this moment."""
    return _refresh(conn, "claim_view", {"view_name": view}, timing or Timing(), worker)


def _refresh(conn: Connection, claim: str, params: dict[str, Any], timing: Timing, worker: str) -> RefreshResult | None:
    """Claim a view and refresh it. The claim is held for the whole refresh transaction, so two
    refreshers never refresh one view at once."""
    claimed: tuple[str, int, datetime | None] | None = None
    started_at: datetime | None = None
    started = time.perf_counter()
    try:
        with conn.transaction():
            row = conn.execute(query(claim), params).fetchone()
            if row is None:
                return None
            claimed = (str(row[0]), int(row[1]), row[2])
            view, generation, first_requested = claimed
            started_at = row[3]
            statements = refresh_statements(view)
            if not statements:
                raise ValueError(f"the queue names {view!r}, which the registry does not know")
            conn.execute(query("refresh_timeout"), {"timeout": f"{timing.statement_timeout_ms}ms"})
            started = time.perf_counter()
            for statement in statements:
                conn.execute(statement)
            duration_ms = round((time.perf_counter() - started) * 1000)
            conn.execute(
                query("finish_refresh"),
                {"generation": generation, "started_at": started_at, "duration_ms": duration_ms, "view_name": view},
            )
            _log(conn, view, started_at, duration_ms, "completed", None, worker, first_requested)
    except (psycopg.Error, ValueError) as exc:
        # A lost connection goes up to the caller; anything else fails this view only.
        if claimed is None or conn.broken:
            raise
        return _failed(conn, claimed, started_at, started, exc, timing, worker)
    return RefreshResult(view, "completed", duration_ms)


def _failed(
    conn: Connection,
    claimed: tuple[str, int, datetime | None],
    started_at: datetime | None,
    started: float,
    exc: Exception,
    timing: Timing,
    worker: str,
) -> RefreshResult:
    view = claimed[0]
    duration_ms = round((time.perf_counter() - started) * 1000)
    error = f"{type(exc).__name__}: {exc}".strip()
    with conn.transaction():
        conn.execute(query("fail_refresh"), {**timing.params(), "error": error, "view_name": view})
        _log(conn, view, started_at, duration_ms, "failed", error, worker, claimed[2])
    return RefreshResult(view, "failed", duration_ms, error)


def _log(
    conn: Connection,
    view: str,
    started_at: datetime | None,
    duration_ms: int,
    status: str,
    error: str | None,
    worker: str,
    first_requested_at: datetime | None,
) -> None:
    conn.execute(
        query("log_refresh"),
        {
            "view_name": view,
            "started_at": started_at,
            "duration_ms": duration_ms,
            "status": status,
            "error": error,
            "worker": worker,
            "first_requested_at": first_requested_at,
        },
    )


def drain(conn: Connection, worker: str, timing: Timing | None = None) -> list[RefreshResult]:
    """Fold every ledger empty, collect, and refresh every pending view now, however recently it was
    refreshed and however new its requests (`denorm refresher --once`, the reconciler's repair,
    the seed, the tests)."""
    timing = timing or Timing()
    fold_all(conn)
    collect(conn)
    done = []
    while (result := refresh_one(conn, timing, worker)) is not None:
        done.append(result)
    return done
