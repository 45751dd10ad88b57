"""How fast a streaming replica replays what the system writes (docs/capacity.md).

A private primary and a `pg_basebackup -R` replica of it (bench/faults.py), the `small` dataset.
With the replica's replay paused, the primary takes --changes writes of the load test's mix (upvote
toggles, comments, messages, chain joins and leaves; bench/freshness.py), folded every 500 as the
refresher would; then replay resumes, timed until the replica has replayed all of it. Prints the
WAL per change, and the replay rate in MiB/s and in changes/s: the write rate one replica can
follow, whatever its reads cost.

    python -m bench.replica_replay [--changes 20000]
"""

from __future__ import annotations

import argparse
import contextlib
import random
import time
from typing import Any

import psycopg

from bench.faults import PrivatePostgres, PrivateReplica
from bench.freshness import WRITES, Ids, word
from denorm.logs import configure_logging
from denorm.maintenance import drain, fold, wal_position
from denorm.migrate import ensure_database, migrate
from denorm.seed import SCALES, seed


def replayed(standby: psycopg.Connection[Any]) -> int:
    """The replica's replay position, in bytes, as wal_position() gives the primary's."""
    row = standby.execute("SELECT pg_last_wal_replay_lsn() - '0/0'::pg_lsn").fetchone()
    assert row is not None
    return int(row[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=20_000)
    parser.add_argument("--scale", default="small", choices=list(SCALES))
    args = parser.parse_args()
    configure_logging("WARNING")
    primary = PrivatePostgres(replicable=True)
    replica: PrivateReplica | None = None
    try:
        url = primary.url("denorm")
        ensure_database(url)
        migrate(url, echo=lambda _m: None)
        scale = SCALES[args.scale]
        seed(url, scale, seed=5)
        with psycopg.connect(url, autocommit=True) as conn:
            drain(conn, worker="bench")
            conn.execute("VACUUM ANALYZE")
        replica = PrivateReplica(primary)
        with (
            psycopg.connect(url, autocommit=True) as conn,
            psycopg.connect(replica.url("denorm"), autocommit=True) as standby,
        ):
            standby.execute("SELECT pg_wal_replay_pause()")
            ids = Ids(scale.users, scale.projects, scale.chains, scale.threads)
            rng = random.Random(3)
            statements = [s for s, weight in WRITES for _ in range(weight)]
            start = wal_position(conn)
            began = time.perf_counter()
            for i in range(args.changes):
                params = {"u": ids.writer_user(rng), "p": ids.writer_project(rng), "c": ids.writer_chain(rng),
                          "w": word(rng)}  # fmt: skip
                with contextlib.suppress(psycopg.errors.IntegrityError):
                    conn.execute(rng.choice(statements).encode(), params)
                if i % 500 == 499:
                    fold(conn, max_keys=1_000_000)
            fold(conn, max_keys=1_000_000)
            written_s = time.perf_counter() - began
            end = wal_position(conn)
            mib = (end - start) / 2**20
            resumed = time.perf_counter()
            standby.execute("SELECT pg_wal_replay_resume()")
            while replayed(standby) < end:
                time.sleep(0.01)
            replay_s = time.perf_counter() - resumed
        print(f"dataset={args.scale}; {args.changes:,} writes of the freshness mix, folded every 500")
        rate = args.changes / written_s
        print(f"WAL: {mib:.1f} MiB, {mib * 2**10 / args.changes:.2f} KiB per change; "
              f"the primary wrote it in {written_s:.1f} s from one connection ({rate:,.0f} changes/s)")  # fmt: skip
        print(f"replay: {replay_s:.2f} s, {mib / replay_s:.1f} MiB/s, {args.changes / replay_s:,.0f} changes/s")
    finally:
        if replica is not None:
            replica.drop()
        primary.drop()


if __name__ == "__main__":
    main()
