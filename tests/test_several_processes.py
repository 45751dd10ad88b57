"""Several processes past one machine's worth (issue 19, point 5): two API processes reading from a
streaming replica, two refreshers and a reconciler, on one primary and one Redis, under the Locust
suite from two Locust processes (one per API). Checked afterwards: no request failed, the
reconciler finds no drift, and the refreshers never refreshed one view at the same time."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from denorm.config import DEV_JWT_SECRET
from loadtest.localproc import free_port, wait_ready
from tests.support import DENORM, cli_env, run_denorm

LOCUSTFILE = Path(__file__).resolve().parent.parent / "loadtest" / "locustfile.py"
# Targets no healthy run misses: this checks correctness under concurrency, not this machine's speed.
LENIENT = 'default_ms = 10000\n[server]\n"* /api/projects/{project_id}/upvote" = 2500\n'


def started(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)


@pytest.fixture
def system(
    replicated: tuple[str, str], redis_prefix: str, tmp_path: Path
) -> Iterator[tuple[list[str], dict[str, str]]]:
    """Two APIs and two refreshers running; their base URLs and environment."""
    primary, replica = replicated
    env = cli_env(DATABASE_URL=primary, DATABASE_READ_URL=replica, REDIS_KEY_PREFIX=redis_prefix,
                  ENVIRONMENT="test", JWT_SECRET=DEV_JWT_SECRET, API_ACCESS_LOG="false", LOG_LEVEL="WARNING",
                  REFRESHER_METRICS_PORT="0", API_RATE_WRITES_PER_ADDRESS="1000000/second",
                  API_RATE_WRITES_PER_TOKEN="1000000/second",
                  API_RATE_SEARCH_MISSES_PER_ADDRESS="1000000/second")  # fmt: skip
    procs: list[subprocess.Popen[bytes]] = []
    bases = []
    try:
        for i in range(2):
            procs.append(started([*DENORM, "refresher"], env, tmp_path / f"refresher-{i}.log"))
            port = free_port()
            api = started([*DENORM, "api", "--port", str(port), "--admin-port", "0"], env, tmp_path / f"api-{i}.log")
            procs.append(api)
            bases.append(f"http://127.0.0.1:{port}")
            wait_ready(bases[-1], api)
        yield bases, env
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)


def test_two_apis_two_refreshers_and_a_reconciler_under_load(
    system: tuple[list[str], dict[str, str]],
    replicated: tuple[str, str],
    tmp_path: Path,
) -> None:
    bases, env = system
    targets = tmp_path / "targets.toml"
    targets.write_text(LENIENT)
    load_env = {**env, "LOADTEST_USER_IDS": "1-200", "LOADTEST_THINK_SCALE": "0.1", "LOADTEST_TARGETS": str(targets),
                "LOADTEST_SERVER_GATES": "off"}  # fmt: skip
    since = time.time()
    locusts = [
        started([sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--users", "40",
                 "--spawn-rate", "20", "--run-time", "25s", "--stop-timeout", "5", f"--host={base}",
                 "--only-summary", f"--csv={tmp_path / f'locust-{i}'}"], load_env, tmp_path / f"locust-{i}.log")
        for i, base in enumerate(bases)
    ]  # fmt: skip
    for i, locust in enumerate(locusts):
        assert locust.wait(timeout=120) == 0, (tmp_path / f"locust-{i}.log").read_text()[-4000:]
    requests = 0
    for i in range(2):
        with (tmp_path / f"locust-{i}_stats.csv").open() as f:
            total = next(line for line in f if ",Aggregated," in line).split(",")
        requests += int(total[2])
        assert int(total[3]) == 0, f"failed requests in locust {i}: {total}"
    assert requests > 500, requests

    time.sleep(2)  # the refreshers' last fold and refreshes
    checked = run_denorm(["reconcile", "--dry-run"], {**env, "DATABASE_URL": replicated[0]})
    assert checked.returncode == 0, checked.stderr[-3000:]
    summary = json.loads(checked.stdout.strip().splitlines()[-1])
    assert summary["drift_rows"] == 0, summary

    with psycopg.connect(replicated[0]) as conn:
        refreshes = conn.execute(
            "SELECT view_name, refresh_started_at, refresh_started_at + make_interval(secs => duration_ms / 1000.0), "
            "worker FROM mv_refresh_log WHERE refresh_started_at >= to_timestamp(%s) ORDER BY 1, 2", (since,)
        ).fetchall()  # fmt: skip
    assert refreshes, "no view was refreshed under the load"
    for (view, _, end, worker), (next_view, start, _, other) in itertools.pairwise(refreshes):
        if view == next_view:
            assert start >= end, f"{view} refreshed by {worker} and {other} at once"
