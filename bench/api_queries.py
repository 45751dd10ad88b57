"""Each seed route's naive query (joins and aggregates over the source tables, the seed's "before")
against the read-model query the route issues (db/readmodels/*.sql), side by side, at the database.

A naive query computes the same answer as the route from the normalized tables, with only the
foreign-key indexes the source schema has: the same rows in the same order, with the same counts.
Before timing, the bench runs both once with the same parameters and checks that they agree (a
ratio between two different answers would mean nothing). Search is the exception: ILIKE cannot
rank by relevance or correct a typo, so its two naive forms, ranked by popularity and unranked
(the first twenty matches), are shown against the read model without an equality check.

The read-model query runs as the API runs it: prepared, with the API's session settings (a generic
plan, no parallel workers, no JIT; services/api/pools.py). The naive query runs as a naive application
would send it: unprepared, with Postgres's defaults. Medians over random parameters:

- "server": time inside Postgres (EXPLAIN ANALYZE with TIMING OFF: planning plus execution), which
  is what "at the database" means;
- "round trip": the same query from a client on this machine, socket and driver included; a bare
  `SELECT 1` takes about 0.1 ms here, which caps every round-trip ratio.

The dashboard's naive form is already fast, so it also gets database throughput: pgbench, several
clients, each form prepared, random users, side by side.

    python -m bench.api_queries [--scale standard] [--database-url URL] [--runs 101]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from bench.scratch import add_dataset_arguments, seeded_database
from denorm.logs import configure_logging
from denorm.maintenance import drain
from denorm.pg import session_options
from denorm.seed import SCALES
from denorm.sql import positional, queries
from services.api.feed import SORTS, Sort, statements
from services.api.params import SEARCH_START
from services.api.pools import OLTP_SETTINGS

MAX_ID = 2**63 - 1
FEED_LABELS = {"feed_trending": Sort.TRENDING, "feed_top_rated": Sort.TOP_RATED, "feed_newest": Sort.NEWEST}
Conn = psycopg.Connection[Any]
Rows = list[tuple[Any, ...]]

# The counts every project item shows, computed from the source tables.
_COUNTS = """
    LEFT JOIN (SELECT project_id, count(*) AS n FROM project_upvotes GROUP BY project_id) v ON v.project_id = p.id
    LEFT JOIN (SELECT project_id, count(*) AS n FROM project_comments GROUP BY project_id) c ON c.project_id = p.id"""

NAIVE: dict[str, str] = {
    "feed_trending": f"""
        SELECT p.id, p.owner_id, u.username, p.title, p.tagline, p.tags, coalesce(v.n, 0), coalesce(c.n, 0),
               trending_score(coalesce(v.n, 0), p.created_at) AS hot,
               proof_score(coalesce(v.n, 0), coalesce(c.n, 0)), p.created_at
        FROM projects p JOIN users u ON u.id = p.owner_id {_COUNTS}
        ORDER BY hot DESC, p.id DESC LIMIT %(limit)s""",
    "feed_top_rated": f"""
        SELECT p.id, p.owner_id, u.username, p.title, p.tagline, p.tags, coalesce(v.n, 0), coalesce(c.n, 0),
               trending_score(coalesce(v.n, 0), p.created_at),
               proof_score(coalesce(v.n, 0), coalesce(c.n, 0)) AS proof, p.created_at
        FROM projects p JOIN users u ON u.id = p.owner_id {_COUNTS}
        ORDER BY proof DESC, p.id DESC LIMIT %(limit)s""",
    "feed_newest": """
        SELECT id, owner_id, username, title, tagline, tags, up, co, trending_score(up, created_at),
               proof_score(up, co), created_at
        FROM (SELECT p.*, u.username,
                     (SELECT count(*) FROM project_upvotes v WHERE v.project_id = p.id) AS up,
                     (SELECT count(*) FROM project_comments c WHERE c.project_id = p.id) AS co
              FROM projects p JOIN users u ON u.id = p.owner_id
              ORDER BY p.created_at DESC, p.id DESC LIMIT %(limit)s) p""",
    "leaderboard_projects": """
        SELECT p.id, p.title, p.owner_id, u.username, v.n,
               (SELECT count(*) FROM project_comments c WHERE c.project_id = p.id)
        FROM (SELECT project_id, count(*) AS n FROM project_upvotes GROUP BY project_id) v
        JOIN projects p ON p.id = v.project_id JOIN users u ON u.id = p.owner_id
        ORDER BY v.n DESC, p.id DESC LIMIT %(limit)s""",
    "leaderboard_users": """
        SELECT u.id, u.username, u.display_name, sum(coalesce(v.n, 0))::bigint AS received, count(*) AS projects
        FROM users u JOIN projects p ON p.owner_id = u.id
        LEFT JOIN (SELECT project_id, count(*) AS n FROM project_upvotes GROUP BY project_id) v ON v.project_id = p.id
        GROUP BY u.id ORDER BY received DESC, u.id DESC LIMIT %(limit)s""",
    "chains": """
        SELECT c.id, c.slug, c.name, c.description, u.username, coalesce(cp.n, 0), coalesce(cm.n, 0) AS members,
               coalesce(ft.n, 0), greatest(c.created_at, cp.last_at, cm.last_at, ft.last_at)
        FROM chains c JOIN users u ON u.id = c.owner_id
        LEFT JOIN (SELECT chain_id, count(*) AS n, max(added_at) AS last_at FROM chain_projects GROUP BY chain_id) cp
               ON cp.chain_id = c.id
        LEFT JOIN (SELECT chain_id, count(*) AS n, max(joined_at) AS last_at FROM chain_members GROUP BY chain_id) cm
               ON cm.chain_id = c.id
        LEFT JOIN (SELECT chain_id, count(*) AS n, max(created_at) AS last_at FROM forum_threads GROUP BY chain_id) ft
               ON ft.chain_id = c.id
        ORDER BY members DESC, c.id DESC LIMIT %(limit)s""",
    "chain_page": """
        WITH chain AS (SELECT * FROM chains WHERE slug = %(slug)s)
        SELECT json_build_object(
            'chain', (SELECT json_build_object(
                'chain_id', c.id, 'slug', c.slug, 'name', c.name, 'description', c.description,
                'owner_username', (SELECT username FROM users WHERE id = c.owner_id),
                'project_count', (SELECT count(*) FROM chain_projects WHERE chain_id = c.id),
                'member_count', (SELECT count(*) FROM chain_members WHERE chain_id = c.id),
                'thread_count', (SELECT count(*) FROM forum_threads WHERE chain_id = c.id)) FROM chain c),
            'projects', (SELECT json_agg(x ORDER BY x.upvote_count DESC, x.project_id DESC) FROM (
                SELECT p.id AS project_id, p.title, p.tagline, u.username, cp.added_at,
                       (SELECT count(*) FROM project_upvotes v WHERE v.project_id = p.id) AS upvote_count,
                       (SELECT count(*) FROM project_comments m WHERE m.project_id = p.id) AS comment_count
                FROM chain JOIN chain_projects cp ON cp.chain_id = chain.id
                JOIN projects p ON p.id = cp.project_id JOIN users u ON u.id = p.owner_id
                ORDER BY upvote_count DESC, p.id DESC LIMIT %(limit)s) x),
            'threads', (SELECT json_agg(t ORDER BY t.last_activity_at DESC, t.thread_id DESC) FROM (
                SELECT t.id AS thread_id, t.title, u.username AS author_username, count(fp.id) AS post_count,
                       max(fp.created_at) AS last_post_at,
                       greatest(t.created_at, max(fp.created_at)) AS last_activity_at, t.created_at
                FROM chain JOIN forum_threads t ON t.chain_id = chain.id JOIN users u ON u.id = t.author_id
                LEFT JOIN forum_posts fp ON fp.thread_id = t.id
                GROUP BY t.id, u.username
                ORDER BY last_activity_at DESC, t.id DESC LIMIT %(limit)s) t))""",
    "dashboard": """
        SELECT (SELECT count(*) FROM projects WHERE owner_id = %(user_id)s),
               (SELECT count(*) FROM project_upvotes v JOIN projects p ON p.id = v.project_id
                WHERE p.owner_id = %(user_id)s),
               (SELECT count(*) FROM project_comments c JOIN projects p ON p.id = c.project_id
                WHERE p.owner_id = %(user_id)s),
               (SELECT count(*) FROM project_upvotes WHERE user_id = %(user_id)s),
               (SELECT count(*) FROM messages WHERE recipient_id = %(user_id)s AND read_at IS NULL),
               (SELECT count(*) FROM intro_requests WHERE target_id = %(user_id)s AND status = 'pending'),
               (SELECT count(*) FROM chain_members WHERE user_id = %(user_id)s),
               (SELECT count(*) FROM intro_requests WHERE requester_id = %(user_id)s AND status = 'pending'),
               (SELECT count(*) FROM intro_requests WHERE requester_id = %(user_id)s AND status = 'accepted'),
               (SELECT count(*) FROM intro_requests WHERE requester_id = %(user_id)s AND status = 'declined'),
               (SELECT count(*) FROM intro_requests WHERE target_id = %(user_id)s AND status = 'pending'),
               (SELECT count(*) FROM intro_requests WHERE target_id = %(user_id)s AND status = 'accepted'),
               (SELECT count(*) FROM intro_requests WHERE target_id = %(user_id)s AND status = 'declined')""",
    "conversations": """
        SELECT m.other, u.username, last.id, last.created_at, left(last.body, 120), last.sender_id, m.n, m.unread
        FROM (SELECT other, count(*) AS n, count(*) FILTER (WHERE unread) AS unread
              FROM (SELECT recipient_id AS other, false AS unread FROM messages WHERE sender_id = %(user_id)s
                    UNION ALL
                    SELECT sender_id, read_at IS NULL FROM messages WHERE recipient_id = %(user_id)s) x
              GROUP BY other) m
        JOIN users u ON u.id = m.other
        CROSS JOIN LATERAL (
            SELECT id, created_at, body, sender_id FROM messages
            WHERE (sender_id, recipient_id) IN ((%(user_id)s, m.other), (m.other, %(user_id)s))
            ORDER BY created_at DESC, id DESC LIMIT 1) last
        ORDER BY last.created_at DESC, m.other DESC LIMIT %(limit)s""",
}

# Search's naive forms: what an application without a search index does. Ranked: every match of
# the word in any text field, ordered by popularity (the upvotes, counted per match). Unranked:
# the first matches in table order, which stops early on a common word and ranks nothing.
_LIKE = "'%%' || %(q)s || '%%'"
NAIVE_SEARCH: dict[str, str] = {
    "search, ILIKE ranked": f"""
        (SELECT 'project', p.id, p.title FROM projects p
         WHERE p.title ILIKE {_LIKE} OR p.tagline ILIKE {_LIKE} OR p.description ILIKE {_LIKE}
               OR array_to_string(p.tags, ' ') ILIKE {_LIKE}
         ORDER BY (SELECT count(*) FROM project_upvotes v WHERE v.project_id = p.id) DESC, p.id DESC
         LIMIT %(limit)s)
        UNION ALL
        (SELECT 'user', u.id, u.display_name FROM users u
         WHERE u.username ILIKE {_LIKE} OR u.display_name ILIKE {_LIKE} OR u.bio ILIKE {_LIKE}
         ORDER BY u.id LIMIT %(limit)s)
        UNION ALL
        (SELECT 'chain', c.id, c.name FROM chains c
         WHERE c.name ILIKE {_LIKE} OR c.description ILIKE {_LIKE}
         ORDER BY (SELECT count(*) FROM chain_members m WHERE m.chain_id = c.id) DESC, c.id DESC
         LIMIT %(limit)s)
        LIMIT %(limit)s""",
    "search, ILIKE unranked": f"""
        SELECT 'project', id, title FROM projects
        WHERE title ILIKE {_LIKE} OR tagline ILIKE {_LIKE} OR description ILIKE {_LIKE}
        UNION ALL SELECT 'user', id, display_name FROM users
        WHERE username ILIKE {_LIKE} OR display_name ILIKE {_LIKE}
        UNION ALL SELECT 'chain', id, name FROM chains WHERE name ILIKE {_LIKE}
        LIMIT %(limit)s""",
}
SEARCH_WORDS = ["redis", "postgres", "kafka", "lovelace", "dashboard", "scheduler"]


def _doc(rows: Rows) -> Any:
    return json.loads(rows[0][0])


def _items(keys: tuple[str, ...], field: str = "items") -> Callable[[Rows], list[tuple[Any, ...]]]:
    return lambda rows: [tuple(item[k] for k in keys) for item in _doc(rows)[field]]


def _columns(*indexes: int) -> Callable[[Rows], list[tuple[Any, ...]]]:
    return lambda rows: [tuple(row[i] for i in indexes) for row in rows]


def _chain_page(doc: Any) -> tuple[Any, ...]:
    chain = doc["chain"]
    return (
        tuple(chain[k] for k in ("chain_id", "project_count", "member_count", "thread_count")),
        [(p["project_id"], p["upvote_count"], p["comment_count"]) for p in doc["projects"] or []],
        [(t["thread_id"], t["post_count"]) for t in doc["threads"] or []],
    )


_DASHBOARD = ("project_count", "upvotes_received", "comments_received", "upvotes_given", "unread_messages",
              "pending_intros_received", "chains_joined")  # fmt: skip
_INTROS = ("sent_pending", "sent_accepted", "sent_declined", "received_pending", "received_accepted",
           "received_declined")  # fmt: skip


def _dashboard(doc: Any) -> tuple[Any, ...]:
    return tuple(doc[k] for k in _DASHBOARD) + tuple(doc["intro_stats"][k] for k in _INTROS)


# (what the read model answered, what the naive query answered), reduced to comparable keys.
AGREE: dict[str, tuple[Callable[[Rows], Any], Callable[[Rows], Any]]] = {
    **{
        sort: (_items(("id", "upvote_count", "comment_count")), _columns(0, 6, 7))
        for sort in ("feed_trending", "feed_top_rated", "feed_newest")
    },
    "leaderboard_projects": (_items(("project_id", "upvote_count", "comment_count")), _columns(0, 4, 5)),
    "leaderboard_users": (_items(("user_id", "upvotes_received", "project_count")), _columns(0, 3, 4)),
    "chains": (_items(("chain_id", "project_count", "member_count", "thread_count")), _columns(0, 5, 6, 7)),
    "chain_page": (lambda rows: _chain_page(_doc(rows)), lambda rows: _chain_page(rows[0][0])),
    "dashboard": (lambda rows: _dashboard(_doc(rows)), lambda rows: tuple(rows[0])),
    "conversations": (
        _items(("other_user_id", "last_message_id", "message_count", "unread_count")),
        _columns(0, 2, 6, 7),
    ),
}


@dataclass
class Params:
    users: int
    slug: str
    busy_users: list[int]  # users with conversations, so that the query has something to do

    def drawer(self, name: str) -> Callable[[random.Random], dict[str, Any]]:
        return lambda rng: self.draw(name, rng)

    def draw(self, name: str, rng: random.Random) -> dict[str, Any]:
        user = rng.choice(self.busy_users) if name == "conversations" else rng.randint(1, self.users)
        sort = FEED_LABELS.get(name, Sort.TRENDING)
        return {
            "sort": sort.value, "after_key": SORTS[sort].first_key(),
            "after_score": float("inf"), "after_id": MAX_ID, "after_time": datetime.max.replace(tzinfo=UTC),
            "after_members": MAX_ID, "limit": 50 if "leaderboard" in name or name == "conversations" else 20,
            "offset": 0, "page": None, "slug": self.slug, "user_id": user, "q": rng.choice(SEARCH_WORDS),
            "doc_type": None, **SEARCH_START,
        }  # fmt: skip


# --- the pages (issue 18): a page anywhere in a list, from its cursor against OFFSET ------------------


@dataclass(frozen=True)
class Page:
    """One paged read. `entities` lists what it pages (each row: the read's parameters naming one,
    and `n`, its item count); `nth` gives the cursor (the key and id of the item before a page that
    starts at offset k); `naive` is the OFFSET form; `ids` the item ids of the read model's answer."""

    entities: str
    nth: str
    start: dict[str, Any]
    naive: str
    ids: Callable[[Any], list[int]]


