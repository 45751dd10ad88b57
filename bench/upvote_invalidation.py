"""Plain-SQL upvote changes reaching the Redis sets the API answers from, and what the marks cost.

1. Freshness of `user_has_upvoted`. One `denorm api` process and the refresher (whose invalidator
   drains the marks Postgres leaves for every change of project_upvotes) on a seeded database.
   --threads probe threads each own a few users, read their feed once (their sets load into
   Redis), then loop: toggle an upvote on a project of the user's first page in plain SQL, poll
   the feed until the flag is right (the time from the commit: p50, p99, max), and keep reading
   a while. Each thread is the only writer of its users, so it knows the truth of every answer it
   gets: an answer that disagrees more than 1 s after the user's last commit counts as wrong
   (goal: 0).
2. The marks' cost on upvote throughput: pgbench, 16 writers, --pgbench-seconds a run, with the
   marks (the trigger body that writes upvote_set_changes) and without them (the body replaced by
   one that only takes a value of the marks' sequence, which upvote_set() reads: no row written;
   put back afterwards), the refresher running in both; without, with, with, without, each run
   after a VACUUM of the ledgers, and the mean of each printed. Two workloads: a
   plain-SQL toggle, and the API's own statements (upvote_set, then the count and the unlock).

    python -m bench.upvote_invalidation [--scale standard] [--database-url URL] [--threads 8] [--seconds 30]
"""

from __future__ import annotations

import argparse
import random
import re
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import requests

from bench.scratch import add_dataset_arguments, seeded_database
from bench.system import running_system
from denorm.auth import mint_token
from denorm.config import DEV_JWT_SECRET
from denorm.logs import configure_logging

BOUND_S = 1.0
ORDER = (False, True, True, False)  # without and with the marks, twice each, so neither always goes first
LEDGERS = "project_upvotes, project_counter_deltas, user_stat_deltas, upvote_set_changes"
TOGGLE = """\\set u random(1, :users)
\\set p random(1, :projects)
WITH gone AS (DELETE FROM project_upvotes WHERE user_id = :u AND project_id = :p RETURNING 1)
INSERT INTO project_upvotes (user_id, project_id) SELECT :u, :p WHERE NOT EXISTS (SELECT FROM gone)
ON CONFLICT DO NOTHING;
"""
API_PATH = """\\set u random(1, :users)
\\set p random(1, :projects)
SELECT coalesce(change_id, 0) AS c FROM upvote_set(:u, :p, NULL, true) \\gset
SELECT (SELECT upvote_count FROM project_counters WHERE project_id = :p), pg_advisory_unlock(upvote_lock_key(:u, :p));
"""


@dataclass
class Results:
    lags: list[float] = field(default_factory=list)
    answers: int = 0
    wrong_late: int = 0
    wrong_early: int = 0


def feed(session: requests.Session, base: str, user: int) -> dict[int, bool]:
    token = mint_token(user, DEV_JWT_SECRET, ttl_seconds=3600)
    r = session.get(f"{base}/api/projects", params={"sort": "newest", "limit": "20"},
                    headers={"Authorization": f"Bearer {token}"}, timeout=10)  # fmt: skip
    r.raise_for_status()
    return {int(i["id"]): bool(i["user_has_upvoted"]) for i in r.json()["items"]}


def prober(url: str, base: str, users: list[int], until: float, seed: int, out: Results, lock: threading.Lock) -> None:
    rng = random.Random(seed)
    session = requests.Session()
    last_commit = dict.fromkeys(users, 0.0)
    with psycopg.connect(url, autocommit=True) as conn:
        truth = {u: {int(r[0]) for r in conn.execute("SELECT project_id FROM project_upvotes WHERE user_id = %s",
                                                      (u,))} for u in users}  # fmt: skip

        def check(user: int) -> dict[int, bool]:
            started = time.monotonic()
            answer = feed(session, base, user)
            bad = any(f != (p in truth[user]) for p, f in answer.items())
            with lock:
                out.answers += 1
                if bad and started > last_commit[user] + BOUND_S:
                    out.wrong_late += 1
                elif bad:
                    out.wrong_early += 1
            return answer

        for user in users:
            check(user)  # the set loads
        while time.monotonic() < until:
            user = rng.choice(users)
            project = rng.choice(list(check(user)))
            if project in truth[user]:
                conn.execute("DELETE FROM project_upvotes WHERE user_id = %s AND project_id = %s", (user, project))
                truth[user].discard(project)
            else:
                conn.execute("INSERT INTO project_upvotes (user_id, project_id) VALUES (%s, %s)", (user, project))
                truth[user].add(project)
            committed = last_commit[user] = time.monotonic()
            while check(user)[project] != (project in truth[user]):
                if time.monotonic() - committed > 30:
                    raise RuntimeError(f"user {user}'s flag for {project} still wrong after 30 s")
                time.sleep(0.005)
            with lock:
                out.lags.append(time.monotonic() - committed)
            linger = time.monotonic() + rng.uniform(0.2, 1.6)  # reads past the bound catch a set gone wrong again
            while time.monotonic() < linger:
                check(rng.choice(users))
                time.sleep(0.02)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def freshness(url: str, threads: int, seconds: float) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT array_agg(id ORDER BY random()) FROM (SELECT id FROM users ORDER BY random() "
                           "LIMIT %s) u", (threads * 4,)).fetchone()  # fmt: skip
    assert row is not None
    users: list[int] = row[0]
    out, lock = Results(), threading.Lock()
    with running_system(url) as system:
        until = time.monotonic() + seconds
        workers = [threading.Thread(target=prober, args=(url, system.base, users[i::threads], until, i, out, lock))
                   for i in range(threads)]  # fmt: skip
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    lags = out.lags
    return (f"{'plain-SQL toggle -> right flag':<34}{len(lags):>8}{percentile(lags, 0.5) * 1000:>9.0f}"
            f"{percentile(lags, 0.99) * 1000:>9.0f}{max(lags) * 1000:>9.0f}{out.answers:>10}{out.wrong_late:>8}"
            f"{out.wrong_early:>8}")  # fmt: skip


