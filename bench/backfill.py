"""The backfill: how long rebuilding the ledger-kept read models takes on a seeded dataset, and the full
comparison.

Each ledger-kept read model's rebuild function (db/readmodels/, as the registry names them) is
what the seed and a TRUNCATE run: it truncates the base table and ledger and fills the base from
the truth view in one pass over the source. On a
scratch database seeded at --scale (default `standard`, ~90 s to seed; the seed folds its own
deltas at its end), this times the rebuild --runs times, then an ANALYZE of the rebuilt tables,
then the full comparison of every read model with its truth view (EXCEPT ALL both ways), and prints
the row counts of the base tables. Exits non-zero if any comparison differs.

    python -m bench.backfill [--scale standard] [--factor 1] [--runs 2]
"""

from __future__ import annotations

import argparse
import sys
import time

import psycopg
from psycopg import sql

from bench.read_model_check import BASE_TABLES, LEDGERS, check_all, count_rows, verdict
from bench.scratch import scratch_database
from denorm.logs import configure_logging
from denorm.maintenance import rebuild_all
from denorm.readmodels import Kind
from denorm.seed import SCALES, seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=list(SCALES), default="standard")
    parser.add_argument("--factor", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    configure_logging("WARNING")
    scale = SCALES[args.scale].times(args.factor)
    ok = True
    with scratch_database("bench_backfill") as url:
        seeded = seed(url, scale)
        with psycopg.connect(url, autocommit=True) as conn:
            print(
                f"dataset={args.scale} x{args.factor}: {sum(seeded.counts.values()):,} source rows "
                f"({seeded.counts['users']:,} users, {seeded.counts['projects']:,} projects, "
                f"{seeded.counts['project_upvotes']:,} upvotes, {seeded.counts['messages']:,} messages), "
                f"seeded in {seeded.seconds:.1f} s"
            )
            pending = sum(count_rows(conn, t) for t in LEDGERS)
            print(f"deltas pending after the seed (it folds at its end): {pending:,}")
            print(f"{'step':<36} {'seconds':>8}")
            for run in range(1, args.runs + 1):
                started = time.perf_counter()
                rebuild_all(conn, Kind.LEDGER)
                print(f"{f'rebuild, ledger-kept, run {run}':<36} {time.perf_counter() - started:>8.2f}")
            started = time.perf_counter()
            for table in BASE_TABLES:
                conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))
            print(f"{'ANALYZE of the base tables':<36} {time.perf_counter() - started:>8.2f}")
            checks = check_all(conn)
            for c in checks:
                state = "exact" if c.exact else f"+{c.only_in_view}/-{c.only_in_truth} rows"
                print(f"{'compare ' + c.view:<36} {c.seconds:>8.2f}  {state}")
            result = verdict(checks)
            ok = result == "exact"
            print(f"{'compare, all read models':<36} {sum(c.seconds for c in checks):>8.2f}  {result}")
            for c in checks:
                for sample in c.samples:
                    print(f"  {c.view}: {sample}")
            print(f"{'table':<36} {'rows':>12}")
            for table in BASE_TABLES:
                print(f"{table:<36} {count_rows(conn, table):>12,}")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
