"""Maintenance cost per 1,000 changes of every read model, at 1x, 2x and 4x the `standard` dataset.

On a database seeded at each size (every read model folded and refreshed first, every table and
index read into the page cache: bench/scratch.py warm()), --rounds times:
1,000 writes of the freshness bench's mix (upvote toggles, comments, project renames, chain joins
and leaves, new threads, new posts; bench/freshness.py), as plain SQL; then the maintenance they
call for, timed per read model: each step of one fold (denorm/maintenance.py: a read model kept
by the fold, or a ledger's), and the refresh of each materialized view they made pending, with
the write-ahead log each wrote (full-page images included: their share depends on how recently a
checkpoint ran; pg_walinspect splits the whole of it into records and full-page images). Prints
the median seconds and MiB per read model at each size, and the ratio of the largest size to the
first.

    python -m bench.maintenance_cost [--factors 1 2 4] [--rounds 3] [--wal-compression lz4] [--no-checkpoint]
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import time
from typing import Any

import psycopg

from bench.freshness import WRITES, Ids, word
from bench.scratch import add_sizes_arguments, sized_database, warm
from denorm.logs import configure_logging
from denorm.maintenance import RefreshResult, Timing, collect, drain, fold, refresh_one, wal_position
from denorm.readmodels import REGISTRY, Kind
from denorm.seed import SCALES

CHANGES = 1000


def apply_changes(conn: psycopg.Connection[Any], ids: Ids, rng: random.Random) -> None:
    statements = [s for s, weight in WRITES for _ in range(weight)]
    for _ in range(CHANGES):
        params = {"u": ids.writer_user(rng), "p": ids.writer_project(rng), "c": ids.writer_chain(rng), "w": word(rng)}
        with contextlib.suppress(psycopg.errors.IntegrityError):
            conn.execute(rng.choice(statements).encode(), params)


def wal_split(conn: psycopg.Connection[Any], start: int, end: int) -> tuple[float, float]:
    """MiB of (records, full-page images) written between two WAL positions (pg_walinspect)."""
    row = conn.execute(
        "SELECT coalesce(sum(record_size), 0), coalesce(sum(fpi_size), 0) FROM pg_get_wal_stats("
        "'0/0'::pg_lsn + %s::numeric, least('0/0'::pg_lsn + %s::numeric, pg_current_wal_flush_lsn()))",
        (start, end),
    ).fetchone()
    assert row is not None
    return float(row[0]) / 2**20, float(row[1]) / 2**20


def one_round(
    conn: psycopg.Connection[Any], ids: Ids, rng: random.Random, checkpoint: bool
) -> tuple[dict[str, tuple[float, float]], tuple[float, float]]:
    """(seconds, MiB of WAL) of each read model's maintenance after one batch of changes; and the
    MiB of records and of full-page images that all of it wrote."""
    if checkpoint:
        # Each round starts from a checkpoint: the first change to each page after one writes the
        # whole page, and without this, where the server's own checkpoints fall decides a round's cost.
        conn.execute("CHECKPOINT")
    apply_changes(conn, ids, rng)
    time.sleep(1.1)  # past the refresher's debounce, as in production
    start = wal_position(conn)
    steps = fold(conn, max_keys=1_000_000)
    assert steps is not None
    spent = {s.step: (s.seconds, s.wal_bytes / 2**20) for s in steps}
    collect(conn)
    refreshed: list[tuple[RefreshResult, int]] = []
    while True:
        before = wal_position(conn)
        if (result := refresh_one(conn, Timing(), "bench")) is None:
            break
        refreshed.append((result, wal_position(conn) - before))
    out: dict[str, tuple[float, float]] = {}
    for model in REGISTRY:
        if model.kind in (Kind.LEDGER, Kind.FOLD) and model.fold is not None:
            out[model.name] = spent.get(model.fold, (0.0, 0.0))
        elif model.kind is Kind.MATVIEW:
            mine = [(r.duration_ms / 1000, wal / 2**20) for r, wal in refreshed if r.view_name == model.clock]
            out[model.name] = (sum(t for t, _ in mine), sum(w for _, w in mine))
    return out, wal_split(conn, start, wal_position(conn))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sizes_arguments(parser)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--wal-compression",
        choices=["off", "pglz", "lz4"],
        default="off",
        help="compress the full-page images the maintenance writes (this session only; a superuser setting)",
    )
    parser.add_argument(
        "--checkpoint",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a CHECKPOINT before each round's changes, so that rounds and sizes start alike (a superuser's)",
    )
    args = parser.parse_args()
    configure_logging("WARNING")
    results: dict[float, dict[str, tuple[float, float]]] = {}
    splits: dict[float, tuple[float, float]] = {}
    for i, factor in enumerate(args.factors):
        scale = SCALES[args.scale].times(factor)
        with sized_database(args, i, "bench_refresh") as url, psycopg.connect(url, autocommit=True) as conn:
            drain(conn, worker="bench")
            conn.execute("VACUUM ANALYZE")
            warm(conn)
            conn.execute("SELECT set_config('wal_compression', %s, false)", (args.wal_compression,))
            ids = Ids(scale.users, scale.projects, scale.chains, scale.threads)
            rng = random.Random(4)
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
            measured = [one_round(conn, ids, rng, args.checkpoint) for _ in range(args.rounds)]
            rounds = [m for m, _ in measured]
            results[factor] = {
                name: (statistics.median(r[name][0] for r in rounds), statistics.median(r[name][1] for r in rounds))
                for name in rounds[0]
            }
            splits[factor] = (
                statistics.median(w[0] for _, w in measured),
                statistics.median(w[1] for _, w in measured),
            )
        print(f"measured {factor:g}x", flush=True)
    first, last = args.factors[0], args.factors[-1]
    kinds = {m.name: m.kind.value for m in REGISTRY}
    for what, index, form in (("seconds", 0, ".3f"), ("MiB of write-ahead log", 1, ".2f")):
        print(f"{what} of maintenance per {CHANGES:,} mixed plain-SQL changes (median of {args.rounds}); "
              f"datasets {', '.join(f'{f:g}x' for f in args.factors)} the {args.scale} one")  # fmt: skip
        print(f"{'read model':<30}{'kind':<9}" + "".join(f"{f'{f:g}x':>10}" for f in args.factors)
              + f"{f'{last:g}x/{first:g}x':>10}")  # fmt: skip
        for name in results[first]:
            cells = "".join(f"{results[f][name][index]:>10{form}}" for f in args.factors)
            base = results[first][name][index]
            ratio = results[last][name][index] / base if base > 0 else float("nan")
            print(f"{name:<30}{kinds[name]:<9}{cells}{ratio:>10.2f}")
    print("(a fold step shared by several read models is shown for each)")
    split = ", ".join(f"{f:g}x {splits[f][0]:.2f} / {splits[f][1]:.2f}" for f in args.factors)
    print(f"all of it, MiB of WAL records / of full-page images (pg_walinspect; the images depend on how "
          f"recently a checkpoint ran{': one ran before each round' if args.checkpoint else ''}): {split}")  # fmt: skip


if __name__ == "__main__":
    main()