def _ids(field: str, key: str = "id", within: str | None = None) -> Callable[[Any], list[int]]:
    def ids(doc: Any) -> list[int]:
        items = doc[within][field] if within else doc[field]
        return [int(item[key]) for item in items]

    return ids


_NEWEST = {"after_at": "infinity", "after_id": MAX_ID}
PAGES: dict[str, Page] = {
    "project_page": Page(
        'SELECT project_id AS id, 1 AS n, 1 AS "user" FROM project_comments '
        "GROUP BY 1 ORDER BY count(*) DESC LIMIT 500",
        "",
        {},
        """SELECT c.id, (SELECT count(*) FROM project_upvotes v WHERE v.project_id = p.id),
                  (SELECT count(*) FROM project_comments x WHERE x.project_id = p.id),
                  EXISTS (SELECT 1 FROM project_upvotes v WHERE v.project_id = p.id AND v.user_id = %(user)s)
           FROM projects p JOIN users u ON u.id = p.owner_id
           JOIN LATERAL (SELECT c.id FROM project_comments c JOIN users a ON a.id = c.author_id
                         WHERE c.project_id = p.id ORDER BY c.created_at DESC, c.id DESC LIMIT %(limit)s) c ON true
           WHERE p.id = %(id)s""",
        _ids("items", within="comments"),
    ),
    "project_comments": Page(
        "SELECT project_id AS id, count(*) AS n FROM project_comments GROUP BY 1 ORDER BY 2 DESC LIMIT 500",
        "SELECT created_at AS after_at, id AS after_id FROM project_comments WHERE project_id = %(id)s "
        "ORDER BY created_at DESC, id DESC OFFSET %(k)s LIMIT 1",
        _NEWEST,
        """SELECT c.id, u.username FROM project_comments c JOIN users u ON u.id = c.author_id
           WHERE c.project_id = %(id)s ORDER BY c.created_at DESC, c.id DESC OFFSET %(offset)s LIMIT %(limit)s""",
        _ids("items"),
    ),
    "thread_page": Page(
        "SELECT thread_id AS id, count(*) AS n FROM forum_posts GROUP BY 1 ORDER BY 2 DESC LIMIT 500",
        "SELECT created_at AS after_at, id AS after_id FROM forum_posts WHERE thread_id = %(id)s "
        "ORDER BY created_at, id OFFSET %(k)s LIMIT 1",
        {"after_at": "-infinity", "after_id": 0},
        """SELECT p.id, u.username FROM forum_posts p JOIN users u ON u.id = p.author_id
           WHERE p.thread_id = %(id)s ORDER BY p.created_at, p.id OFFSET %(offset)s LIMIT %(limit)s""",
        _ids("posts"),
    ),
    "chain_projects": Page(
        "SELECT c.slug, count(*) AS n FROM chains c JOIN chain_projects cp ON cp.chain_id = c.id "
        "GROUP BY c.id ORDER BY 2 DESC LIMIT 200",
        "SELECT cp.upvote_count AS after_key, cp.project_id AS after_id FROM mv_chain_projects cp "
        "JOIN chains c ON c.id = cp.chain_id WHERE c.slug = %(slug)s "
        "ORDER BY cp.upvote_count DESC, cp.project_id DESC OFFSET %(k)s LIMIT 1",
        {"after_key": MAX_ID, "after_id": MAX_ID},
        """SELECT p.id, (SELECT count(*) FROM project_upvotes v WHERE v.project_id = p.id) AS up,
                  (SELECT count(*) FROM project_comments m WHERE m.project_id = p.id)
           FROM chains c JOIN chain_projects cp ON cp.chain_id = c.id JOIN projects p ON p.id = cp.project_id
           WHERE c.slug = %(slug)s ORDER BY up DESC, p.id DESC OFFSET %(offset)s LIMIT %(limit)s""",
        _ids("items", key="project_id"),
    ),
    "chain_threads": Page(
        "SELECT c.slug, count(*) AS n FROM chains c JOIN forum_threads t ON t.chain_id = c.id "
        "GROUP BY c.id ORDER BY 2 DESC LIMIT 200",
        "SELECT t.last_activity_at AS after_at, t.thread_id AS after_id FROM mv_forum_threads t "
        "JOIN chains c ON c.id = t.chain_id WHERE c.slug = %(slug)s "
        "ORDER BY t.last_activity_at DESC, t.thread_id DESC OFFSET %(k)s LIMIT 1",
        _NEWEST,
        """SELECT t.id, greatest(t.created_at, max(fp.created_at)) AS last_activity_at, count(fp.id)
           FROM chains c JOIN forum_threads t ON t.chain_id = c.id LEFT JOIN forum_posts fp ON fp.thread_id = t.id
           WHERE c.slug = %(slug)s GROUP BY t.id
           ORDER BY last_activity_at DESC, t.id DESC OFFSET %(offset)s LIMIT %(limit)s""",
        _ids("items", key="thread_id"),
    ),
    "conversation_messages": Page(
        "SELECT least(sender_id, recipient_id) AS me, greatest(sender_id, recipient_id) AS other, count(*) AS n "
        "FROM messages GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 500",
        "SELECT created_at AS after_at, id AS after_id FROM messages "
        "WHERE (sender_id, recipient_id) IN ((%(me)s, %(other)s), (%(other)s, %(me)s)) "
        "ORDER BY created_at DESC, id DESC OFFSET %(k)s LIMIT 1",
        _NEWEST,
        """SELECT id FROM messages
           WHERE (sender_id = %(me)s AND recipient_id = %(other)s) OR (sender_id = %(other)s AND recipient_id = %(me)s)
           ORDER BY created_at DESC, id DESC OFFSET %(offset)s LIMIT %(limit)s""",
        _ids("items"),
    ),
    "intro_requests": Page(
        "SELECT target_id AS me, true AS received, NULL::text AS status, count(*) AS n FROM intro_requests "
        "GROUP BY 1 ORDER BY 4 DESC LIMIT 500",
        "SELECT created_at AS after_at, id AS after_id FROM intro_requests WHERE target_id = %(me)s "
        "ORDER BY created_at DESC, id DESC OFFSET %(k)s LIMIT 1",
        _NEWEST,
        """SELECT i.id, r.username, t.username FROM intro_requests i
           JOIN users r ON r.id = i.requester_id JOIN users t ON t.id = i.target_id
           WHERE i.target_id = %(me)s ORDER BY i.created_at DESC, i.id DESC OFFSET %(offset)s LIMIT %(limit)s""",
        _ids("items"),
    ),
    "user_profile": Page(
        "SELECT username, 1 AS n FROM users ORDER BY id LIMIT 500",
        "",
        {},
        """SELECT u.id, (SELECT count(*) FROM projects p WHERE p.owner_id = u.id),
                  (SELECT count(*) FROM project_upvotes v JOIN projects p ON p.id = v.project_id
                   WHERE p.owner_id = u.id),
                  (SELECT count(*) FROM chain_members m WHERE m.user_id = u.id)
           FROM users u WHERE u.username = %(username)s""",
        lambda doc: [int(doc["user_id"]), doc["project_count"], doc["upvotes_received"], doc["chains_joined"]],
    ),
}
PAGE_LIMIT = 20


