"""A backlog of upvote-set marks larger than Postgres's lock table drains, and upvotes go on.

Plain SQL writing while no drain runs (the refresher down, or a bulk job) leaves a mark per
statement and user (db/readmodels/upvote_sets.sql). The drain's claim tries a (user, project)
advisory lock per mark it takes; tried on every mark of the table instead of the batch, one
claim took more locks than the server's shared lock table holds, failed with "out of shared
memory" on every try, and failed every API upvote (pg_advisory_lock) while it ran.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from denorm.config import Settings
from denorm.sql import query
from services.refresher.invalidator import Invalidator

Connection = psycopg.Connection[Any]
BATCH = 1000


def lock_table_slots(conn: Connection) -> int:
    """How many locks the server's shared lock table is sized for (PostgreSQL's own formula)."""
    row = conn.execute(
        "SELECT current_setting('max_locks_per_transaction')::int"
        " * (current_setting('max_connections')::int + current_setting('max_prepared_transactions')::int)"
    ).fetchone()
    assert row is not None
    return int(row[0])


def make_backlog(conn: Connection, pairs: int) -> int:
    """One statement per (user, project) pair, each changing a row: at least one mark per pair,
    each pair a lock key of its own. Returns the marks waiting."""
    conn.execute(
        sql.SQL("""
        DO $$
        DECLARE r record;
        BEGIN
            FOR r IN SELECT u.id AS u, p.id AS p FROM users u CROSS JOIN projects p
                     ORDER BY u.id, p.id LIMIT {pairs} LOOP
                DELETE FROM project_upvotes WHERE user_id = r.u AND project_id = r.p;
                INSERT INTO project_upvotes (user_id, project_id) VALUES (r.u, r.p);
            END LOOP;
        END $$
        """).format(pairs=sql.Literal(pairs))
    )
    row = conn.execute("SELECT count(DISTINCT (user_id, project_id)) FROM upvote_set_changes").fetchone()
    assert row is not None
    return int(row[0])


def test_a_backlog_past_the_lock_table_drains_and_upvotes_go_on_meanwhile(
    seeded_url: str, settings: Settings, conn: Connection
) -> None:
    slots = lock_table_slots(conn)
    backlog = make_backlog(conn, slots + 4000)
    assert backlog > slots

    # One claim holds locks for its batch only, and an upvote takes its lock while the claim's
    # transaction is open (the drain's Redis step runs inside it).
    with psycopg.connect(seeded_url) as drain:
        claimed = drain.execute(query("upvote_changes_claim"), {"limit": BATCH}).fetchall()
        assert len(claimed) == BATCH
        held = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = %s", (drain.info.backend_pid,)
        ).fetchone()
        assert held is not None and held[0] <= BATCH
        last = conn.execute("SELECT (SELECT max(id) FROM users), (SELECT max(id) FROM projects)").fetchone()
        assert last is not None  # a pair of no mark: the batch's own pairs wait for the drain, by design
        vote = {"u": last[0], "p": last[1], "want": None, "durable": True}
        assert conn.execute(query("upvote_change"), vote).fetchone() is not None
        conn.execute(query("upvote_unlock"), vote)
        drain.rollback()

    # The drain empties the backlog, a batch at a time.
    invalidator = Invalidator(settings.model_copy(update={"refresher_invalidate_batch": BATCH}))
    try:
        for _ in range(backlog // BATCH + 5):
            drained = invalidator.drain_once(conn)
            assert drained is not None
            if drained.marks == 0:
                break
    finally:
        invalidator.close()
    row = conn.execute("SELECT count(*) FROM upvote_set_changes").fetchone()
    assert row is not None and row[0] == 0
