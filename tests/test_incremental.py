"""The fold-kept read models are kept in proportion to the change: one write costs the rows it
changes, whatever the size of the data. Counted, not timed: the rows each read model's table had
inserted, updated or deleted by the fold after one write (pg_stat_xact_user_tables, within the
fold's own transaction), and the models still equal their truths."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from denorm.maintenance import fold, fold_all
from denorm.readmodels import Kind, of_kind
from tests.support import drifted, one, settle

Connection = psycopg.Connection[Any]

# The table each fold-kept read model writes.
TABLES = {m.name: m.name for m in of_kind(Kind.FOLD)}


def rows_written_by_the_fold(conn: Connection) -> dict[str, int]:
    """One fold, in a transaction of this test's own, and the rows it wrote per read model."""
    with conn.transaction():
        assert fold(conn) is not None
        rows = conn.execute(
            "SELECT relname, n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_xact_user_tables WHERE relname = ANY (%s)",
            (list(TABLES.values()),),
        ).fetchall()
    written = {str(name): int(n) for name, n in rows}
    return {model: written.get(table, 0) for model, table in TABLES.items()}


def exact(conn: Connection) -> None:
    settle(conn)  # the fold, and the refresh of the project leaderboard
    assert drifted(conn) == {}


@pytest.fixture
def folded(seeded_url: str, conn: Connection) -> Connection:
    fold_all(conn)
    return conn


def test_a_renamed_project_costs_its_rows_and_its_words(folded: Connection) -> None:
    project = one(folded, "SELECT min(project_id) FROM chain_projects")
    chains = one(folded, "SELECT count(*) FROM chain_projects WHERE project_id = %s", project)
    folded.execute("UPDATE projects SET title = 'Zebracorn Quagga' WHERE id = %s", (project,))
    written = rows_written_by_the_fold(folded)
    # Its feed row, its row in each of its chains, its search document; the two new words, and
    # each word of the old title moved (the old title has at most four).
    assert written["mv_feed_projects"] == 1 and written["mv_chain_projects"] == chains
    assert written["mv_search_documents"] == 1
    assert 2 <= written["mv_search_words"] <= 6
    assert written["mv_chain_directory"] == written["mv_forum_threads"] == written["mv_leaderboard_users"] == 0
    exact(folded)


def test_a_vote_costs_the_projects_rows_and_its_owners(folded: Connection) -> None:
    project = one(folded, "SELECT min(id) FROM projects")
    voter = one(folded, "SELECT min(id) FROM users u WHERE NOT EXISTS (SELECT 1 FROM project_upvotes v "
                        "WHERE v.user_id = u.id AND v.project_id = %s)", project)  # fmt: skip
    folded.execute("INSERT INTO project_upvotes (user_id, project_id) VALUES (%s, %s)", (voter, project))
    written = rows_written_by_the_fold(folded)
    assert written["mv_feed_projects"] == 1
    assert written["mv_leaderboard_users"] == 1  # the owner's total
    assert written["mv_search_documents"] <= 1  # its popularity, when the vote moves it a step
    assert written["mv_chain_directory"] == written["mv_forum_threads"] == written["mv_search_words"] == 0
    exact(folded)


def test_a_vote_does_not_read_its_owners_other_projects(seeded_url: str, folded: Connection) -> None:
    """The owner's total gets the vote added: the fold reads the voted project's counters, not those
    of each project the owner has (what made the leaderboard's cost grow with the data). Counted as
    index fetches, with sequential scans off: on the tiny dataset the planner would scan instead."""
    project = one(folded, "SELECT min(id) FROM projects")
    owner = one(folded, "SELECT owner_id FROM projects WHERE id = %s", project)
    folded.execute(
        "INSERT INTO projects (owner_id, title) SELECT %s, 'more ' || i FROM generate_series(1, 40) i", (owner,)
    )
    fold_all(folded)
    voter = one(folded, "SELECT min(id) FROM users u WHERE NOT EXISTS (SELECT 1 FROM project_upvotes v "
                        "WHERE v.user_id = u.id AND v.project_id = %s)", project)  # fmt: skip
    folded.execute("INSERT INTO project_upvotes (user_id, project_id) VALUES (%s, %s)", (voter, project))
    with psycopg.connect(seeded_url, autocommit=True) as folder:
        folder.execute("SET enable_seqscan = off")
        with folder.transaction():
            assert fold(folder) is not None
            read = one(
                folder, "SELECT idx_tup_fetch FROM pg_stat_xact_user_tables WHERE relname = 'project_counters_base'"
            )
    owned = one(folded, "SELECT count(*) FROM projects WHERE owner_id = %s", owner)
    # The voted project's row, read a few times by the steps that show it (11 here); 58 when the owner's
    # total was summed again.
    assert owned > 40 and read < owned / 2, (owned, read)
    exact(folded)