def page_drawer(conn: Conn, page: Page) -> Callable[[random.Random], dict[str, Any]]:
    """Parameters for a page at a random depth of a random list of the read's: the cursor for ours,
    the offset for the naive form, the same position."""
    cur = conn.execute(page.entities.encode())
    names = [c.name for c in cur.description or []]
    rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def draw(rng: random.Random) -> dict[str, Any]:
        entity = dict(rng.choice(rows))
        k = rng.randint(0, max(0, int(entity.pop("n")) - PAGE_LIMIT))
        position = dict(page.start)
        if k > 0:
            cur = conn.execute(page.nth.encode(), {**entity, "k": k - 1})
            found = cur.fetchone()
            assert found is not None and cur.description is not None
            position = {c.name: v for c, v in zip(cur.description, found, strict=True)}
        return {**entity, **position, "offset": k, "limit": PAGE_LIMIT, "user": entity.get("user", 1)}

    return draw


def naive_ids(name: str, rows: Rows) -> list[Any]:
    if name == "project_page":  # the comments' ids, and the counts
        return [r[0] for r in rows]
    if name == "user_profile":
        return list(rows[0]) if rows else []
    return [int(r[0]) for r in rows]


def check_pages(conn: Conn, api_conn: Conn, api: dict[str, str], drawers: dict[str, Any]) -> None:
    """Each page read and its OFFSET form give the same items in the same order at random depths."""
    rng = random.Random(8)
    for name, page in PAGES.items():
        for _ in range(5):
            p = drawers[name](rng)
            row = api_conn.execute(api[name].encode(), p, prepare=True).fetchone()
            model = page.ids(json.loads(row[0])) if row else []
            naive = naive_ids(name, conn.execute(PAGES[name].naive.encode(), p).fetchall())
            if model != naive:
                raise SystemExit(f"{name}: the naive query and the read model disagree for {p}:\n{naive}\n{model}")


