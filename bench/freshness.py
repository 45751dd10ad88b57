"""Feed freshness: time from a write to its visibility in mv_feed_projects, under a steady write load.

The refresher runs as in production (the fold every REFRESHER_FOLD_MS, default 500 ms); writer
threads toggle upvotes at a fixed total rate; a prober renames a random project to a unique title
and polls the feed (every 5 ms) until the new title shows. It prints the p50, p99 and maximum.

    python -m bench.freshness [--scale standard] [--write-rate 300] [--probes 200]
"""

from __future__ import annotations

import argparse
import random
import statistics
import threading
import time

import psycopg

from bench.scratch import scratch_database
from denorm.config import Settings
from denorm.logs import configure_logging
from denorm.seed import SCALES, seed
from services.refresher.worker import Refresher

TOGGLE = """
WITH gone AS (DELETE FROM project_upvotes WHERE user_id = %(u)s AND project_id = %(p)s RETURNING 1)
INSERT INTO project_upvotes (user_id, project_id) SELECT %(u)s, %(p)s WHERE NOT EXISTS (SELECT 1 FROM gone)
"""


def writer(url: str, users: range, projects: int, rate: float, stop: threading.Event, done: list[int]) -> None:
    rng = random.Random(users.start)
    interval = 1 / rate
    with psycopg.connect(url, autocommit=True) as conn:
        next_at = time.perf_counter()
        while not stop.is_set():
            conn.execute(TOGGLE, {"u": rng.choice(users), "p": rng.randint(1, projects)})
            done[0] += 1
            next_at += interval
            delay = next_at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=list(SCALES), default="standard")
    parser.add_argument("--write-rate", type=float, default=300.0, help="upvote toggles per second, in total")
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--probes", type=int, default=200)
    args = parser.parse_args()
    configure_logging("WARNING")
    scale = SCALES[args.scale]
    with scratch_database("bench_fresh") as url:
        seed(url, scale)
        settings = Settings(database_url=url, refresher_metrics_port=0)
        refresher = Refresher(settings)
        runner = threading.Thread(target=refresher.run, daemon=True)
        runner.start()
        stop = threading.Event()
        counts = [[0] for _ in range(args.writers)]
        per_writer = scale.users // args.writers
        writers = [
            threading.Thread(
                target=writer,
                args=(
                    url,
                    range(i * per_writer + 1, (i + 1) * per_writer + 1),
                    scale.projects,
                    args.write_rate / args.writers,
                    stop,
                    counts[i],
                ),
                daemon=True,
            )
            for i in range(args.writers)
        ]
        for t in writers:
            t.start()
        time.sleep(3)  # let the load and the fold settle into their rhythm
        rng = random.Random(1)
        lags: list[float] = []
        started = time.perf_counter()
        writes_before = sum(c[0] for c in counts)
        with psycopg.connect(url, autocommit=True) as conn:
            for n in range(args.probes):
                project = rng.randint(1, scale.projects)
                title = f"probe {n} {rng.random():.6f}"
                conn.execute("UPDATE projects SET title = %s WHERE id = %s", (title, project))
                written = time.perf_counter()
                while True:
                    row = conn.execute("SELECT title FROM mv_feed_projects WHERE id = %s", (project,)).fetchone()
                    if row is not None and row[0] == title:
                        break
                    time.sleep(0.005)
                lags.append(time.perf_counter() - written)
                time.sleep(rng.uniform(0.0, 0.2))
        elapsed = time.perf_counter() - started
        stop.set()
        refresher.stop()
        runner.join(timeout=60)
        writes = sum(c[0] for c in counts) - writes_before
    print(
        f"dataset={args.scale} ({scale.projects:,} projects, {scale.upvotes:,} upvotes); "
        f"write load {writes / elapsed:,.0f} upvote toggles/s from {args.writers} connections; "
        f"fold every {settings.refresher_fold_ms} ms; {len(lags)} probes"
    )
    print(
        f"write -> visible in mv_feed_projects: p50 {statistics.median(lags) * 1000:.0f} ms, "
        f"p99 {percentile(lags, 0.99) * 1000:.0f} ms, max {max(lags) * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