def test_a_post_costs_its_thread(folded: Connection) -> None:
    thread = one(folded, "SELECT min(id) FROM forum_threads")
    folded.execute("INSERT INTO forum_posts (thread_id, author_id, body) VALUES (%s, 1, 'hello')", (thread,))
    written = rows_written_by_the_fold(folded)
    assert written == {**dict.fromkeys(TABLES, 0), "mv_forum_threads": 1}
    exact(folded)


def test_a_join_costs_its_chain(folded: Connection) -> None:
    chain, user = folded.execute(
        "SELECT c.id, u.id FROM chains c, users u WHERE NOT EXISTS (SELECT 1 FROM chain_members m "
        "WHERE m.chain_id = c.id AND m.user_id = u.id) ORDER BY 1, 2 LIMIT 1"
    ).fetchone() or (0, 0)
    folded.execute("INSERT INTO chain_members (chain_id, user_id) VALUES (%s, %s)", (chain, user))
    written = rows_written_by_the_fold(folded)
    assert written["mv_chain_directory"] == 1
    assert written["mv_search_documents"] <= 1  # the chain's popularity, when the join moves it a step
    others = {k: v for k, v in written.items() if k not in ("mv_chain_directory", "mv_search_documents")}
    assert others == dict.fromkeys(others, 0)
    exact(folded)


def test_a_renamed_user_costs_their_rows(folded: Connection) -> None:
    user = one(folded, "SELECT owner_id FROM chains ORDER BY id LIMIT 1")
    owned = one(folded, "SELECT count(*) FROM chains WHERE owner_id = %s", user)
    threads = one(folded, "SELECT count(*) FROM forum_threads WHERE author_id = %s", user)
    projects = one(folded, "SELECT count(*) FROM projects WHERE owner_id = %s", user)
    folded.execute("UPDATE users SET username = 'renamed_owner', display_name = 'Zebracorn Owner' WHERE id = %s",
                   (user,))  # fmt: skip
    written = rows_written_by_the_fold(folded)
    assert written["mv_chain_directory"] == owned and written["mv_forum_threads"] == threads
    assert written["mv_feed_projects"] == projects
    assert written["mv_leaderboard_users"] == (1 if projects else 0)
    assert written["mv_search_documents"] == 1
    exact(folded)


def test_nothing_written_costs_nothing(folded: Connection) -> None:
    assert rows_written_by_the_fold(folded) == dict.fromkeys(TABLES, 0)


def test_each_step_reports_the_wal_it_wrote(folded: Connection) -> None:
    """The fold counts the write-ahead log of each step (the refresher exports it): a message
    writes its conversations' rows and nothing of a project's, so only its step's count moves."""
    sender, recipient = (one(folded, "SELECT min(id) FROM users"), one(folded, "SELECT max(id) FROM users"))
    folded.execute("INSERT INTO messages (sender_id, recipient_id, body) VALUES (%s, %s, 'hi')", (sender, recipient))
    steps = fold(folded)
    assert steps is not None
    wal = {s.step: s.wal_bytes for s in steps}
    assert wal["conversations_fold"] > 0
    assert wal["feed_fold"] == wal["chain_projects_fold"] == wal["search_documents_fold"] == 0


def hot_updates_by_the_fold(conn: Connection, table: str) -> tuple[int, int]:
    """One fold, in a transaction of this test's own: the rows of `table` it updated, and how many
    of those updates were HOT (the new version on the same page, no index entry written)."""
    with conn.transaction():
        assert fold(conn) is not None
        row = conn.execute(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables WHERE relname = %s", (table,)
        ).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def test_a_conversation_is_updated_in_place_and_goes_when_emptied(folded: Connection) -> None:
    """A conversation's base rows: each new message updates both directions HOT (their page has
    room, and no index covers what changes), and the fold deletes the rows its deletions emptied."""
    sender, recipient = one(folded, "SELECT min(id) FROM users"), one(folded, "SELECT max(id) FROM users")
    send = "INSERT INTO messages (sender_id, recipient_id, body) VALUES (%s, %s, %s) RETURNING id"
    first = one(folded, send, sender, recipient, "hello")
    fold(folded)
    second = one(folded, send, recipient, sender, "hi back")
    assert hot_updates_by_the_fold(folded, "conversation_base") == (2, 2)
    exact(folded)
    folded.execute("DELETE FROM messages WHERE id IN (%s, %s)", (first, second))
    fold(folded)
    pair = "SELECT count(*) FROM conversation_base WHERE (user_id, other_user_id) IN ((%s, %s), (%s, %s))"
    assert one(folded, pair, sender, recipient, recipient, sender) == 0
    assert one(folded, "SELECT count(*) FROM conversation_base WHERE message_count <= 0") == 0
    exact(folded)