def marks(conn: psycopg.Connection[Any], on: bool) -> None:
    """Put the upvote_sets trigger body back, or replace it (its text kept in a table meanwhile)."""
    if on:
        body = conn.execute("SELECT body FROM bench_upvote_sets_body").fetchone()
        if body is not None:
            conn.execute("SELECT ledger_triggers('project_upvotes', 'upvote_sets', %s)", (body[0],))
        return
    conn.execute("CREATE TABLE IF NOT EXISTS bench_upvote_sets_body AS SELECT body FROM ledger_trigger_bodies "
                 "WHERE source = 'project_upvotes' AND model = 'upvote_sets' LIMIT 1")  # fmt: skip
    # upvote_set() reads the sequence's currval after a change: the body left takes a value, no row.
    conn.execute("SELECT ledger_triggers('project_upvotes', 'upvote_sets', "
                 "'PERFORM nextval(''upvote_set_changes_id_seq'');')")  # fmt: skip


def pgbench(url: str, script: str, seconds: float, users: int, projects: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "script.sql"
        path.write_text(script)
        done = subprocess.run(
            ["pgbench", "-n", "-c", "16", "-j", "2", "-T", str(int(seconds)), "-f", str(path),
             "-D", f"users={users}", "-D", f"projects={projects}", url],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"pgbench failed: {done.stderr[-2000:]}")
    found = re.search(r"tps = ([\d.]+)", done.stdout)
    assert found, done.stdout + done.stderr
    return float(found.group(1))


def throughput(url: str, seconds: float) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT (SELECT max(id) FROM users), (SELECT max(id) FROM projects)").fetchone()
        assert row is not None
        users, projects = int(row[0]), int(row[1])
        lines = []
        with running_system(url):
            for name, script in (("plain-SQL toggle", TOGGLE), ("the API's statements", API_PATH)):
                tps: dict[bool, list[float]] = {False: [], True: []}
                try:
                    for on in ORDER:
                        marks(conn, on)
                        conn.execute(f"VACUUM {LEDGERS}")  # each run starts from the same state
                        tps[on].append(pgbench(url, script, seconds, users, projects))
                finally:
                    marks(conn, True)
                off, on_ = sum(tps[False]) / len(tps[False]), sum(tps[True]) / len(tps[True])
                lines.append(f"{name:<34}{off:>12.0f}{on_:>12.0f}{on_ / off:>10.2f}")
        conn.execute("DROP TABLE IF EXISTS bench_upvote_sets_body")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_arguments(parser)
    parser.add_argument("--threads", type=int, default=8, help="probe threads, each with its own 4 users")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--pgbench-seconds", type=float, default=15.0)
    args = parser.parse_args()
    configure_logging("WARNING")
    with seeded_database("bench_invalidation", args.scale, args.database_url) as url:
        print(f"dataset={args.scale}; {args.threads} probe threads x 4 users with cached sets, {args.seconds:g} s; "
              "one API process, refresher running")  # fmt: skip
        print(f"{'':<34}{'changes':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'answers':>10}{'>1 s':>8}{'<=1 s':>8}")
        print(freshness(url, args.threads, args.seconds))
        print("wrong answers: '>1 s' given more than 1 s after the user's last commit (goal 0), '<=1 s' before")
        print()
        print(f"pgbench, 16 writers, {args.pgbench_seconds:g} s a run, 2 runs each way, refresher running")
        print(f"{'transactions a second':<34}{'no marks':>12}{'marks':>12}{'ratio':>10}")
        for line in throughput(url, args.pgbench_seconds):
            print(line)


if __name__ == "__main__":
    main()
