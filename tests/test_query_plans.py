"""Every query the API issues uses an index on every large table (Phase 4: the indexes the queries need)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from db import SQL_DIR
from denorm.pg import OLTP_SETTINGS
from denorm.sqlfile import load_queries, positional

QUERIES = load_queries(SQL_DIR / "queries" / "api.sql")
LARGE_ROWS = 2_000  # a table past this size must never be read whole by an API query
MAX_ID = 2**63 - 1

PARAMS: dict[str, dict[str, Any]] = {
    "feed_trending": {"after_score": float("inf"), "after_id": MAX_ID, "limit": 20, "offset": 0, "page": None},
    "feed_top_rated": {"after_score": float("inf"), "after_id": MAX_ID, "limit": 20, "offset": 0, "page": None},
    "feed_newest": {
        "after_time": datetime.max.replace(tzinfo=UTC),
        "after_id": MAX_ID,
        "limit": 20,
        "offset": 0,
        "page": None,
    },
    "leaderboard_projects": {"offset": 0, "limit": 50},
    "leaderboard_users": {"offset": 0, "limit": 50},
    "chains": {"after_members": MAX_ID, "after_id": MAX_ID, "limit": 20},
    "chain_page": {"slug": "chain-1-postgres", "limit": 20},
    "trending_tags": {"limit": 20},
    "dashboard": {"user_id": 1},
    "conversations": {"user_id": 1, "limit": 50},
    "upvoted_among": {"user_id": 1, "project_ids": list(range(1, 21))},
    "user_upvotes": {"user_id": 1},
    "search": {"q": "reddis cache", "doc_type": "project", "limit": 20},
    # A rare word across every type: the GIN index, not a scan of every document.
    "search:all": {"q": "lovelase", "doc_type": None, "limit": 20},
    "refresh_status": {},
}


def nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(node for child in plan.get("Plans", []) for node in nodes(child))]


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


def generic_plan(conn: psycopg.Connection[Any], query: str, params: dict[str, Any]) -> dict[str, Any]:
    """The plan the API runs: the query prepared server-side, planned once without its values."""
    sql, names = positional(query)
    conn.execute(f"PREPARE api_query AS {sql}".encode())
    args = psycopg.sql.SQL(", ").join(psycopg.sql.Literal(params[name]) for name in names)
    call = psycopg.sql.SQL("({})").format(args) if names else psycopg.sql.SQL("")
    row = conn.execute(psycopg.sql.SQL("EXPLAIN (FORMAT JSON) EXECUTE api_query {}").format(call)).fetchone()
    conn.execute("DEALLOCATE api_query")
    assert row is not None
    plan: dict[str, Any] = row[0][0]["Plan"]
    return plan


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_the_generic_plan_the_api_runs_is_an_index_walk(small_dataset_url: str, name: str) -> None:
    """The API's sessions force generic plans (denorm/pg.py); a generic plan does not know the values,
    so it must be good for all of them: no whole-table read and no parallel workers."""
    with psycopg.connect(small_dataset_url, autocommit=True) as conn:
        for setting, value in OLTP_SETTINGS.items():
            conn.execute(psycopg.sql.SQL("SET {} = {}").format(psycopg.sql.Identifier(setting), value))
        rels = conn.execute("SELECT relname, reltuples FROM pg_class WHERE relkind IN ('r', 'm')").fetchall()
        sizes: dict[str, float] = {str(r[0]): float(r[1]) for r in rels}
        plan = generic_plan(conn, QUERIES[name.split(":")[0]], PARAMS[name])
        large = [(rel, sizes.get(rel, 0)) for rel, _rows in seq_scans(plan) if sizes.get(rel, 0) > LARGE_ROWS]
        assert large == [], f"{name} reads whole tables: {large}"
        assert not [n for n in nodes(plan) if n["Node Type"].startswith("Gather")], f"{name} plans parallel workers"
        assert conn.execute("SHOW jit").fetchone() == ("off",)  # the generic plans' costs pass jit_above_cost
        # A ledger is empty after each fold, and a plan made then lives as long as the connection.
        # (refresh_status, an operator's read, must read the ledger whole to find its oldest entry.)
        if name != "refresh_status":
            assert ledger_scans(plan) == [], f"{name} scans a delta ledger"


def ledger_scans(plan: dict[str, Any]) -> list[str]:
    """The delta ledgers (tables named *_deltas) a plan reads sequentially."""
    return [rel for rel, _rows in seq_scans(plan) if rel.endswith("_deltas")]


def test_without_the_settings_a_generic_plan_scans_an_empty_ledger(small_dataset_url: str) -> None:
    """Why enable_seqscan is off for the API, and proof that the ledger check can fail: with the
    ledger analyzed empty, the generic feed plan reads it whole for each item of the page."""
    with psycopg.connect(small_dataset_url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE project_counter_deltas")
        assert conn.execute("SELECT count(*) FROM project_counter_deltas").fetchone() == (0,)
        for setting, value in OLTP_SETTINGS.items():
            if setting != "enable_seqscan":
                conn.execute(psycopg.sql.SQL("SET {} = {}").format(psycopg.sql.Identifier(setting), value))
        assert ledger_scans(generic_plan(conn, QUERIES["feed_trending"], PARAMS["feed_trending"])) != []
        conn.execute("SET enable_seqscan = off")
        assert ledger_scans(generic_plan(conn, QUERIES["feed_trending"], PARAMS["feed_trending"])) == []


def test_without_the_settings_a_generic_feed_plan_goes_parallel(small_dataset_url: str) -> None:
    """Why the settings exist, and proof that the parallel check can fail. At `standard` the default
    costs already plan a Gather Merge for the feed (5 ms); the small test dataset needs cheaper
    parallel costs (and dearer tuples) to show it."""
    with psycopg.connect(small_dataset_url, autocommit=True) as conn:
        conn.execute("SET plan_cache_mode = force_generic_plan")
        conn.execute("SET parallel_setup_cost = 0")
        conn.execute("SET parallel_tuple_cost = 0")
        conn.execute("SET min_parallel_index_scan_size = 0")
        conn.execute("SET min_parallel_table_scan_size = 0")
        conn.execute("SET cpu_tuple_cost = 1")
        plan = generic_plan(conn, QUERIES["feed_trending"], PARAMS["feed_trending"])
        assert [n for n in nodes(plan) if n["Node Type"].startswith("Gather")]
