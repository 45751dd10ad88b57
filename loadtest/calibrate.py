"""How fast this machine is at the moment of a run, so that two runs can be compared.

The same 5000 users have cost one machine of this kind 1.02 cores in one hour and 1.68 in the
next (docs/performance.md): a run's verdict says as much about the machine's speed at that moment
as about the code. Before the load the runner measures, in a few seconds:

- `python_ms`: a fixed piece of pure-Python work like a request's (a page of rows to JSON and
  back, a dict per row), best of several tries: the speed the API and Locust get from a core;
- `round_trip_ms`: the median of `SELECT 1` round trips to Postgres;
- `commit_ms`: the median of durable commits of a transaction that wrote WAL (a transactional
  `pg_logical_emit_message`, which touches no table), each waiting for the WAL flush as an
  upvote's does: the disk's flush time plus a round trip. (A transaction that only takes an id,
  `txid_current()`, commits without a flush.)
- `paced_round_trip_ms` and `paced_commit_ms`: the same two, one every 10 ms (an upvote's pace in
  the lone bench, bench/upvote_latency.py) instead of back to back. Between two, the cores may
  go idle, and waking a process on an idle virtual core costs some machines far more than others
  (on one, a round trip 0.10 ms back to back and 0.57 ms paced: docs/performance.md): an
  upvote's few round trips each pay it, at rest and at every load that leaves a core idle.

The figures go into summary.json and the line printed before each step. Taken at rest, they catch
a slower machine, not a host that grows busy during the load: compare runs by them and by the cores
each load took (docs/performance.md).
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

import psycopg

_ROWS = [
    {"id": i, "title": f"project {i}", "tagline": "a tool " * 6, "upvote_count": i * 7, "comment_count": i % 13,
     "score": i / 3.0, "created_at": "2026-12-01T00:00:00Z", "tags": ["python", "postgres", "redis"]}
    for i in range(20)
]  # fmt: skip


def _python_once() -> None:
    for _ in range(200):
        page = json.loads(json.dumps({"items": _ROWS, "next_cursor": "after=123&id=456"}))
        titles = {row["id"]: row["title"].upper() for row in page["items"]}
        assert len(titles) == len(_ROWS)


def python_ms(tries: int = 5) -> float:
    """The fixed workload's best time over `tries`, in ms (the best: the least disturbed)."""
    best = float("inf")
    for _ in range(tries):
        started = time.perf_counter()
        _python_once()
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 2)


_COMMIT = "SELECT pg_logical_emit_message(true, 'denorm-calibrate', '')"


PACE_S = 0.010


def _median_ms(conn: psycopg.Connection[Any], statement: str, n: int, pace_s: float = 0.0) -> float:
    times = []
    for _ in range(n):
        if pace_s:
            time.sleep(pace_s)
        started = time.perf_counter()
        conn.execute(statement).fetchone()
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1000, 3)


def postgres_ms(database_url: str, n: int = 200, paced: int = 100) -> dict[str, float]:
    """The round trip and the durable commit, medians over `n` each back to back and over `paced`
    each one every PACE_S, on a connection of their own: autocommit (each statement its own
    commit) and synchronous_commit on, whatever the server's default."""
    with psycopg.connect(database_url, autocommit=True, options="-c synchronous_commit=on") as conn:
        return {
            "round_trip_ms": _median_ms(conn, "SELECT 1", n),
            "commit_ms": _median_ms(conn, _COMMIT, n),
            "paced_round_trip_ms": _median_ms(conn, "SELECT 1", paced, PACE_S),
            "paced_commit_ms": _median_ms(conn, _COMMIT, paced, PACE_S),
        }


def machine_speed(database_url: str) -> dict[str, float]:
    return {"python_ms": python_ms(), **postgres_ms(database_url)}


def describe(machine: dict[str, float]) -> str:
    """The reading as the runner prints it, before each step and in summary.txt."""
    return (f"machine speed: fixed Python work {machine['python_ms']:.1f} ms, Postgres round trip "
            f"{machine['round_trip_ms']:.3f} ms, durable commit {machine['commit_ms']:.3f} ms; one every "
            f"{PACE_S * 1000:.0f} ms: {machine['paced_round_trip_ms']:.3f} and "
            f"{machine['paced_commit_ms']:.3f} ms (loadtest/calibrate.py)")  # fmt: skip