EXPLAIN = "EXPLAIN (ANALYZE, TIMING OFF, SUMMARY, FORMAT JSON) "


def summary_ms(row: tuple[Any, ...] | None) -> float:
    """Planning plus execution inside Postgres, from EXPLAIN's JSON (TIMING OFF keeps it cheap)."""
    assert row is not None
    summary = row[0][0]
    return float(summary.get("Planning Time", 0.0)) + float(summary["Execution Time"])


def medians(
    conn: Conn, query: str, draw: Callable[[random.Random], dict[str, Any]], runs: int, prepared: bool, seed: str
) -> tuple[float, float]:
    """(median server ms, median round-trip ms) over `runs` parameter sets from `draw`.

    Prepared, as the API runs it: one server-side statement, planned once (a generic plan), then
    executed with each parameter set. Unprepared: parsed and planned on every run."""
    rng = random.Random(seed)
    server, trip = [], []
    if prepared:
        sql, names = positional(query)
        conn.execute(f"PREPARE bench_stmt AS {sql}".encode())

        def execute(p: dict[str, Any]) -> psycopg.sql.Composed:
            values = psycopg.sql.SQL(", ").join(psycopg.sql.Literal(p[n]) for n in names)
            if not names:
                return psycopg.sql.Composed([psycopg.sql.SQL("EXECUTE bench_stmt")])
            return psycopg.sql.SQL("EXECUTE bench_stmt ({})").format(values)

    try:
        for _ in range(3):  # warm up: caches, and the prepared statement's generic plan
            conn.execute(query.encode(), draw(rng), prepare=prepared).fetchall()
            if prepared:
                conn.execute(execute(draw(rng))).fetchall()
        for _ in range(runs):
            p = draw(rng)
            started = time.perf_counter()
            conn.execute(query.encode(), p, prepare=prepared).fetchall()
            trip.append(time.perf_counter() - started)
            if prepared:
                server.append(summary_ms(conn.execute(psycopg.sql.SQL(EXPLAIN) + execute(p)).fetchone()))
            else:
                explain = psycopg.sql.SQL(EXPLAIN) + psycopg.sql.SQL(query.replace("%%", "%%%%"))
                server.append(summary_ms(conn.execute(explain, p).fetchone()))
    finally:
        if prepared:
            conn.execute("DEALLOCATE bench_stmt")
    return statistics.median(server), statistics.median(trip) * 1000


