"""Every read model equals its truth after any writes, from any writer: the ledger-kept ones at every
commit, the fold-kept ones once folded, the materialized views once refreshed."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import errors

from denorm.maintenance import fold, fold_all
from denorm.readmodels import REGISTRY, Kind, fold_ledgers
from denorm.sql import query
from tests.support import all_drift, settle
from tests.workload import (
    CHAINS,
    FOLD,
    MULTI,
    PROJECTS,
    SINGLE,
    STRUCTURAL,
    TITLES,
    USERS,
    Op,
    random_program,
    reset,
    run_concurrently,
)

Connection = psycopg.Connection[Any]


def assert_exact(conn: Connection, when: str, kinds: tuple[Kind, ...] = (Kind.LEDGER,)) -> None:
    names = {m.name for m in REGISTRY if m.kind in kinds}
    problems = {name: rows for name, rows in all_drift(conn).items() if rows and name in names}
    assert not problems, f"read models drifted {when}: " + "; ".join(
        f"{name}: {rows[:5]}" for name, rows in problems.items()
    )


LEDGERS = ("user_stat_deltas", "project_counter_deltas", "conversation_deltas", *fold_ledgers())


def ledger_rows(conn: Connection) -> int:
    row = conn.execute(
        ("SELECT " + " + ".join(f"(SELECT count(*) FROM {t})" for t in dict.fromkeys(LEDGERS))).encode()
    ).fetchone()
    assert row is not None
    return int(row[0])


def check_everything(conn: Connection) -> None:
    """Exact with the deltas pending, exact once they are folded (the fold-kept read models too),
    nothing left in the ledgers, and every read model exact once the views are refreshed."""
    assert_exact(conn, "with deltas pending", (Kind.LEDGER,))
    fold_all(conn)
    assert_exact(conn, "after the fold", (Kind.LEDGER, Kind.FOLD))
    assert ledger_rows(conn) == 0
    settle(conn)
    assert_exact(conn, "after the refresh", (Kind.LEDGER, Kind.FOLD, Kind.MATVIEW))


@pytest.fixture
def populated(conn: Connection, database_url: str) -> Connection:
    reset(database_url)
    return conn


def one(conn: Connection, query: str, params: tuple[Any, ...] = ()) -> Any:
    row = conn.execute(query.encode(), params).fetchone()
    assert row is not None
    return row[0] if len(row) == 1 else row


# --- the comparison itself can fail ------------------------------------------------------------


def test_drift_is_seen_when_a_base_row_is_edited_by_hand(populated: Connection) -> None:
    fold_all(populated)
    populated.execute("UPDATE user_stats_base SET upvotes_given = upvotes_given + 1 WHERE user_id = 2")
    populated.execute("DELETE FROM conversation_base WHERE user_id = 1")
    populated.execute("UPDATE mv_feed_projects SET trending_score = 99999 WHERE id = 3")
    drifts = all_drift(populated)
    assert [(d.key, d.kind) for d in drifts["user_dashboard_stats"]] == [((2,), "different")]
    assert {d.key[0] for d in drifts["message_conversations_denorm"]} == {1}
    assert {d.kind for d in drifts["message_conversations_denorm"]} == {"missing"}
    assert [(d.key, d.kind) for d in drifts["mv_feed_projects"]] == [((3,), "different")]
    assert drifts["project_counters"] == [] and drifts["intro_request_stats"] == []


# --- the cases the contract names ------------------------------------------------------------


def test_deleting_a_user_cascades_through_every_read_model(populated: Connection) -> None:
    populated.execute("DELETE FROM users WHERE id = 1")
    assert one(populated, "SELECT count(*) FROM user_dashboard_stats WHERE user_id = 1") == 0
    assert one(populated, "SELECT count(*) FROM message_conversations_denorm WHERE 1 IN (user_id, other_user_id)") == 0
    check_everything(populated)


def test_deleting_a_project_with_votes_and_comments(populated: Connection) -> None:
    owner = one(populated, "SELECT owner_id FROM projects WHERE id = 1")
    before = one(populated, "SELECT upvotes_received FROM user_dashboard_stats WHERE user_id = %s", (owner,))
    votes = one(populated, "SELECT count(*) FROM project_upvotes WHERE project_id = 1")
    assert votes > 0
    populated.execute("DELETE FROM projects WHERE id = 1")
    after = one(populated, "SELECT upvotes_received FROM user_dashboard_stats WHERE user_id = %s", (owner,))
    assert after == before - votes
    check_everything(populated)


def test_a_project_changing_owner_moves_its_counts(populated: Connection) -> None:
    votes = one(populated, "SELECT upvote_count FROM project_counters WHERE project_id = 2")
    old = one(populated, "SELECT owner_id FROM projects WHERE id = 2")
    populated.execute("UPDATE projects SET owner_id = 6 WHERE id = 2")
    assert one(populated, "SELECT upvotes_received FROM user_dashboard_stats WHERE user_id = 6") == votes
    assert old != 6
    check_everything(populated)


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE messages SET read_at = now() WHERE recipient_id = 2",
        "UPDATE messages SET read_at = NULL WHERE recipient_id = 2",
        # the last message of a conversation deleted, edited, moved back in time, re-addressed
        "DELETE FROM messages WHERE id = (SELECT max(id) FROM messages)",
        "UPDATE messages SET body = 'edited' WHERE id = (SELECT max(id) FROM messages)",
        "UPDATE messages SET created_at = created_at - interval '1 day' WHERE id = (SELECT max(id) FROM messages)",
        "UPDATE messages SET recipient_id = 6 WHERE id = (SELECT max(id) FROM messages) AND sender_id <> 6",
        "DELETE FROM messages",
    ],
)
def test_message_changes(populated: Connection, statement: str) -> None:
    fold_all(populated)  # so the change lands on folded base rows, not on pending deltas
    populated.execute(statement.encode())
    check_everything(populated)


def test_the_preview_is_the_first_120_characters_of_the_latest_message(populated: Connection) -> None:
    populated.execute("INSERT INTO messages (sender_id, recipient_id, body) VALUES (5, 6, %s)", ("y" * 300,))
    for _ in range(2):  # live (pending) and folded
        preview = one(
            populated,
            "SELECT last_message_preview FROM message_conversations_denorm WHERE user_id = 6 AND other_user_id = 5",
        )
        assert preview == "y" * 120
        fold_all(populated)


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE intro_requests SET status = 'accepted', responded_at = now() WHERE status = 'pending'",
        "UPDATE intro_requests SET status = 'pending', responded_at = NULL WHERE status <> 'pending'",
        "DELETE FROM intro_requests WHERE status = 'accepted'",
        "UPDATE intro_requests SET target_id = 6 WHERE requester_id <> 6",
    ],
)
def test_intro_request_changes(populated: Connection, statement: str) -> None:
    populated.execute(statement.encode())
    check_everything(populated)


def test_a_reused_user_id_starts_from_zero(populated: Connection) -> None:
    populated.execute("DELETE FROM users WHERE id = 2")
    populated.execute("INSERT INTO users (id, username, display_name) VALUES (2, 'again', 'Again')")
    row = one(
        populated,
        "SELECT project_count, upvotes_given, unread_messages FROM user_dashboard_stats WHERE user_id = 2",
    )
    assert row == (0, 0, 0)
    check_everything(populated)


def test_truncate_rebuilds(populated: Connection) -> None:
    populated.execute("TRUNCATE project_upvotes")
    populated.execute("TRUNCATE messages")
    assert one(populated, "SELECT sum(upvote_count) FROM project_counters") == 0
    check_everything(populated)


def test_a_second_fold_at_once_does_nothing(populated: Connection, database_url: str) -> None:
    with psycopg.connect(database_url) as holder:
        holder.execute(query("fold_begin"))  # holds the fold lock, uncommitted
        assert fold(populated) is None
    check_everything(populated)


# --- random sequences from several connections at once -----------------------------------------

ops = st.builds(
    Op,
    kind=st.sampled_from([*SINGLE, FOLD, "multi"]),
    params=st.fixed_dictionaries(
        {
            "u": st.integers(1, USERS),
            "v": st.integers(1, USERS),
            "w": st.integers(1, USERS),
            "p": st.integers(1, PROJECTS),
            "c": st.integers(1, CHAINS),
            "dt": st.integers(-5, 5),
            "body": st.sampled_from(["hi", "x" * 130]),
            "status": st.sampled_from(["accepted", "declined"]),
            "k": st.sampled_from([1, 3, 1000]),
            "title": st.sampled_from(TITLES),
        }
    ),
)
structural_ops = st.builds(Op, kind=st.sampled_from([*STRUCTURAL, *SINGLE, FOLD]), params=ops.map(lambda o: o.params))


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
    ],
)
@given(
    structural=st.lists(structural_ops, min_size=3, max_size=20),
    others=st.lists(st.lists(ops, min_size=3, max_size=25), min_size=3, max_size=3),
)
def test_random_concurrent_writes_keep_every_read_model_exact(
    database_url: str, conn: Connection, structural: list[Op], others: list[list[Op]]
) -> None:
    reset(database_url)
    outcomes = run_concurrently(database_url, [structural, *others])
    errors = [e for o in outcomes for e in o.errors]
    assert not errors, errors
    assert sum(o.deadlocks for o in outcomes) == 0
    check_everything(conn)


def test_many_writers_never_deadlock_and_stay_exact(database_url: str, conn: Connection) -> None:
    """A longer, wider run than the property test: 8 connections, 250 operations each."""
    rng = random.Random(20261125)
    for _round in range(3):
        reset(database_url)
        programs = [random_program(rng, 250, structural=(i == 0)) for i in range(8)]
        outcomes = run_concurrently(database_url, programs)
        assert [e for o in outcomes for e in o.errors] == []
        assert sum(o.deadlocks for o in outcomes) == 0
        assert sum(o.done for o in outcomes) > 1000  # most statements really ran
        check_everything(conn)


def test_workload_kinds_are_all_known() -> None:
    assert set(MULTI) <= set(SINGLE)
    assert not set(SINGLE) & set(STRUCTURAL)


# --- a TRUNCATE while the fold is busy ---------------------------------------------------------

# Every source table, the ones others point at last.
SOURCES = ("forum_posts", "forum_threads", "chain_members", "chain_projects", "intro_requests", "messages",
           "project_comments", "project_upvotes", "chains", "projects", "users")  # fmt: skip


def test_the_fold_takes_every_table_it_uses_at_its_start(populated: Connection) -> None:
    """fold_lock_tables (db/schema/ledgers.sql) is the whole list: a fold that locked a table past
    its start could wait for it, and so deadlock with a TRUNCATE's rebuild."""
    rng = random.Random(7)
    run_concurrently(populated.info.dsn, [[op for op in random_program(rng, 150, structural=True) if op.kind != FOLD]])
    locks = "SELECT l.relation::regclass::text, l.mode FROM pg_locks l JOIN pg_class c ON c.oid = l.relation " \
            "WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation' AND c.relkind = 'r' " \
            "AND c.relnamespace <> 'pg_catalog'::regnamespace"  # fmt: skip
    with populated.transaction(force_rollback=True):
        populated.execute("SELECT fold_lock_tables()")
        upfront = dict(populated.execute(locks.encode()).fetchall())
    with populated.transaction(force_rollback=True):
        steps = fold(populated)
        assert steps is not None and sum(s.deltas_folded for s in steps) > 0
        used = populated.execute(locks.encode()).fetchall()
    covers = {"RowShareLock": {"AccessShareLock", "RowShareLock"},
              "RowExclusiveLock": {"AccessShareLock", "RowShareLock", "RowExclusiveLock"}}  # fmt: skip
    assert [(t, m) for t, m in used if m not in covers.get(upfront.get(t, ""), set())] == []


