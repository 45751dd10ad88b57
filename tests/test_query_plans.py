"""Every statement uses an index on every large table (Phase 4: the indexes the queries need), and the
API's run on generic plans that stay index walks."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from denorm.ids import MAX_ID
from denorm.sql import positional, queries
from services.api import feed
from services.api.params import SEARCH_START
from services.api.pools import OLTP_SETTINGS
from tests.manifests import REPO

# Every named statement, with the feed's one per sort in place of its template.
QUERIES = {name: text for name, text in queries().items() if name != "feed_page"} | feed.statements()
# A procedure's CALL has no plan to EXPLAIN (upvote_apply: its statements' plans are its functions').
CALLS = {name for name, text in QUERIES.items() if re.match(r"(\s*--[^\n]*\n)*\s*CALL\b", text)}
LARGE_ROWS = 2_000  # a table past this size must never be read whole
FIRST_PAGE = {"limit": 20, "offset": 0, "page": None, "after_id": MAX_ID}
NOW = datetime(2026, 11, 30, tzinfo=UTC)

PARAMS: dict[str, dict[str, Any]] = {
    "feed_by_trending_score": {**FIRST_PAGE, "sort": "trending", "after_key": float("inf")},
    "feed_by_proof_score": {**FIRST_PAGE, "sort": "top-rated", "after_key": float("inf")},
    "feed_by_created_at": {**FIRST_PAGE, "sort": "newest", "after_key": datetime.max.replace(tzinfo=UTC)},
    "leaderboard_projects": {"offset": 0, "limit": 50},
    "leaderboard_users": {"offset": 0, "limit": 50},
    "chains": {"after_members": MAX_ID, "after_id": MAX_ID, "limit": 20},
    "chain_page": {"slug": "chain-1-postgres", "limit": 20},
    "chain_id": {"slug": "chain-1-postgres"},
    "dashboard": {"user_id": 1},
    "conversations": {"user_id": 1, "limit": 50},
    "upvoted_among": {"user_id": 1, "project_ids": list(range(1, 21))},
    "user_upvotes": {"user_id": 1},
    "upvote_sets": {"users": list(range(1, 501))},
    "upvote_change": {"u": 1, "p": 1, "want": True, "durable": True},
    "upvote_unlock": {"u": 1, "p": 1},
    "upvote_warm_up": {},
    "search": {"q": "reddis cache", "doc_type": "project", "limit": 20, **SEARCH_START},
    # A rare word across every type: the GIN index, not a scan of every document.
    "search:all": {"q": "lovelase", "doc_type": None, "limit": 20, **SEARCH_START},
    "search:next": {
        "q": "redis",
        "doc_type": None,
        "limit": 20,
        "after_tier": 2,
        "after_popularity": 5,
        "after_type": "chain",
        "after_id": 7,
    },
    # The pages (db/schema/pages.sql, the chain read models' files), deep in their lists.
    "project_page": {"id": 1, "user": 1, "limit": 20},
    "project_comments": {"id": 1, "after_at": NOW, "after_id": MAX_ID, "limit": 20},
    "thread_page": {"id": 1, "after_at": datetime(2020, 1, 1, tzinfo=UTC), "after_id": 0, "limit": 20},
    "chain_projects": {"slug": "chain-1-postgres", "after_key": 3, "after_id": 100, "limit": 20},
    "chain_threads": {"slug": "chain-1-postgres", "after_at": NOW, "after_id": MAX_ID, "limit": 20},
    "conversation_messages": {"me": 1, "other": 2, "after_at": NOW, "after_id": MAX_ID, "limit": 50},
    "intro_requests": {"me": 1, "received": True, "status": None, "after_at": NOW, "after_id": MAX_ID, "limit": 20},
    "intro_requests:sent": {
        "me": 1,
        "received": False,
        "status": "pending",
        "after_at": NOW,
        "after_id": MAX_ID,
        "limit": 20,
    },
    "user_profile": {"username": "ada"},
    "replica_state": {},
    "wal_insert_position": {},
    "freshness": {},
    "queue_state": {},
    "fold_state": {},
    "schema_ready": {},
    # The writes the API makes.
    "create_project": {"owner": 1, "title": "t", "tagline": "", "description": "", "tags": []},
    "add_comment": {"user": 1, "project": 1, "body": "b"},
    "send_message": {"sender": 1, "recipient": 2, "body": "b"},
    "mark_read": {"me": 1, "other": 2},
    "create_intro": {"me": 1, "target": 2, "project": None, "message": ""},
    "answer_intro": {"status": "accepted", "id": 1, "me": 1},
    "join_chain": {"me": 1, "slug": "chain-1-postgres"},
    "leave_chain": {"chain": 1, "me": 1},
    "new_thread": {"me": 1, "title": "t", "body": "", "slug": "chain-1-postgres"},
    "new_post": {"me": 1, "body": "b", "thread": 1},
    "add_chain_project": {"me": 1, "slug": "chain-1-postgres", "project": 1},
    "remove_chain_project": {"me": 1, "slug": "chain-1-postgres", "project": 1},
    "idempotency_claim": {"user": 1, "key": "k", "fingerprint": b"f", "ttl": 86400},
    "idempotency_answer": {"user": 1, "key": "k"},
    "idempotency_record": {"user": 1, "key": "k", "status": 201, "body": b"{}"},
    # The refresher's and the reconciler's.
    "fold_begin": {},
    "fold_lock": {},
    "collect_requests": {},
    "claim_due_view": {"debounce_s": 1.0, "min_interval_s": 3.0},
    "claim_view": {"view_name": "mv_leaderboard_projects"},
    "view_idle": {"view_name": "mv_leaderboard_projects"},
    "refresh_timeout": {"timeout": "120s"},
    "finish_refresh": {"generation": 1, "started_at": NOW, "duration_ms": 1, "view_name": "mv_leaderboard_projects"},
    "log_refresh": {
        "view_name": "v",
        "started_at": NOW,
        "duration_ms": 1,
        "status": "completed",
        "error": None,
        "worker": "w",
        "first_requested_at": NOW,
    },
    "fail_refresh": {"retry_max_s": 60.0, "retry_base_s": 1.0, "error": "e", "view_name": "mv_leaderboard_projects"},
    "next_due_in": {"debounce_s": 1.0, "min_interval_s": 3.0},
    "prune_log": {"days": 7},
    "idempotency_prune": {"ttl": 86400},
    "reconcile_lock": {},
    "reconcile_unlock": {},
    "record_start": {"mode": "dry-run"},
    "record_finish": {"status": "finished", "drift": "{}", "repaired": "{}", "error": None, "id": 1},
    "recent_runs": {"n": 30},
    "upvote_changes_claim": {"limit": 1000},
    "upvote_changes_done": {"ids": [1, 2]},
}
# What the API runs (its sessions' settings: services/api/pools.py); the rest is the refresher's and the reconciler's.
API = {name for name in PARAMS if name.split(":")[0] in QUERIES} - {
    "fold_begin", "fold_lock", "collect_requests", "claim_due_view", "claim_view", "view_idle",
    "refresh_timeout", "finish_refresh", "log_refresh", "fail_refresh", "next_due_in", "prune_log",
    "idempotency_prune", "reconcile_lock", "reconcile_unlock", "record_start", "record_finish", "recent_runs",
    "upvote_sets",
    "upvote_changes_claim", "upvote_changes_done",
}  # fmt: skip


def test_every_statement_has_parameters_here() -> None:
    assert {name.split(":")[0] for name in PARAMS} == set(QUERIES)


def test_every_statement_the_api_names_is_planned_as_the_api_runs_it() -> None:
    """The names the API's code passes to its database calls are all among the API's statements."""
    source = "\n".join(p.read_text() for p in (REPO / "services" / "api").rglob("*.py"))
    named = set(
        re.findall(
            r"""(?:fetch_all|fetch_one|json_of|json_of_pool|read_row|row_on|rows_on|query)\([^"')]*"(\w+)\"""", source
        )
    )
    assert named and named <= API | set(feed.statements()), named - API


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


def test_the_calls_are_the_upvotes() -> None:
    assert {"upvote_change", "upvote_warm_up"} == CALLS


@pytest.mark.parametrize("name", sorted(n for n in PARAMS if n.split(":")[0] not in CALLS))
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


@pytest.mark.parametrize("name", sorted(API - CALLS))
def test_the_generic_plan_the_api_runs_is_an_index_walk(small_dataset_url: str, name: str) -> None:
    """The API's sessions force generic plans (services/api/pools.py); a generic plan does not know the values,
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
        assert ledger_scans(plan) == [], f"{name} scans a delta ledger"


TRENDING = feed.SORTS[feed.Sort.TRENDING].statement


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
        assert ledger_scans(generic_plan(conn, QUERIES[TRENDING], PARAMS[TRENDING])) != []
        conn.execute("SET enable_seqscan = off")
        assert ledger_scans(generic_plan(conn, QUERIES[TRENDING], PARAMS[TRENDING])) == []


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
        plan = generic_plan(conn, QUERIES[TRENDING], PARAMS[TRENDING])
        assert [n for n in nodes(plan) if n["Node Type"].startswith("Gather")]
