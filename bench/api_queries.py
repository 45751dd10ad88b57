"""Each seed route's naive query (joins and aggregates over the source tables, the seed's "before")
against the read-model query the route issues (db/queries/api.sql), side by side, at the database.

The read-model query runs as the API runs it: prepared, with the API's session settings (a generic
plan, no parallel workers; denorm/pg.py). The naive query runs as a naive application would issue
it: unprepared, with Postgres's defaults. Each query runs after one warm-up, with random user ids
where a route has one, and the table shows medians:

- "server": time inside Postgres (EXPLAIN ANALYZE with TIMING OFF: planning plus execution), which
  is what "at the database" means;
- "round trip": the same query from a client on this machine, socket and driver included; a bare
  `SELECT 1` takes about 0.1 ms here, which caps every round-trip ratio.

The dashboard also gets throughput (queries per second on one connection over --seconds), since its
naive form is already fast.

    python -m bench.api_queries [--scale standard] [--runs 31]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from datetime import UTC, datetime
from typing import Any

import psycopg

from bench.scratch import seeded_database
from db import SQL_DIR
from denorm.config import Settings
from denorm.logs import configure_logging
from denorm.pg import OLTP_SETTINGS, session_options
from denorm.seed import SCALES
from denorm.sqlfile import load_queries, positional
from services.refresher.worker import Refresher

MAX_ID = 2**63 - 1

NAIVE: dict[str, str] = {
    "feed_trending": """
        SELECT p.id, p.owner_id, u.username, p.title, p.tagline, p.tags, coalesce(v.n, 0), coalesce(c.n, 0),
               log(greatest(coalesce(v.n, 0), 1)) + (date_part('epoch', p.created_at) - 1134028003) / 45000.0 AS hot
        FROM projects p JOIN users u ON u.id = p.owner_id
        LEFT JOIN (SELECT project_id, count(*) AS n FROM project_upvotes GROUP BY project_id) v ON v.project_id = p.id
        LEFT JOIN (SELECT project_id, count(*) AS n FROM project_comments GROUP BY project_id) c ON c.project_id = p.id
        ORDER BY hot DESC, p.id DESC LIMIT 20""",
    "feed_top_rated": """
        SELECT p.id, u.username, p.title, coalesce(v.n, 0) AS up, coalesce(c.n, 0) AS co
        FROM projects p JOIN users u ON u.id = p.owner_id
        LEFT JOIN (SELECT project_id, count(*) AS n FROM project_upvotes GROUP BY project_id) v ON v.project_id = p.id
        LEFT JOIN (SELECT project_id, count(*) AS n FROM project_comments GROUP BY project_id) c ON c.project_id = p.id
        ORDER BY proof_score(coalesce(v.n, 0), coalesce(c.n, 0)) DESC, p.id DESC LIMIT 20""",
    "feed_newest": """
        SELECT p.id, u.username, p.title,
               (SELECT count(*) FROM project_upvotes v WHERE v.project_id = p.id),
               (SELECT count(*) FROM project_comments c WHERE c.project_id = p.id)
        FROM projects p JOIN users u ON u.id = p.owner_id
        ORDER BY p.created_at DESC, p.id DESC LIMIT 20""",
    "leaderboard_projects": """
        SELECT p.id, p.title, u.username, count(*) AS n
        FROM project_upvotes v JOIN projects p ON p.id = v.project_id JOIN users u ON u.id = p.owner_id
        GROUP BY p.id, p.title, u.username ORDER BY n DESC, p.id DESC LIMIT 50""",
    "leaderboard_users": """
        SELECT u.id, u.username, count(*) AS n
        FROM project_upvotes v JOIN projects p ON p.id = v.project_id JOIN users u ON u.id = p.owner_id
        GROUP BY u.id, u.username ORDER BY n DESC, u.id DESC LIMIT 50""",
    "chains": """
        SELECT c.id, c.slug, c.name, u.username,
               (SELECT count(*) FROM chain_projects cp WHERE cp.chain_id = c.id),
               (SELECT count(*) FROM chain_members cm WHERE cm.chain_id = c.id) AS members,
               (SELECT count(*) FROM forum_threads t WHERE t.chain_id = c.id)
        FROM chains c JOIN users u ON u.id = c.owner_id
        ORDER BY members DESC, c.id DESC LIMIT 20""",
    "chain_page": """
        SELECT p.id, p.title, count(v.user_id) AS n
        FROM chains c JOIN chain_projects cp ON cp.chain_id = c.id JOIN projects p ON p.id = cp.project_id
        LEFT JOIN project_upvotes v ON v.project_id = p.id
        WHERE c.slug = %(slug)s GROUP BY p.id, p.title ORDER BY n DESC LIMIT 20""",
    "dashboard": """
        SELECT (SELECT count(*) FROM projects WHERE owner_id = %(user_id)s),
               (SELECT count(*) FROM project_upvotes v JOIN projects p ON p.id = v.project_id
                WHERE p.owner_id = %(user_id)s),
               (SELECT count(*) FROM project_comments c JOIN projects p ON p.id = c.project_id
                WHERE p.owner_id = %(user_id)s),
               (SELECT count(*) FROM project_upvotes WHERE user_id = %(user_id)s),
               (SELECT count(*) FROM messages WHERE recipient_id = %(user_id)s AND read_at IS NULL),
               (SELECT count(*) FROM intro_requests WHERE target_id = %(user_id)s AND status = 'pending'),
               (SELECT count(*) FROM chain_members WHERE user_id = %(user_id)s)""",
    "conversations": """
        SELECT other, count(*), max(created_at)
        FROM (SELECT recipient_id AS other, created_at FROM messages WHERE sender_id = %(user_id)s
              UNION ALL
              SELECT sender_id, created_at FROM messages WHERE recipient_id = %(user_id)s) m
        GROUP BY other ORDER BY max(created_at) DESC LIMIT 50""",
    "search": """
        SELECT 'project', id, title FROM projects
        WHERE title ILIKE '%%' || %(q)s || '%%' OR tagline ILIKE '%%' || %(q)s || '%%'
              OR description ILIKE '%%' || %(q)s || '%%'
        UNION ALL SELECT 'user', id, display_name FROM users
        WHERE username ILIKE '%%' || %(q)s || '%%' OR display_name ILIKE '%%' || %(q)s || '%%'
        UNION ALL SELECT 'chain', id, name FROM chains WHERE name ILIKE '%%' || %(q)s || '%%'
        LIMIT 20""",
}


def params_for(name: str, rng: random.Random, users: int, slug: str) -> dict[str, Any]:
    user = rng.randint(1, users)
    return {
        "after_score": float("inf"), "after_id": MAX_ID, "after_time": datetime.max.replace(tzinfo=UTC),
        "limit": 50 if "leaderboard" in name or name == "conversations" else 20, "offset": 0,
        "after_members": MAX_ID, "slug": slug, "user_id": user, "q": rng.choice(["redis", "postgres", "kafka"]),
        "doc_type": None,
    }  # fmt: skip


Conn = psycopg.Connection[Any]


def server_ms(conn: Conn, query: str, params: dict[str, Any], prepared: bool) -> float:
    """Planning plus execution inside Postgres, without per-node timing (TIMING OFF keeps it cheap)."""
    explain = psycopg.sql.SQL("EXPLAIN (ANALYZE, TIMING OFF, SUMMARY, FORMAT JSON) ")
    if prepared:  # the statement prepared as the API prepares it: planned once, executed many times
        sql, names = positional(query)
        values = psycopg.sql.SQL(", ").join(psycopg.sql.Literal(params[n]) for n in names)
        call = (
            psycopg.sql.SQL("EXECUTE bench_stmt ({})").format(values)
            if names
            else psycopg.sql.SQL("EXECUTE bench_stmt")
        )
        conn.execute(f"PREPARE bench_stmt AS {sql}".encode())
        try:
            conn.execute(explain + call)  # the first execution makes the generic plan
            row = conn.execute(explain + call).fetchone()
        finally:
            conn.execute("DEALLOCATE bench_stmt")
    else:
        row = conn.execute(explain + psycopg.sql.SQL(query.replace("%%", "%%%%")), params).fetchone()
    assert row is not None
    summary = row[0][0]
    return float(summary.get("Planning Time", 0.0)) + float(summary["Execution Time"])


def medians(conn: Conn, query: str, name: str, runs: int, users: int, slug: str, prepared: bool) -> tuple[float, float]:
    """(median server ms, median round-trip ms) over `runs` random parameter sets."""
    rng = random.Random(name)
    conn.execute(query.encode(), params_for(name, rng, users, slug), prepare=prepared).fetchall()  # warm up
    server, trip = [], []
    for _ in range(runs):
        p = params_for(name, rng, users, slug)
        started = time.perf_counter()
        conn.execute(query.encode(), p, prepare=prepared).fetchall()
        trip.append(time.perf_counter() - started)
        server.append(server_ms(conn, query, p, prepared))
    return statistics.median(server), statistics.median(trip) * 1000


def throughput(conn: Conn, query: str, seconds: float, users: int, prepared: bool) -> float:
    rng = random.Random(1)
    done = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        conn.execute(query.encode(), {"user_id": rng.randint(1, users)}, prepare=prepared).fetchall()
        done += 1
    return done / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=list(SCALES), default="standard")
    parser.add_argument(
        "--database-url", help="an already seeded database to use as it is (default: a scratch one, seeded)"
    )
    parser.add_argument("--runs", type=int, default=31)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    configure_logging("WARNING")
    scale = SCALES[args.scale]
    api = load_queries(SQL_DIR / "queries" / "api.sql")
    with (
        seeded_database("bench_api", args.scale, args.database_url) as url,
        psycopg.connect(url, autocommit=True) as conn,
        psycopg.connect(url, autocommit=True, options=session_options(OLTP_SETTINGS)) as api_conn,
    ):
        Refresher(Settings(database_url=url, refresher_debounce_ms=0, refresher_metrics_port=0)).drain(conn)
        conn.execute("VACUUM ANALYZE")
        slug_row = conn.execute("SELECT slug FROM mv_chain_directory ORDER BY member_count DESC LIMIT 1").fetchone()
        slug = str(slug_row[0]) if slug_row else ""
        print(f"dataset={args.scale} ({scale.projects:,} projects, {scale.upvotes:,} upvotes, "
              f"{scale.messages:,} messages); medians, naive {max(3, args.runs // 3)} runs, read model "
              f"{args.runs} runs, one connection each")  # fmt: skip
        print(f"{'':<22}{'---------- server ----------':>36}{'-------- round trip --------':>36}")
        print(f"{'route query':<22}" + f"{'naive ms':>12}{'read model ms':>15}{'ratio':>9}" * 2)
        for name, naive in NAIVE.items():
            slow = medians(conn, naive, name, max(3, args.runs // 3), scale.users, slug, prepared=False)
            fast = medians(api_conn, api[name], name, args.runs, scale.users, slug, prepared=True)
            print(
                f"{name:<22}" + "".join(f"{s:>12.3f}{f:>15.3f}{s / f:>8.0f}x" for s, f in zip(slow, fast, strict=True))
            )
        naive_qps = throughput(conn, NAIVE["dashboard"], args.seconds, scale.users, prepared=False)
        fast_qps = throughput(api_conn, api["dashboard"], args.seconds, scale.users, prepared=True)
        print(
            f"dashboard throughput, one connection, random users: naive {naive_qps:,.0f}/s, "
            f"read model {fast_qps:,.0f}/s, ratio {fast_qps / naive_qps:.1f}x"
        )


if __name__ == "__main__":
    main()