def test_a_truncate_of_any_source_during_busy_folds_never_deadlocks(database_url: str, conn: Connection) -> None:
    """A backlog in every ledger, a folder working it off a key at a time, and each source table
    truncated under it again and again: the fold gives way (fold_lock_tables), so neither deadlocks,
    and every read model is exact after."""
    stop = threading.Event()
    deadlocks: list[str] = []
    folded = 0

    def folding() -> None:
        nonlocal folded
        with psycopg.connect(database_url, autocommit=True) as c:
            while not stop.is_set():
                try:
                    folded += 1 if fold(c, 1) is not None else 0
                except errors.DeadlockDetected as exc:
                    deadlocks.append(f"fold: {exc}")

    rng = random.Random(11)
    for table in SOURCES:
        reset(database_url)
        run_concurrently(database_url, [[op for op in random_program(rng, 200, structural=True) if op.kind != FOLD]])
        stop.clear()
        folder = threading.Thread(target=folding)
        folder.start()
        try:
            for _ in range(4):
                time.sleep(0.05)
                try:
                    conn.execute(f"TRUNCATE {table} CASCADE".encode())
                except errors.DeadlockDetected as exc:
                    deadlocks.append(f"TRUNCATE {table}: {exc}")
                run_concurrently(database_url, [[op for op in random_program(rng, 50, False) if op.kind != FOLD]])
        finally:
            stop.set()
            folder.join(timeout=60)
    assert deadlocks == []
    assert folded > len(SOURCES)  # the folds ran between the truncates
    check_everything(conn)
