"""Refresh cost of every view at 1x, 2x and 4x the `standard` dataset, side by side.

For each materialized view: REFRESH ... CONCURRENTLY (what the refresher runs) and a plain REFRESH.
For mv_feed_projects, which the fold keeps: one fold after 1,000 upvote toggles on random projects
(the incremental path, what production runs every 500 ms), and feed_rebuild() (a full recompute).

    python -m bench.refresh_cost [--factors 1 2 4]
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

import psycopg
from psycopg import sql

from bench.scratch import scratch_database
from denorm.logs import configure_logging
from denorm.maintenance import fold
from denorm.readmodels import Kind, of_kind
from denorm.seed import STANDARD, seed

VIEWS = [m.name for m in of_kind(Kind.MATVIEW)]


def timed(conn: psycopg.Connection[Any], query: sql.Composed | str) -> float:
    started = time.perf_counter()
    conn.execute(query if isinstance(query, sql.Composed) else query.encode())
    return time.perf_counter() - started


def measure(factor: float) -> dict[str, tuple[float, float]]:
    scale = STANDARD.times(factor)
    out: dict[str, tuple[float, float]] = {}
    with scratch_database("bench_refresh") as url, psycopg.connect(url, autocommit=True) as conn:
        seed(url, scale)
        for view in VIEWS:
            name = sql.Identifier(view)
            conn.execute(sql.SQL("REFRESH MATERIALIZED VIEW {}").format(name))  # warm the caches
            concurrent = timed(conn, sql.SQL("REFRESH MATERIALIZED VIEW CONCURRENTLY {}").format(name))
            plain = timed(conn, sql.SQL("REFRESH MATERIALIZED VIEW {}").format(name))
            out[view] = (concurrent, plain)
        rng = random.Random(4)
        for _ in range(1000):
            conn.execute(
                "WITH gone AS (DELETE FROM project_upvotes WHERE user_id = %(u)s AND project_id = %(p)s RETURNING 1) "
                "INSERT INTO project_upvotes (user_id, project_id) SELECT %(u)s, %(p)s "
                "WHERE NOT EXISTS (SELECT 1 FROM gone)",
                {"u": rng.randint(1, scale.users), "p": rng.randint(1, scale.projects)},
            )
        started = time.perf_counter()
        fold(conn)
        folded = time.perf_counter() - started
        rebuild = timed(conn, "SELECT feed_rebuild()")
        out["mv_feed_projects"] = (folded, rebuild)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--factors", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    args = parser.parse_args()
    configure_logging("WARNING")
    results = {}
    for factor in args.factors:
        started = time.perf_counter()
        results[factor] = measure(factor)
        print(f"measured {factor:g}x in {time.perf_counter() - started:.0f} s", flush=True)
    labels = [(f"{f:g}x conc", f"{f:g}x plain") for f in args.factors]
    head = "".join(f"{conc:>12}{plain:>12}" for conc, plain in labels)
    print(f"seconds per refresh; datasets {', '.join(f'{f:g}x' for f in args.factors)} the standard one")
    print(f"{'view':<26}{head}")
    for view in ["mv_feed_projects", *VIEWS]:
        cells = "".join(f"{results[f][view][0]:>12.3f}{results[f][view][1]:>12.3f}" for f in args.factors)
        print(f"{view:<26}{cells}")
    print("mv_feed_projects: 'conc' is one incremental fold after 1,000 upvote toggles, 'plain' feed_rebuild()")


if __name__ == "__main__":
    main()
