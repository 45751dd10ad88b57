"""Locust's CSV output read back: each step's summary and its 10-second history, for the plot and summary."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class StepResult:
    """One step: its users, Locust's aggregate over the steady load, the gates, and the CPU by component."""

    users: int
    requests: int
    failures: int
    rps: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    gates_passed: bool | None  # None: the gates did not report (Locust crashed)
    exit_code: int
    cpu_cores: dict[str, float] = field(default_factory=dict)
    # Where the step's time went (loadtest/attribution.py): server-side route percentiles, the
    # event loop's lag, GC pauses, Postgres's commits, WAL, checkpoints, vacuum, refreshes, waits.
    attribution: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.exit_code == 0 and bool(self.gates_passed)


@dataclass(frozen=True)
class HistoryPoint:
    users: int
    rps: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "", "N/A") else None
    except ValueError:
        return None


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def aggregate(stats_csv: Path) -> dict[str, Any]:
    """The "Aggregated" row of Locust's <prefix>_stats.csv, as numbers; zeros when Locust wrote none."""
    found = rows(stats_csv) if stats_csv.exists() else []
    row = next((r for r in found if r.get("Name") == "Aggregated"), None)
    if row is None:
        return {"requests": 0, "failures": 0, "rps": 0.0, "p50_ms": None, "p95_ms": None, "p99_ms": None}
    return {
        "requests": int(row["Request Count"]),
        "failures": int(row["Failure Count"]),
        "rps": _number(row["Requests/s"]) or 0.0,
        "p50_ms": _number(row["50%"]),
        "p95_ms": _number(row["95%"]),
        "p99_ms": _number(row["99%"]),
    }


def history(history_csv: Path) -> list[HistoryPoint]:
    """The aggregate rows of <prefix>_stats_history.csv (with --csv-full-history its percentiles cover
    the last 10 seconds, not the whole run), for the windows that saw requests."""
    out = []
    for r in rows(history_csv):
        if r.get("Name") != "Aggregated" or int(r.get("User Count") or 0) == 0 or not _number(r["Requests/s"]):
            continue
        out.append(HistoryPoint(int(r["User Count"]), _number(r["Requests/s"]) or 0.0,
                                _number(r["50%"]), _number(r["95%"]), _number(r["99%"])))  # fmt: skip
    return out
