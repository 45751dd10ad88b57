"""Bulk statements stay linear: single statements touching ~100k rows, with the read-model triggers.

On one seeded scratch database (default `small`, with as many users as the largest --rows, so that
one project can draw that many distinct upvoters), each statement below is timed alone, first with
the read-model triggers disabled (ALTER TABLE ... DISABLE TRIGGER USER) and then with them enabled;
the difference is the triggers' share. After every statement of the triggers-on pass the read
models are compared with their *_truth views (EXCEPT ALL both ways), once before and once after
folding every delta (denorm/maintenance.py fold_all) until nothing is left; checks and folds
are not timed. Exits non-zero if any comparison differs.

  a  insert N messages in one INSERT ... SELECT generate_series (sender <> recipient)
  b  mark those N messages read in one UPDATE
  c  delete them in one DELETE
  d  on one new project: insert N upvotes (one statement), N comments (one statement), then
     delete the project (one statement, cascading to its 2N rows)
  e  a backfill: 2N upvotes in one INSERT ... SELECT spread over users and projects (ON CONFLICT
     DO NOTHING), then delete them again in one DELETE

The triggers-off pass leaves the data as it found it, so both passes start from the same rows;
tables are vacuumed and analyzed before each pass. Several --rows give the cost per row at each
size side by side: a linear statement keeps its microseconds per row.

    python -m bench.bulk [--scale small] [--factor 1] [--rows 10000 100000]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from bench.read_model_check import (
    BASE_TABLES,
    LEDGERS,
    Conn,
    ViewCheck,
    check_all,
    fold,
    set_triggers,
    verdict,
)
from bench.scratch import scratch_database
from denorm.logs import configure_logging
from denorm.seed import SCALES, seed

# The source tables these statements write, directly or by cascade.
TOUCHED: tuple[str, ...] = ("projects", "project_upvotes", "project_comments", "messages")
# Backfilled upvotes carry this created_at, so that undoing them never removes a seeded upvote.
MARKER = datetime(2000, 1, 1, tzinfo=UTC)

INSERT_MESSAGES = """
INSERT INTO messages (sender_id, recipient_id, body)
SELECT 1 + g %% %(users)s,
       -- an offset of 1 .. users-1 from the sender: never the sender itself
       1 + (g %% %(users)s + 1 + (g * 7919) %% (%(users)s - 1)) %% %(users)s,
       'Bulk message ' || g
FROM generate_series(1::bigint, %(n)s::bigint) AS g
"""
READ_MESSAGES = "UPDATE messages SET read_at = now() WHERE id > %(after)s AND read_at IS NULL"
DELETE_MESSAGES = "DELETE FROM messages WHERE id > %(after)s"

NEW_PROJECT = "INSERT INTO projects (owner_id, title) VALUES (1, 'Bulk benchmark project') RETURNING id"
PROJECT_UPVOTES = """
INSERT INTO project_upvotes (user_id, project_id)
SELECT g, %(project)s FROM generate_series(1::bigint, %(n)s::bigint) AS g
"""
PROJECT_COMMENTS = """
INSERT INTO project_comments (project_id, author_id, body)
SELECT %(project)s, 1 + (g - 1) %% %(users)s, 'Bulk comment ' || g
FROM generate_series(1::bigint, %(n)s::bigint) AS g
"""
DELETE_PROJECT = "DELETE FROM projects WHERE id = %(project)s"

# g -> (g mod users, (g div users + 7919 (g mod users)) mod projects) is one-to-one while
# g < users * projects, so the statement's own pairs never collide; seeded pairs are skipped.
BACKFILL_PAIRS = """
SELECT 1 + g %% %(users)s AS user_id,
       1 + (g / %(users)s + (g %% %(users)s) * 7919) %% %(projects)s AS project_id
