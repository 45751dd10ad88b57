"""How long `denorm seed` takes, and the row counts it produces, on a scratch database.

python -m bench.seed_speed --scale standard [--jobs 2] [--seed 42]
"""

from __future__ import annotations

import argparse
import platform

from bench.scratch import scratch_database
from denorm.logs import configure_logging
from denorm.seed import SCALES, seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=list(SCALES), default="standard")
    parser.add_argument("--factor", type=float, default=1.0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    configure_logging("WARNING")
    scale = SCALES[args.scale].times(args.factor)
    with scratch_database("bench_seed") as url:
        report = seed(url, scale, seed=args.seed, jobs=args.jobs)
    total = sum(report.counts.values())
    print(f"scale={args.scale} factor={args.factor} jobs={args.jobs} seed={args.seed} on {platform.node()}")
    print(f"{'table':<20} {'rows':>12}")
    for table, rows in report.counts.items():
        print(f"{table:<20} {rows:>12,}")
    print(f"{'total':<20} {total:>12,}")
    print(f"seconds: {report.seconds:.1f}  ({total / report.seconds:,.0f} rows/s, VACUUM ANALYZE included)")


if __name__ == "__main__":
    main()
