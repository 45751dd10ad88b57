"""Shared by the read-model benchmarks: exactness against the truth views, the fold, pgbench.

Exactness: each ledger-kept read model of the registry (the contract's view, base plus pending
deltas) must equal its truth (recomputed from the source tables alone), row for row: the
reconciler's own comparison (services/reconciler/drift.py), one statement, so one snapshot.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from denorm.maintenance import fold_all
from denorm.readmodels import Kind, ReadModel, of_kind
from services.reconciler.drift import compare

Conn = psycopg.Connection[Any]

BASE_TABLES: tuple[str, ...] = ("user_stats_base", "project_counters_base", "conversation_base")
LEDGERS: tuple[str, ...] = ("user_stat_deltas", "project_counter_deltas", "conversation_deltas")


@dataclass
class ViewCheck:
    view: str
    only_in_view: int
    only_in_truth: int
    seconds: float
    samples: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return self.only_in_view == 0 and self.only_in_truth == 0


def check_view(conn: Conn, model: ReadModel, samples: int = 3) -> ViewCheck:
    started = time.perf_counter()
    rows = compare(conn, model)
    seconds = time.perf_counter() - started
    in_view = sum(1 for r in rows if r.kind != "missing")
    in_truth = sum(1 for r in rows if r.kind != "extra")
    return ViewCheck(model.name, in_view, in_truth, seconds, [f"{r.kind} {r.key}" for r in rows[:samples]])


def check_all(conn: Conn) -> list[ViewCheck]:
    return [check_view(conn, model) for model in of_kind(Kind.LEDGER)]


def verdict(checks: list[ViewCheck]) -> str:
    bad = [c for c in checks if not c.exact]
    if not bad:
        return "exact"
    return "MISMATCH " + ", ".join(f"{c.view}(+{c.only_in_view}/-{c.only_in_truth})" for c in bad)


def fold(conn: Conn) -> tuple[int, float]:
    """Fold until every model reports keys_folded = 0; deltas folded and seconds taken."""
    started = time.perf_counter()
    deltas = fold_all(conn, max_keys=1_000_000)
    return deltas, time.perf_counter() - started


def set_triggers(conn: Conn, tables: tuple[str, ...], enabled: bool) -> None:
    """Our read-model triggers only: USER leaves the foreign keys' internal triggers alone."""
    action = sql.SQL("ENABLE") if enabled else sql.SQL("DISABLE")
    for table in tables:
        conn.execute(sql.SQL("ALTER TABLE {} {} TRIGGER USER").format(sql.Identifier(table), action))


def count_rows(conn: Conn, table: str) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
    return int(row[0]) if row else 0


@dataclass
class PgbenchResult:
    tps: float
    latency_ms: float
    transactions: int


def pgbench(url: str, script: str, clients: int, seconds: int, threads: int = 2) -> PgbenchResult:
    """Run one custom pgbench script (prepared statements, no vacuum) and parse what it reports."""
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script)
        path = f.name
    try:
        # pgbench wants at least one client per thread.
        jobs = max(1, min(threads, clients))
        command = ["pgbench", "-n", "-M", "prepared", "-c", str(clients), "-j", str(jobs)]
        command += ["-T", str(seconds), "-f", path, url]
        out = subprocess.run(
            command,
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        Path(path).unlink()
    tps = re.search(r"^tps = ([0-9.]+)", out.stdout, re.MULTILINE)
    latency = re.search(r"^latency average = ([0-9.]+) ms", out.stdout, re.MULTILINE)
    done = re.search(r"^number of transactions actually processed: (\d+)", out.stdout, re.MULTILINE)
    if out.returncode != 0 or tps is None or latency is None or done is None:
        raise RuntimeError(f"pgbench failed:\n{out.stdout}\n{out.stderr}")
    return PgbenchResult(float(tps.group(1)), float(latency.group(1)), int(done.group(1)))