FROM generate_series(0::bigint, %(n)s::bigint - 1) AS g
"""
BACKFILL = (
    "INSERT INTO project_upvotes (user_id, project_id, created_at) SELECT user_id, project_id, %(marker)s FROM ("
    + BACKFILL_PAIRS
    + ") pairs ON CONFLICT DO NOTHING"
)
UNDO_BACKFILL = (
    "DELETE FROM project_upvotes v USING ("
    + BACKFILL_PAIRS
    + ") pairs WHERE v.user_id = pairs.user_id AND v.project_id = pairs.project_id AND v.created_at = %(marker)s"
)


@dataclass
class Timed:
    case: str
    rows: int
    seconds: float


@dataclass
class Checked:
    before_fold: list[ViewCheck]
    after_fold: list[ViewCheck]
    deltas_folded: int
    fold_seconds: float


class Pass:
    """Runs the statements of one pass, timing each; with `checking`, checks after each."""

    def __init__(self, conn: Conn, checking: bool) -> None:
        self.conn = conn
        self.checking = checking
        self.timed: list[Timed] = []
        self.checked: list[Checked | None] = []

    def run(self, case: str, query: str, params: dict[str, Any], rows: Callable[[int], int] | None = None) -> None:
        started = time.perf_counter()
        cur = self.conn.execute(query.encode(), params)
        seconds = time.perf_counter() - started
        touched = cur.rowcount if rows is None else rows(cur.rowcount)
        self.timed.append(Timed(case, touched, seconds))
        if self.checking:
            before = check_all(self.conn)
            deltas, fold_seconds = fold(self.conn)
            after = check_all(self.conn)
            self.checked.append(Checked(before, after, deltas, fold_seconds))
        else:
            self.checked.append(None)


def scalar(conn: Conn, query: str, params: dict[str, Any] | None = None) -> int:
    row = conn.execute(query.encode(), params).fetchone()
    assert row is not None
    return int(row[0])


def vacuum(conn: Conn) -> None:
    for table in TOUCHED + BASE_TABLES + LEDGERS:
        conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(table)))


def one_pass(conn: Conn, n: int, users: int, projects: int, enabled: bool) -> Pass:
    set_triggers(conn, TOUCHED, enabled)
    vacuum(conn)
    conn.execute("CHECKPOINT")
    p = Pass(conn, checking=enabled)
    base = {"n": n, "users": users, "projects": projects, "marker": MARKER}

    after = scalar(conn, "SELECT coalesce(max(id), 0) FROM messages")
    p.run("a insert messages", INSERT_MESSAGES, base)
    p.run("b mark them read", READ_MESSAGES, {**base, "after": after})
    p.run("c delete them", DELETE_MESSAGES, {**base, "after": after})

    project = scalar(conn, NEW_PROJECT)
    p.run("d insert upvotes", PROJECT_UPVOTES, {**base, "project": project})
    p.run("d insert comments", PROJECT_COMMENTS, {**base, "project": project})
    # The statement deletes one project row and cascades to its upvotes and comments.
    p.run("d delete project", DELETE_PROJECT, {**base, "project": project}, rows=lambda r: r + 2 * n)

    backfill = {**base, "n": 2 * n}
    p.run("e backfill upvotes", BACKFILL, backfill)
    p.run("e delete backfill", UNDO_BACKFILL, backfill)
    set_triggers(conn, TOUCHED, True)
    return p


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=list(SCALES), default="small")
    parser.add_argument("--factor", type=float, default=1.0)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000], help="N, one pass pair each")
    args = parser.parse_args()
    configure_logging("WARNING")
    base_scale = SCALES[args.scale].times(args.factor)
    scale = replace(base_scale, users=max(base_scale.users, *args.rows))
    failed = False
    with scratch_database("bench_bulk") as url:
        seeded = seed(url, scale)
        with psycopg.connect(url, autocommit=True) as conn:
            print(
                f"dataset={args.scale} x{args.factor} with users={scale.users} "
                f"({scale.projects} projects, {seeded.counts['messages']} messages, "
                f"{seeded.counts['project_upvotes']} upvotes), seeded in {seeded.seconds:.1f} s"
            )
            start = verdict(check_all(conn))
            failed |= start != "exact"
            print(f"read models against truth after the seed: {start}")
            print(
                f"{'N':>7}  {'statement':<19} {'rows':>8} {'off s':>7} {'on s':>7} {'trigger':>8} "
                f"{'on us/row':>9} {'fold s':>7}  {'before fold':<12} {'after fold':<12}"
            )
            for n in args.rows:
                off = one_pass(conn, n, scale.users, scale.projects, enabled=False)
                on = one_pass(conn, n, scale.users, scale.projects, enabled=True)
                for t_off, t_on, checked in zip(off.timed, on.timed, on.checked, strict=True):
                    assert checked is not None
                    before, after = verdict(checked.before_fold), verdict(checked.after_fold)
                    failed |= before != "exact" or after != "exact"
                    share = (t_on.seconds - t_off.seconds) / t_on.seconds
                    rows = f"{t_on.rows:,}" if t_on.rows == t_off.rows else f"{t_on.rows:,}/{t_off.rows:,}"
                    print(
                        f"{n:>7,}  {t_on.case:<19} {rows:>8} {t_off.seconds:>7.2f} {t_on.seconds:>7.2f} "
                        f"{share:>8.0%} {1e6 * t_on.seconds / max(1, t_on.rows):>9.1f} "
                        f"{checked.fold_seconds:>7.2f}  {before:<12} {after:<12}"
                    )
                    for c in checked.before_fold + checked.after_fold:
                        for sample in c.samples:
                            print(f"    {c.view}: {sample}")
            end = verdict(check_all(conn))
            failed |= end != "exact"
            print(f"read models against truth at the end: {end}")
    if failed:
        print("EXACTNESS FAILURE", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