def check_agreement(conn: Conn, api_conn: Conn, api: dict[str, str], params: Params) -> None:
    """Both forms answer alike for a few random parameter sets, or the bench stops."""
    rng = random.Random(7)
    for name, (from_model, from_naive) in AGREE.items():
        for _ in range(3):
            p = params.draw(name, rng)
            model = from_model(api_conn.execute(api[name].encode(), p, prepare=True).fetchall())
            naive = from_naive(conn.execute(NAIVE[name].encode(), p).fetchall())
            if model != naive:
                raise SystemExit(f"{name}: the naive query and the read model disagree for {p}:\n{naive}\n{model}")


def pgbench_tps(url: str, script: str, clients: int, seconds: int, as_the_api: bool) -> float:
    """Transactions per second of one statement under pgbench, `clients` at once. As the API runs it:
    prepared, with the API's session settings; otherwise as a naive application: the simple query
    protocol (each statement parsed and planned) and Postgres's defaults."""
    info = conninfo_to_dict(url)
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script)
    env = {**os.environ, "PGOPTIONS": session_options(OLTP_SETTINGS) if as_the_api else ""}
    try:
        protocol = "prepared" if as_the_api else "simple"
        host, port, user = str(info.get("host", "127.0.0.1")), str(info.get("port", 5432)), str(info.get("user", ""))
        cmd = ["pgbench", "-n", "-M", protocol, "-c", str(clients), "-j", "2", "-T", str(seconds), "-f", f.name,
               "-h", host, "-p", port, "-U", user or "postgres", str(info["dbname"])]  # fmt: skip
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)
    found = re.search(r"tps = ([0-9.]+)", out)
    assert found is not None, out
    return float(found.group(1))


