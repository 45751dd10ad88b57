"""One statement touching 100k rows keeps every read model exact (bench/bulk.py times the same statements)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import psycopg
import pytest

from denorm.maintenance import fold_all, rebuild_all
from denorm.seed import SCALES, seed
from tests.test_read_models import assert_exact

Connection = psycopg.Connection[Any]
N = 100_000


@pytest.fixture
def hundred_k_users(conn: Connection, database_url: str) -> Connection:
    # 100k users so that one project can draw 100k distinct upvoters; everything else stays tiny.
    seed(database_url, replace(SCALES["tiny"], users=N), seed=11)
    return conn


def test_bulk_messages_insert_read_delete(hundred_k_users: Connection) -> None:
    conn = hundred_k_users
    conn.execute(
        "INSERT INTO messages (sender_id, recipient_id, body) "
        "SELECT 1 + i %% 500, 501 + i %% 700, 'bulk ' || i FROM generate_series(1, %s) i",
        (N,),
    )
    assert_exact(conn, "after inserting 100k messages")
    conn.execute("UPDATE messages SET read_at = now() WHERE body LIKE 'bulk %' AND read_at IS NULL")
    assert_exact(conn, "after marking 100k messages read")
    conn.execute("DELETE FROM messages WHERE body LIKE 'bulk %'")
    assert_exact(conn, "after deleting 100k messages")
    fold_all(conn)
    assert_exact(conn, "after the fold")


def test_deleting_a_project_with_100k_upvotes_and_comments(hundred_k_users: Connection) -> None:
    conn = hundred_k_users
    conn.execute("DELETE FROM project_upvotes WHERE project_id = 1")
    conn.execute("INSERT INTO project_upvotes (user_id, project_id) SELECT id, 1 FROM users ORDER BY id LIMIT %s", (N,))
    conn.execute(
        "INSERT INTO project_comments (project_id, author_id, body) "
        "SELECT 1, 1 + i %% %s, 'bulk' FROM generate_series(1, %s) i",
        (N, N),
    )
    row = conn.execute("SELECT upvote_count, comment_count FROM project_counters WHERE project_id = 1").fetchone()
    assert row is not None and row[0] == N and row[1] >= N
    assert_exact(conn, "after 100k upvotes and comments on one project")
    conn.execute("DELETE FROM projects WHERE id = 1")
    assert_exact(conn, "after deleting the project")
    fold_all(conn)
    assert_exact(conn, "after the fold")


def test_backfill_sized_insert_select(hundred_k_users: Connection) -> None:
    conn = hundred_k_users
    conn.execute(
        "INSERT INTO project_upvotes (user_id, project_id) "
        "SELECT u.id, p.id FROM users u CROSS JOIN (SELECT id FROM projects ORDER BY id LIMIT 3) p "
        "ON CONFLICT DO NOTHING"
    )
    assert_exact(conn, "after a 300k-row INSERT ... SELECT")
    rebuild_all(conn)
    assert_exact(conn, "after a rebuild")
