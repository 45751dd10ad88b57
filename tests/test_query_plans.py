"""Every query the API issues uses an index on every large table (Phase 4: the indexes the queries need)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from db import SQL_DIR
from denorm.sqlfile import load_queries

QUERIES = load_queries(SQL_DIR / "queries" / "api.sql")
LARGE_ROWS = 2_000  # a table past this size must never be read whole by an API query
MAX_ID = 2**63 - 1

PARAMS: dict[str, dict[str, Any]] = {
    "feed_trending": {"after_score": float("inf"), "after_id": MAX_ID, "limit": 20, "offset": 0},
    "feed_top_rated": {"after_score": float("inf"), "after_id": MAX_ID, "limit": 20, "offset": 0},
    "feed_newest": {"after_time": datetime.max.replace(tzinfo=UTC), "after_id": MAX_ID, "limit": 20, "offset": 0},
    "leaderboard_projects": {"offset": 0, "limit": 50},
    "leaderboard_users": {"offset": 0, "limit": 50},
    "chains": {"after_members": MAX_ID, "after_id": MAX_ID, "limit": 20},
    "chain_page": {"slug": "chain-1-postgres", "limit": 20},
    "trending_tags": {"limit": 20},
    "dashboard": {"user_id": 1},
    "conversations": {"user_id": 1, "limit": 50},
    "upvoted_among": {"user_id": 1, "project_ids": list(range(1, 21))},
    "user_upvotes": {"user_id": 1},
    "project_counts": {"project_id": 1},
    "search": {"q": "reddis cache", "doc_type": "project", "limit": 20},
    # A rare word across every type: the GIN index, not a scan of every document.
    "search:all": {"q": "lovelase", "doc_type": None, "limit": 20},
    "refresh_status": {},
}


def seq_scans(plan: dict[str, Any]) -> list[tuple[str, float]]:
    """(relation, estimated rows in it) for every sequential scan in the plan tree."""
    found = []
    if plan.get("Node Type") == "Seq Scan":
        found.append((plan["Relation Name"], float(plan.get("Plan Rows", 0))))
    for child in plan.get("Plans", []):
        found.extend(seq_scans(child))
    return found


def test_every_api_query_has_parameters_here() -> None:
    assert {name.split(":")[0] for name in PARAMS} == set(QUERIES)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_no_sequential_scan_of_a_large_table(small_dataset_url: str, name: str) -> None:
    with psycopg.connect(small_dataset_url) as conn:
        rels = conn.execute("SELECT relname, reltuples FROM pg_class WHERE relkind IN ('r', 'm')").fetchall()
        sizes: dict[str, float] = {str(r[0]): float(r[1]) for r in rels}
        query = QUERIES[name.split(":")[0]]
        row = conn.execute(b"EXPLAIN (FORMAT JSON) " + query.encode(), PARAMS[name]).fetchone()
        assert row is not None
        plan = row[0] if isinstance(row[0], list) else json.loads(row[0])
        large = [
            (rel, sizes.get(rel, 0)) for rel, _rows in seq_scans(plan[0]["Plan"]) if sizes.get(rel, 0) > LARGE_ROWS
        ]
        assert large == [], f"{name} reads whole tables: {large}"


def test_the_check_catches_a_sequential_scan(small_dataset_url: str) -> None:
    with psycopg.connect(small_dataset_url) as conn:
        row = conn.execute("EXPLAIN (FORMAT JSON) SELECT count(*) FROM messages WHERE body = 'x'").fetchone()
        assert row is not None
        assert "messages" in [relation for relation, _rows in seq_scans(row[0][0]["Plan"])]