CLIENTS = 4


def dashboard_throughput(url: str, api: dict[str, str], users: int, seconds: int) -> tuple[float, float]:
    def script(query: str) -> str:
        sql, names = positional(query)
        assert names == ["user_id"]
        code = (line.split("--")[0] for line in sql.replace("$1", ":user_id").splitlines())  # pgbench: one line
        return f"\\set user_id random(1, {users})\n" + " ".join(" ".join(code).split()) + ";\n"

    naive = pgbench_tps(url, script(NAIVE["dashboard"]), CLIENTS, seconds, as_the_api=False)
    model = pgbench_tps(url, script(api["dashboard"]), CLIENTS, seconds, as_the_api=True)
    return naive, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_arguments(parser)
    parser.add_argument("--runs", type=int, default=101, help="read-model runs per query (naive: a third)")
    parser.add_argument("--seconds", type=int, default=10, help="pgbench seconds per dashboard form")
    args = parser.parse_args()
    configure_logging("WARNING")
    scale = SCALES[args.scale]
    feed_statements = statements()
    # Each route's statement, the feed's under its sort's label.
    api = queries() | {label: feed_statements[SORTS[sort].statement] for label, sort in FEED_LABELS.items()}
    with (
        seeded_database("bench_api", args.scale, args.database_url) as url,
        psycopg.connect(url, autocommit=True) as conn,
        psycopg.connect(url, autocommit=True, options=session_options(OLTP_SETTINGS)) as api_conn,
    ):
        drain(conn, worker="bench")
        conn.execute("VACUUM ANALYZE")
        slug_row = conn.execute("SELECT slug FROM mv_chain_directory ORDER BY member_count DESC LIMIT 1").fetchone()
        busy = conn.execute("SELECT DISTINCT sender_id FROM messages ORDER BY 1 LIMIT 500").fetchall()
        params = Params(scale.users, str(slug_row[0]) if slug_row else "", [int(r[0]) for r in busy])
        check_agreement(conn, api_conn, api, params)
        naive_runs = max(3, args.runs // 10)
        print(f"dataset={args.scale} ({scale.projects:,} projects, {scale.upvotes:,} upvotes, "
              f"{scale.messages:,} messages); medians, naive {naive_runs} runs, read model {args.runs} runs; "
              "each naive query checked to give the read model's answer")  # fmt: skip
        print(f"{'':<34}{'---------- server ----------':>36}{'-------- round trip --------':>36}")
        print(f"{'route query':<34}" + f"{'naive ms':>12}{'read model ms':>15}{'ratio':>9}" * 2)

        def row(label: str, slow: tuple[float, float], fast: tuple[float, float]) -> None:
            cells = "".join(f"{s:>12.3f}{f:>15.3f}{s / f:>8.0f}x" for s, f in zip(slow, fast, strict=True))
            print(f"{label:<34}{cells}")

        for name, naive in NAIVE.items():
            draw = params.drawer(name)
            slow = medians(conn, naive, draw, naive_runs, prepared=False, seed=name)
            row(name, slow, medians(api_conn, api[name], draw, args.runs, prepared=True, seed=name))
        drawers = {name: page_drawer(conn, page) for name, page in PAGES.items()}
        check_pages(conn, api_conn, api, drawers)
        for name, page in PAGES.items():
            slow = medians(conn, page.naive, drawers[name], naive_runs, prepared=False, seed=name)
            row(f"{name} (any page)", slow, medians(api_conn, api[name], drawers[name], args.runs, prepared=True,
                                                   seed=name))  # fmt: skip
        fast = medians(api_conn, api["search"], params.drawer("search"), args.runs, prepared=True, seed="search")
        for label, naive in NAIVE_SEARCH.items():
            row(label, medians(conn, naive, params.drawer("search"), naive_runs, prepared=False, seed="search"), fast)
        if shutil.which("pgbench") is None:
            print("dashboard throughput: pgbench not found (apt-get install postgresql-client)")
            return
        naive_tps, model_tps = dashboard_throughput(url, api, scale.users, args.seconds)
        print(
            f"dashboard throughput, pgbench -c {CLIENTS} -j 2 -T {args.seconds}, random users: naive (simple protocol) "
            f"{naive_tps:,.0f}/s, read model (prepared) {model_tps:,.0f}/s, ratio {model_tps / naive_tps:.1f}x"
        )


if __name__ == "__main__":
    main()
