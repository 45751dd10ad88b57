"""Cost stated: single-row insert throughput with the read-model triggers against without them.

Three realistic API writes, one row per transaction, each run by pgbench on one scratch database:
  upvote   - one upvote by a random user of the client's own user range (so clients never race on a
             key) on a random project, ON CONFLICT DO NOTHING (the API's idempotent POST)
  comment  - one comment by a random user on a random project
  message  - one message between two random distinct users

For each, in one run: throughput with --clients clients (2 pgbench threads) and the average latency of
a single client, once with the table's read-model triggers disabled (ALTER TABLE ... DISABLE TRIGGER
USER: the foreign-key triggers stay on) and once with them enabled. The ledgers are folded (untimed)
after every case, so each case starts with empty ledgers, as under a running refresher;
--fold-every S also folds every S seconds during the cases, as the refresher does. At the end the
read models are rebuilt (they missed the trigger-less cases) and checked against the truth views.
Columns: tps with the triggers off and on and their ratio; the single client's average latency off
and on, their ratio and difference (the triggers' cost per row); rows inserted by both runs.

    python -m bench.trigger_cost [--scale small] [--factor 1] [--clients 8] [--seconds 8] [--fold-every 0]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from dataclasses import dataclass

import psycopg

from bench.read_model_check import (
    Conn,
    PgbenchResult,
    check_all,
    count_rows,
    fold,
    pgbench,
    set_triggers,
    verdict,
)
from bench.scratch import scratch_database
from denorm.logs import configure_logging
from denorm.maintenance import fold_all, rebuild_all
from denorm.readmodels import Kind
from denorm.seed import SCALES, seed

# (case, table, pgbench script). {stride}: users per client; {users}, {projects}: the dataset's sizes.
# pgbench's :client_id counts from 0, so client c owns users c*stride+1 .. (c+1)*stride.
CASES: tuple[tuple[str, str, str], ...] = (
    (
        "upvote",
        "project_upvotes",
        """\\set u :client_id * {stride} + random(1, {stride})
\\set p random(1, {projects})
INSERT INTO project_upvotes (user_id, project_id) VALUES (:u, :p) ON CONFLICT DO NOTHING;
""",
    ),
    (
        "comment",
        "project_comments",
        """\\set u random(1, {users})
\\set p random(1, {projects})
INSERT INTO project_comments (project_id, author_id, body) VALUES (:p, :u, 'A benchmark comment.');
""",
    ),
    (
        "message",
        "messages",
        # r = s + k (mod users) with k in 1 .. users-1: never the sender.
        """\\set s random(1, {users})
\\set r 1 + (:s + random(0, {users} - 2)) % {users}
INSERT INTO messages (sender_id, recipient_id, body) VALUES (:s, :r, 'A benchmark message.');
""",
    ),
)


class Folder(threading.Thread):
    """Folds the ledgers every `interval` seconds, as the refresher does in production."""

    def __init__(self, url: str, interval: float) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.interval = interval
        self.stop = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop.wait(self.interval):
                fold_all(conn)


@dataclass
class Run:
    throughput: PgbenchResult
    single: PgbenchResult
    rows: int


def measure(
    conn: Conn, url: str, table: str, script: str, clients: int, seconds: int, fold_every: float
) -> tuple[PgbenchResult, int]:
    conn.execute("CHECKPOINT")
    before = count_rows(conn, table)
    folder = Folder(url, fold_every) if fold_every > 0 else None
    if folder:
        folder.start()
    try:
        result = pgbench(url, script, clients, seconds)
    finally:
        if folder:
            folder.stop.set()
            folder.join()
    rows = count_rows(conn, table) - before
    fold(conn)  # untimed: the next case starts with empty ledgers
    time.sleep(1)
    return result, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=list(SCALES), default="small")
    parser.add_argument("--factor", type=float, default=1.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument(
        "--fold-every", type=float, default=0.0, help="fold during the cases every S seconds (0: only between)"
    )
    args = parser.parse_args()
    configure_logging("WARNING")
    scale = SCALES[args.scale].times(args.factor)
    with scratch_database("bench_trig") as url:
        seed(url, scale)
        ok = True
        with psycopg.connect(url, autocommit=True) as conn:
            print(
                f"dataset={args.scale} x{args.factor} ({scale.users} users, {scale.projects} projects), "
                f"{args.seconds} s per case, one row per transaction, pgbench -M prepared; "
                f"throughput: {args.clients} clients, latency: 1 client; "
                + (f"fold every {args.fold_every} s" if args.fold_every > 0 else "fold between cases only")
            )
            results: dict[tuple[str, bool], Run] = {}
            for case, table, template in CASES:
                for enabled in (False, True):
                    set_triggers(conn, (table,), enabled)
                    runs: list[tuple[PgbenchResult, int]] = []
                    for clients in (args.clients, 1):
                        script = template.format(
                            stride=scale.users // clients, users=scale.users, projects=scale.projects
                        )
                        runs.append(measure(conn, url, table, script, clients, args.seconds, args.fold_every))
                    results[case, enabled] = Run(runs[0][0], runs[1][0], runs[0][1] + runs[1][1])
                set_triggers(conn, (table,), True)

            print(
                f"{'case':<8} {'tps off':>9} {'tps on':>9} {'on/off':>7}   "
                f"{'lat off ms':>10} {'lat on ms':>10} {'on/off':>7} {'+ms/row':>8}   {'rows off':>9} {'rows on':>9}"
            )
            for case, _table, _template in CASES:
                off, on = results[case, False], results[case, True]
                print(
                    f"{case:<8} {off.throughput.tps:>9.0f} {on.throughput.tps:>9.0f} "
                    f"{on.throughput.tps / off.throughput.tps:>7.2f}   "
                    f"{off.single.latency_ms:>10.3f} {on.single.latency_ms:>10.3f} "
                    f"{on.single.latency_ms / off.single.latency_ms:>7.2f} "
                    f"{on.single.latency_ms - off.single.latency_ms:>8.3f}   "
                    f"{off.rows:>9,} {on.rows:>9,}"
                )

            # Part of the run wrote with the triggers off: rebuild, then prove the models exact.
            started = time.perf_counter()
            rebuild_all(conn, Kind.LEDGER)
            rebuilt = time.perf_counter() - started
            checks = check_all(conn)
            result = verdict(checks)
            ok = result == "exact"
            print(
                f"the ledger-kept read models rebuilt: {rebuilt:.2f} s; read models against truth afterwards: {result}"
            )
            for c in checks:
                for sample in c.samples:
                    print(f"  {c.view}: {sample}")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
