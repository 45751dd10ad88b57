"""The refresh queue and the refresher: coalesced requests, debounce, claims, retries, shutdown, metrics."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from denorm import maintenance
from denorm.config import Settings
from denorm.maintenance import fold_all
from denorm.readmodels import Kind, of_kind
from denorm.seed import SCALES, seed
from denorm.sql import query
from services.reconciler.drift import compare
from services.refresher.worker import Refresher
from tests.support import settle
from tests.workload import random_program, run_concurrently

Connection = psycopg.Connection[Any]


def settings_for(url: str, **overrides: Any) -> Settings:
    """Test settings: no spacing between refreshes of a view unless a test asks for it."""
    overrides.setdefault("refresher_min_interval_ms", 0)
    return Settings(database_url=url, environment="test", refresher_metrics_port=0, **overrides)


def queue(conn: Connection) -> dict[str, tuple[Any, ...]]:
    rows = conn.execute("SELECT view_name, status, generation, attempts, last_error FROM mv_refresh_queue")
    return {r[0]: tuple(r[1:]) for r in rows}


def refresh_counts(conn: Connection) -> dict[str, int]:
    rows = conn.execute("SELECT view_name, count(*) FROM mv_refresh_log WHERE status = 'completed' GROUP BY 1")
    return {r[0]: int(r[1]) for r in rows}


def assert_matviews_match_their_definitions(conn: Connection) -> None:
    for view in of_kind(Kind.MATVIEW):
        assert compare(conn, view, against="definition") == [], f"{view.name} differs from its definition"
        assert compare(conn, view) == [], f"{view.name} differs from its truth"


@pytest.fixture
def seeded(conn: Connection, database_url: str) -> Connection:
    seed(database_url, SCALES["tiny"], seed=3)
    settle(conn)
    return conn


def test_every_view_equals_its_definition_after_random_writes(seeded: Connection, database_url: str) -> None:
    assert_matviews_match_their_definitions(seeded)
    import random

    rng = random.Random(7)
    run_concurrently(database_url, [random_program(rng, 60, structural=(i == 0)) for i in range(3)])
    seeded.execute("INSERT INTO forum_posts (thread_id, author_id, body) SELECT id, 1, 'late' FROM forum_threads")
    seeded.execute("UPDATE users SET username = username || 'x' WHERE id IN (SELECT owner_id FROM projects LIMIT 3)")
    seeded.execute("DELETE FROM chain_members WHERE user_id % 2 = 0")
    settle(seeded)
    assert_matviews_match_their_definitions(seeded)
    # and the tables the fold keeps equal their definitions too
    assert_fold_kept_tables_match_their_truth(seeded)


VIEW = "mv_leaderboard_projects"  # the one materialized view: the feed's fold asks for its refresh


def vote(conn: Connection, user: int, project: int) -> None:
    """An upvote, folded: the fold brings the feed up to date and asks for a refresh of the view."""
    conn.execute("INSERT INTO project_upvotes (user_id, project_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                 (user, project))  # fmt: skip
    fold_all(conn)


def test_a_thousand_writes_cost_one_refresh(seeded: Connection, database_url: str) -> None:
    before = refresh_counts(seeded)
    for user in range(1, 201):
        for project in range(1, 6):
            seeded.execute("INSERT INTO project_upvotes (user_id, project_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                           (user, project))  # fmt: skip
    fold_all(seeded)
    refresher = Refresher(settings_for(database_url, refresher_debounce_ms=0))
    assert refresher.collect(seeded) >= 1
    assert seeded.execute("SELECT count(*) FROM mv_refresh_requests").fetchone() == (0,)
    assert queue(seeded)[VIEW][0] == "pending"
    maintenance.drain(seeded, "test")
    after = refresh_counts(seeded)
    assert after == {**before, VIEW: before.get(VIEW, 0) + 1}
    assert queue(seeded)[VIEW][0] == "idle"


def test_writes_no_view_reads_request_nothing(seeded: Connection, database_url: str) -> None:
    """Posts, members, renames and messages reach only fold-kept read models: no refresh."""
    seeded.execute("INSERT INTO forum_posts (thread_id, author_id, body) VALUES (1, 1, 'hello')")
    seeded.execute("INSERT INTO chain_members (chain_id, user_id) VALUES (1, 197) ON CONFLICT DO NOTHING")
    seeded.execute("UPDATE chains SET name = name || '!'")
    seeded.execute("INSERT INTO messages (sender_id, recipient_id, body) VALUES (1, 2, 'hi')")
    assert seeded.execute("SELECT count(*) FROM mv_refresh_requests").fetchone() == (0,)


def test_a_view_waits_for_its_debounce_window(seeded: Connection, database_url: str) -> None:
    refresher = Refresher(settings_for(database_url, refresher_debounce_ms=1500))
    vote(seeded, 199, 1)
    vote(seeded, 199, 2)
    refresher.collect(seeded)
    assert refresher.refresh_one(seeded) is None  # first request too recent
    time.sleep(1.6)
    result = refresher.refresh_one(seeded)
    assert result is not None and result.view_name == VIEW


def test_a_view_is_refreshed_at_most_once_per_interval(seeded: Connection, database_url: str) -> None:
    refresher = Refresher(settings_for(database_url, refresher_debounce_ms=0, refresher_min_interval_ms=1500))
    seeded.execute("UPDATE mv_refresh_queue SET last_refreshed_at = now() - interval '1 minute'")  # long ago
    vote(seeded, 198, 1)
    refresher.collect(seeded)
    first = refresher.refresh_one(seeded)
    assert first is not None and first.view_name == VIEW
    vote(seeded, 198, 2)
    refresher.collect(seeded)
    assert refresher.refresh_one(seeded) is None  # refreshed too recently: it waits, pending
    assert queue(seeded)[VIEW][0] == "pending"
    due_in = seeded.execute(query("next_due_in"), refresher.timing.params()).fetchone()
    assert due_in is not None and 0.5 < due_in[0] <= 1.5  # and the loop knows when it will be
    time.sleep(1.6)
    again = refresher.refresh_one(seeded)
    assert again is not None and again.view_name == VIEW
    # drain (tests, --once) refreshes what is pending however recent
    vote(seeded, 198, 3)
    assert VIEW in [r.view_name for r in maintenance.drain(seeded, "test")]


def test_a_rolled_back_write_requests_nothing(seeded: Connection, database_url: str) -> None:
    with pytest.raises(RuntimeError), seeded.transaction():
        seeded.execute("INSERT INTO project_upvotes (user_id, project_id) VALUES (196, 1) ON CONFLICT DO NOTHING")
        maintenance.fold(seeded)
        raise RuntimeError("roll back")
    assert Refresher(settings_for(database_url)).collect(seeded) == 0


def test_two_refreshers_never_refresh_one_view_twice_for_one_request(seeded: Connection, database_url: str) -> None:
    before = refresh_counts(seeded)
    vote(seeded, 195, 1)
    results: list[list[str]] = [[], []]
    start = threading.Barrier(2)

    def drain(i: int) -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            refresher = Refresher(settings_for(database_url, refresher_debounce_ms=0), worker=f"w{i}")
            start.wait()
            for _ in range(5):
                refresher.collect(conn)
                while (r := refresher.refresh_one(conn)) is not None:
                    results[i].append(r.view_name)

    threads = [threading.Thread(target=drain, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results[0] + results[1]) == [VIEW], f"refreshed other than once: {results}"
    assert refresh_counts(seeded)[VIEW] == before.get(VIEW, 0) + 1


def test_a_crashed_refreshers_claim_is_recovered(seeded: Connection, database_url: str) -> None:
    vote(seeded, 194, 1)
    refresher = Refresher(settings_for(database_url, refresher_debounce_ms=0))
    refresher.collect(seeded)
    crashed = psycopg.connect(database_url)
    crashed.execute(
        "SELECT 1 FROM mv_refresh_claims WHERE view_name = %s FOR UPDATE", (VIEW,)
    )  # a replica that claimed the view, then hangs
    assert refresher.refresh_one(seeded) is None  # skipped, not waited for
    pid = crashed.info.backend_pid
    # pg_terminate_backend only signals; the claim ends when the backend has exited.
    seeded.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
    crashed.close()
    result = refresher.refresh_one(seeded)
    assert result is not None and result.view_name == VIEW


def test_a_failing_refresh_backs_off(seeded: Connection, database_url: str) -> None:
    vote(seeded, 193, 1)
    # Without its unique index, REFRESH ... CONCURRENTLY fails.
    seeded.execute("DROP INDEX mv_leaderboard_projects_key")
    refresher = Refresher(settings_for(database_url, refresher_debounce_ms=0, refresher_retry_base_ms=60_000))
    done = maintenance.drain(seeded, "test", refresher.timing)
    assert [(r.view_name, r.status) for r in done] == [(VIEW, "failed")]
    status, _gen, attempts, error = queue(seeded)[VIEW]
    assert (status, attempts) == ("pending", 1) and "unique index" in error
    assert refresher.refresh_one(seeded) is None  # backing off, not hammering
    seeded.execute("CREATE UNIQUE INDEX mv_leaderboard_projects_key ON mv_leaderboard_projects (project_id)")
    seeded.execute("UPDATE mv_refresh_queue SET next_attempt_at = now() WHERE view_name = %s", (VIEW,))
    result = refresher.refresh_one(seeded)
    assert result is not None and result.status == "completed"
    assert queue(seeded)[VIEW][:3] == ("idle", queue(seeded)[VIEW][1], 0)
    failed = seeded.execute("SELECT count(*) FROM mv_refresh_log WHERE status = 'failed'").fetchone()
    assert failed == (1,)


def test_the_fold_keeps_the_feed(seeded: Connection, database_url: str) -> None:
    seeded.execute("INSERT INTO project_upvotes (user_id, project_id) VALUES (199, 5) ON CONFLICT DO NOTHING")
    seeded.execute("UPDATE projects SET title = 'Renamed project' WHERE id = 6")
    seeded.execute("DELETE FROM projects WHERE id = 7")
    fold_all(seeded)
    row = seeded.execute("SELECT title FROM mv_feed_projects WHERE id = 6").fetchone()
    assert row == ("Renamed project",)
    assert seeded.execute("SELECT count(*) FROM mv_feed_projects WHERE id = 7").fetchone() == (0,)
    assert_fold_kept_tables_match_their_truth(seeded)


def test_the_fold_keeps_each_chains_projects(seeded: Connection) -> None:
    """mv_chain_projects follows votes, renames, deletions and chain membership, at the next fold."""
    chain, project = seeded.execute("SELECT chain_id, project_id FROM mv_chain_projects LIMIT 1").fetchone() or (0, 0)
    outsider = seeded.execute(
        "SELECT id FROM projects WHERE id NOT IN (SELECT project_id FROM chain_projects WHERE chain_id = %s) LIMIT 1",
        (chain,),
    ).fetchone()
    assert outsider is not None
    seeded.execute("INSERT INTO project_upvotes (user_id, project_id) SELECT id, %s FROM users LIMIT 30 "
                   "ON CONFLICT DO NOTHING", (project,))  # fmt: skip
    seeded.execute("UPDATE projects SET title = 'A chain favourite' WHERE id = %s", (project,))
    seeded.execute("INSERT INTO chain_projects (chain_id, project_id) VALUES (%s, %s)", (chain, outsider[0]))
    before = seeded.execute("SELECT count(*) FROM mv_chain_projects WHERE chain_id = %s", (chain,)).fetchone()
    fold_all(seeded)
    after = seeded.execute("SELECT count(*) FROM mv_chain_projects WHERE chain_id = %s", (chain,)).fetchone()
    assert before is not None and after == (before[0] + 1,)
    title = seeded.execute(
        "SELECT title FROM mv_chain_projects WHERE chain_id = %s AND project_id = %s", (chain, project)
    ).fetchone()
    assert title == ("A chain favourite",)
    assert_fold_kept_tables_match_their_truth(seeded)
    seeded.execute("DELETE FROM chain_projects WHERE chain_id = %s AND project_id = %s", (chain, outsider[0]))
    seeded.execute("DELETE FROM projects WHERE id = %s", (project,))
    fold_all(seeded)
    assert seeded.execute("SELECT count(*) FROM mv_chain_projects WHERE chain_id = %s", (chain,)).fetchone() == (
        before[0] - 1,
    )
    assert_fold_kept_tables_match_their_truth(seeded)
    seeded.execute("TRUNCATE chain_projects")
    assert seeded.execute("SELECT count(*) FROM mv_chain_projects").fetchone() == (0,)


def assert_fold_kept_tables_match_their_truth(conn: Connection) -> None:
    for model in of_kind(Kind.FOLD):
        assert compare(conn, model) == [], f"{model.name} differs from its truth"


def test_a_view_is_as_old_as_its_first_unserved_request_collected_or_not(seeded: Connection) -> None:
    """as_of (read_model_freshness) counts a request the refresher has not collected yet: a view is
    never said to hold a write it does not hold, even while no refresher runs."""

    def as_of() -> Any:
        return seeded.execute("SELECT as_of FROM read_model_freshness WHERE clock = %s", (VIEW,)).fetchone()

    vote(seeded, 192, 1)
    committed = seeded.execute("SELECT now()").fetchone()
    assert committed is not None
    before = as_of()
    assert before is not None and before[0] < committed[0]  # uncollected
    assert maintenance.collect(seeded) >= 1
    assert as_of() == before  # collected, not yet refreshed
    maintenance.drain(seeded, "test")
    after = as_of()
    assert after is not None and after[0] > committed[0]
