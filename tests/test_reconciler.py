"""The reconciler: finds exactly the drift injected, repairs it under concurrent writers without losing
their writes, runs one at a time, records its runs, and says how each run ended."""

from __future__ import annotations

import contextlib
import http.server
import json
import random
import re
import signal
import subprocess
import threading
import time
import urllib.request
from typing import Any

import psycopg
import pytest
import redis
import yaml

from denorm.config import Settings
from denorm.maintenance import fold
from denorm.migrate import MIGRATION_LOCK_KEY
from denorm.readmodels import REGISTRY
from denorm.sql import queries, query, sql_files
from denorm.upvote_sets import LOADED, set_key
from loadtest.localproc import free_port
from services.reconciler.reconcile import Reconciler, Report
from services.refresher.reconcile_runs import ReconcileCollector, streak
from tests import workload
from tests.conftest import TEST_REDIS_URL
from tests.manifests import REPO
from tests.support import DENORM, cli_env, drifted, one, run_denorm, settle

Connection = psycopg.Connection[Any]


@pytest.fixture
def rsettings(settings: Settings) -> Settings:
    # Every example kept, so the tests can compare the report with the injected rows exactly.
    return settings.model_copy(update={"reconciler_examples": 100, "reconciler_batch_size": 50,
                                       "reconciler_redis_grace_ms": 50})  # fmt: skip


@pytest.fixture
def rclient() -> Any:
    client = redis.Redis.from_url(TEST_REDIS_URL)
    yield client
    client.close()


def reconcile(settings: Settings, repair: bool = False) -> Report:
    return Reconciler(settings, repair=repair).run()


def found(report: Report, model: str) -> dict[str, list[Any]]:
    finding = report.models[model]
    assert finding.counts == {k: len(v) for k, v in finding.examples.items()}, "examples cut short"
    return {kind: sorted(keys) for kind, keys in finding.examples.items() if keys}


def test_a_clean_database_has_no_drift(seeded_url: str, rsettings: Settings) -> None:
    report = reconcile(rsettings)
    assert report.status == "finished" and report.drift_rows == 0
    assert report.models["project_counters"].checked == 400 and report.models["user_dashboard_stats"].checked == 200


def test_the_report_names_the_injected_rows_and_nothing_else(
    seeded_url: str, conn: Connection, rsettings: Settings, rclient: redis.Redis
) -> None:
    p1, p2, p3 = 11, 12, 13
    owner = {p: one(conn, "SELECT owner_id FROM projects WHERE id = %s", p) for p in (p1, p2, p3)}
    voter = one(conn, "SELECT min(id) FROM users u WHERE NOT EXISTS (SELECT 1 FROM project_upvotes v "
                      "WHERE v.user_id = u.id AND v.project_id IN (%s, %s))", p1, p2)  # fmt: skip
    a, b = conn.execute(
        "SELECT a.id, b.id FROM users a, users b WHERE a.id < b.id AND NOT EXISTS (SELECT 1 FROM messages m "
        "WHERE (m.sender_id, m.recipient_id) IN ((a.id, b.id), (b.id, a.id))) ORDER BY a.id, b.id LIMIT 1"
    ).fetchone() or (0, 0)
    gone_user = 150
    # 1. Writes while the triggers were off: two upvotes, and a message between two strangers.
    conn.execute("ALTER TABLE project_upvotes DISABLE TRIGGER USER")
    conn.execute("INSERT INTO project_upvotes (user_id, project_id) VALUES (%s, %s), (%s, %s)", (voter, p1, voter, p2))
    conn.execute("ALTER TABLE project_upvotes ENABLE TRIGGER USER")
    conn.execute("ALTER TABLE messages DISABLE TRIGGER USER")
    conn.execute("INSERT INTO messages (sender_id, recipient_id, body) VALUES (%s, %s, 'psst')", (a, b))
    conn.execute("ALTER TABLE messages ENABLE TRIGGER USER")
    # 2. Counters edited by hand; a base row deleted; a row for a project that does not exist.
    conn.execute("UPDATE project_counters_base SET comment_count = comment_count + 5 WHERE project_id = %s", (p3,))
    conn.execute("DELETE FROM user_stats_base WHERE user_id = %s", (gone_user,))
    conn.execute("INSERT INTO project_counters_base (project_id, upvote_count) VALUES (987654, 3)")
    # 3. Redis sets corrupted: one with a member Postgres does not have, one missing a member.
    liker = one(conn, "SELECT user_id FROM project_upvotes GROUP BY user_id HAVING count(*) >= 2 ORDER BY 1 LIMIT 1")
    likes = sorted(r[0] for r in conn.execute("SELECT project_id FROM project_upvotes WHERE user_id = %s", (liker,)))
    fine = one(conn, "SELECT user_id FROM project_upvotes WHERE user_id <> %s ORDER BY 1 LIMIT 1", liker)
    fine_likes = [r[0] for r in conn.execute("SELECT project_id FROM project_upvotes WHERE user_id = %s", (fine,))]
    prefix = rsettings.redis_key_prefix
    rclient.sadd(set_key(prefix, liker), LOADED, *likes[1:], 399)  # misses likes[0]; 399 is extra
    rclient.sadd(set_key(prefix, fine), LOADED, *fine_likes)  # a correct set: not drift
    if 399 in likes:
        pytest.skip("the seed gave the liker project 399 already")

    report = reconcile(rsettings)

    assert report.status == "finished"
    assert found(report, "project_counters") == {"different": [p1, p2, p3], "extra": [987654]}
    dashboard_users = sorted({voter, owner[p1], owner[p2], owner[p3], b})  # b: an unread message
    assert found(report, "user_dashboard_stats") == {"different": sorted(set(dashboard_users) - {gone_user}),
                                                     "missing": [gone_user]}  # fmt: skip
    assert found(report, "intro_request_stats") == {"missing": [gone_user]}
    assert found(report, "message_conversations_denorm") == {"missing": sorted([[a, b], [b, a]])}
    # The feed and each chain's projects show the two upvotes' counts: their rows differ from the truth.
    assert found(report, "mv_feed_projects") == {"different": [p1, p2]}
    in_chains = sorted([list(r) for r in conn.execute(
        "SELECT project_id, chain_id FROM chain_projects WHERE project_id IN (%s, %s)", (p1, p2))])  # fmt: skip
    assert found(report, "mv_chain_projects") == ({"different": in_chains} if in_chains else {})
    assert found(report, "upvote_sets") == {"different": [liker], "missing": [[liker, likes[0]]],
                                                  "extra": [[liker, 399]]}  # fmt: skip
    # The owners' places on the leaderboard, and the projects' search documents where the vote moved
    # their popularity to the next step.
    owners = sorted({owner[p1], owner[p2]})
    assert found(report, "mv_leaderboard_users") == {"different": owners}
    moved = [[p, "project"] for p in (p1, p2) if one(
        conn, "SELECT search_popularity(count(*)) <> search_popularity(count(*) - 1) FROM project_upvotes "
              "WHERE project_id = %s", p)]  # fmt: skip
    assert found(report, "mv_search_documents") == ({"different": moved} if moved else {})
    assert report.drift_rows == (
        4 + len(set(dashboard_users) - {gone_user}) + 1 + 1 + 2 + 3 + 2 + len(in_chains) + len(owners) + len(moved)
    )

    # Repair, then a second run finds nothing, and the models equal the truth.
    repaired = reconcile(rsettings, repair=True)
    derived = (
        "user_dashboard_stats",
        "mv_feed_projects",
        "mv_chain_projects",
        "mv_leaderboard_users",
        "mv_search_documents",
    )
    for model in report.models:
        if model not in derived:
            assert found(repaired, model) == found(report, model)
    # The owners' received counts are sums of project counters, and the feed's rows follow them: the
    # counters' repair comes first, and what follows from it is pending for the next fold.
    assert set(found(repaired, "user_dashboard_stats")["different"]) == {voter, b}
    # The rows that follow the repaired counters wait for the next fold: not compared.
    assert found(repaired, "mv_feed_projects") == found(repaired, "mv_leaderboard_users") == {}
    assert found(repaired, "mv_search_documents") == {}
    assert all(f.unrepaired == 0 for f in repaired.models.values())
    assert repaired.models["project_counters"].repaired == 4
    assert reconcile(rsettings).drift_rows == 0
    settle(conn)
    assert drifted(conn) == {}
    assert not rclient.exists(set_key(prefix, liker)) and rclient.exists(set_key(prefix, fine))


def test_a_dry_run_changes_nothing(seeded_url: str, conn: Connection, rsettings: Settings) -> None:
    conn.execute("UPDATE project_counters_base SET upvote_count = upvote_count + 1 WHERE project_id = 5")
    before = conn.execute("SELECT count(*) FROM project_counter_deltas").fetchone()
    assert reconcile(rsettings).drift_rows == 2  # the counter, and its owner's received upvotes
    assert reconcile(rsettings).drift_rows == 2
    assert conn.execute("SELECT count(*) FROM project_counter_deltas").fetchone() == before


def test_a_counter_edited_by_hand_is_repaired_and_its_owners_total_stays_right(
    seeded_url: str, conn: Connection, rsettings: Settings
) -> None:
    """The user leaderboard adds folded votes to the owners' totals, and a counter's repair folds as a
    correction: added to a total that was right, it would make it wrong. The repair marks the owner,
    whose total is summed again from the repaired counters."""
    settle(conn)
    conn.execute("UPDATE project_counters_base SET upvote_count = upvote_count + 3 WHERE project_id = 5")
    assert found(reconcile(rsettings, repair=True), "project_counters") == {"different": [5]}
    settle(conn)
    assert drifted(conn) == {}


def test_repair_under_concurrent_writers_loses_no_write(
    database_url: str, conn: Connection, settings: Settings
) -> None:
    """Writers and a folder run while the reconciler repairs drift on the very rows they write."""
    workload.reset(database_url)
    # Drift on every small id the writers use.
    conn.execute("UPDATE project_counters_base SET upvote_count = upvote_count + 7, comment_count = comment_count - 2")
    conn.execute("UPDATE user_stats_base SET upvotes_given = upvotes_given + 3, unread_messages = unread_messages + 1")
    conn.execute("UPDATE conversation_base SET message_count = message_count + 4, last_message_id = NULL")
    assert drifted(conn) != {}

    rng = random.Random(7)
    # No structural writer: its deletes would drop drifted rows, and the drift with them.
    programs = [workload.random_program(rng, 300, structural=False) for _ in range(3)]
    stop = threading.Event()

    def keep_folding() -> None:
        with psycopg.connect(database_url, autocommit=True) as folder:
            while not stop.is_set():
                fold(folder)
                time.sleep(0.01)

    writers = threading.Thread(target=lambda: workload.run_concurrently(database_url, programs))
    folder = threading.Thread(target=keep_folding)
    writers.start()
    folder.start()
    # Batches of one id, repeated while the writers run, so repairs and writes interleave. Runs
    # follow each other at once: each must find the previous one's lock released.
    rsettings = settings.model_copy(update={"reconciler_batch_size": 1})
    runs, during, repaired = 0, 0, 0
    try:
        while writers.is_alive() or runs < 2:
            during += writers.is_alive()
            report = reconcile(rsettings, repair=True)
            repaired += sum(f.repaired for f in report.models.values())
            runs += 1
    finally:  # a failed run must not leave the threads writing into the next test's teardown
        writers.join()
        stop.set()
        folder.join()
    assert during >= 1 and repaired >= 10

    settle(conn)
    assert drifted(conn) == {}
    assert reconcile(settings).drift_rows == 0


def test_two_runs_never_overlap(seeded_url: str, rsettings: Settings) -> None:
    env = cli_env(DATABASE_URL=seeded_url, REDIS_URL=TEST_REDIS_URL, REDIS_KEY_PREFIX=rsettings.redis_key_prefix)
    with psycopg.connect(seeded_url, autocommit=True) as holder:
        holder.execute(query("reconcile_lock"))
        started = time.monotonic()
        busy = run_denorm(["reconcile", "--repair"], env=env)
        assert busy.returncode == 3 and time.monotonic() - started < 30
        summary = json.loads(busy.stdout.strip().splitlines()[-1])
        assert summary["status"] == "busy" and "another reconciler" in summary["reason"]
    done = run_denorm(["reconcile"], env=env)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["status"] == "finished" and summary["mode"] == "dry-run" and summary["drift_rows"] == 0


def test_a_run_that_cannot_finish_exits_non_zero_and_is_recorded(seeded_url: str, conn: Connection,
                                                                  rsettings: Settings) -> None:  # fmt: skip
    env = cli_env(DATABASE_URL=seeded_url, REDIS_URL=TEST_REDIS_URL, RECONCILER_STATEMENT_TIMEOUT_MS="500")
    # A table lock held elsewhere stalls the first comparison past the statement timeout, while the
    # lock, the run record and its failure record go through: the run fails where it compares.
    with psycopg.connect(seeded_url) as holder:
        holder.execute("LOCK TABLE project_counter_deltas IN ACCESS EXCLUSIVE MODE")
        failed = run_denorm(["reconcile"], env=env)
        holder.rollback()
    assert failed.returncode == 1, failed.stdout + failed.stderr
    summary = json.loads(failed.stdout.strip().splitlines()[-1])
    assert summary["status"] == "failed" and "statement timeout" in summary["reason"]
    row = conn.execute("SELECT status, error, finished_at IS NOT NULL FROM reconcile_runs ORDER BY id DESC").fetchall()
    assert len(row) == 1 and row[0][0] == "failed" and "statement timeout" in row[0][1] and row[0][2]
    # The failed run released its lock: the next one runs.
    assert run_denorm(["reconcile"], env=env).returncode == 0


def test_the_reconciler_lock_is_its_own(seeded_url: str, conn: Connection) -> None:
    """While a run holds its lock, a refresher still collects requests (they once shared a key)."""
    (own,) = {int(k) for k in re.findall(r"advisory_\w*lock\((\d+)\)", queries()["reconcile_lock"])}
    others = "\n".join(p.read_text() for p in sql_files() if p.name != "reconcile_runs.sql")
    sql_keys = {int(k) for k in re.findall(r"advisory_\w*lock\((\d+)\)", others)}
    assert sql_keys and own not in sql_keys | {MIGRATION_LOCK_KEY}
    with psycopg.connect(seeded_url, autocommit=True) as holder:
        holder.execute(query("reconcile_lock"))
        conn.execute("INSERT INTO mv_refresh_requests (source_table) VALUES ('projects')")
        assert one(conn, "SELECT mv_collect_requests()") >= 1
        assert fold(conn) is not None


def test_runs_are_recorded_and_drift_two_nights_running_shows_in_the_metrics(
    seeded_url: str, conn: Connection, rsettings: Settings
) -> None:
    conn.execute("UPDATE project_counters_base SET upvote_count = upvote_count + 1 WHERE project_id = 9")
    reconcile(rsettings)
    reconcile(rsettings)
    rows = conn.execute("SELECT mode, status, drift FROM reconcile_runs ORDER BY id").fetchall()
    assert [(m, s) for m, s, _ in rows] == [("dry-run", "finished")] * 2
    assert rows[-1][2]["project_counters"] == {"missing": 0, "extra": 0, "different": 1}
    metrics = {m.name: m for m in ReconcileCollector(seeded_url).collect()}
    assert metrics["denorm_reconcile_drift_streak"].samples[0].value == 2
    drift = {(s.labels["model"], s.labels["kind"]): s.value for s in metrics["denorm_reconcile_drift_rows"].samples}
    assert drift[("project_counters", "different")] == 1
    reconcile(rsettings, repair=True)  # finds it (a third night with drift), repairs it
    reconcile(rsettings)  # finds none: the streak ends
    metrics = {m.name: m for m in ReconcileCollector(seeded_url).collect()}
    assert metrics["denorm_reconcile_drift_streak"].samples[0].value == 0
    assert streak([{"m": {"different": 1}}, {"m": {"different": 0}}, {"m": {"extra": 2}}]) == 1


def test_the_refresher_serves_the_runs_to_prometheus(seeded_url: str, conn: Connection, rsettings: Settings) -> None:
    """The CronJob's pod is gone by the next scrape: the long-running refresher serves its runs."""
    conn.execute("UPDATE project_counters_base SET upvote_count = upvote_count + 1 WHERE project_id = 9")
    reconcile(rsettings)
    reconcile(rsettings)
    port = free_port()
    env = cli_env(DATABASE_URL=seeded_url, REFRESHER_METRICS_PORT=str(port), LOG_FORMAT="json")
    proc = subprocess.Popen([*DENORM, "refresher"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, text = time.monotonic() + 20, ""
        while time.monotonic() < deadline and "denorm_reconcile_drift_streak" not in text:
            with contextlib.suppress(OSError):
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    assert "denorm_reconcile_drift_streak 2.0" in text
    assert 'denorm_reconcile_drift_rows{kind="different",model="project_counters"} 1.0' in text
    assert "denorm_reconcile_last_run_failed 0.0" in text and "denorm_reconcile_last_finished_timestamp" in text


def test_the_alert_rules_name_only_metrics_the_refresher_serves(seeded_url: str, rsettings: Settings) -> None:
    """deploy/monitoring/alerts.yaml: drift two runs running, failed or missing runs, blind metrics."""
    reconcile(rsettings)
    served = {m.name for m in ReconcileCollector(seeded_url).collect()}
    (group,) = yaml.safe_load((REPO / "deploy" / "monitoring" / "alerts.yaml").read_text())["groups"]
    rules = {rule["alert"]: rule for rule in group["rules"]}
    for name, rule in rules.items():
        named = set(re.findall(r"denorm_\w+", rule["expr"]))
        assert named and named <= served, (name, named - served)
    assert rules["DenormReadModelDriftTwoRunsRunning"]["expr"] == "max(denorm_reconcile_drift_streak) >= 2"
    assert "absent(denorm_reconcile_drift_streak)" in rules["DenormReconcileMetricsAbsent"]["expr"]


def test_a_run_pushes_its_drift_to_a_pushgateway(seeded_url: str, conn: Connection, rsettings: Settings) -> None:
    received: list[tuple[str, str, bytes]] = []

    class Gateway(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.command, self.path, body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    conn.execute("UPDATE project_counters_base SET upvote_count = upvote_count + 1 WHERE project_id = 9")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = cli_env(DATABASE_URL=seeded_url, REDIS_URL=TEST_REDIS_URL, REDIS_KEY_PREFIX=rsettings.redis_key_prefix,
                      RECONCILER_PUSHGATEWAY_URL=f"127.0.0.1:{server.server_address[1]}")  # fmt: skip
        done = run_denorm(["reconcile"], env=env)
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 0, done.stderr
    [(method, path, body)] = received
    assert (method, path) == ("PUT", "/metrics/job/denorm-reconciler")
    assert b'denorm_reconcile_drift_rows{kind="different",model="project_counters"} 1.0' in body
    # A Pushgateway that is down does not fail the run.
    env["RECONCILER_PUSHGATEWAY_URL"] = f"127.0.0.1:{free_port()}"
    assert run_denorm(["reconcile"], env=env).returncode == 0


def test_a_view_past_its_staleness_bound_is_reported_and_refreshed(
    seeded_url: str, conn: Connection, rsettings: Settings
) -> None:
    conn.execute(
        "UPDATE mv_refresh_queue SET status = 'pending', refresh_requested_at = now() - interval '1 hour', "
        "first_requested_at = now() - interval '1 hour', generation = generation + 1, next_attempt_at = now() "
        "WHERE view_name = 'mv_leaderboard_projects'"
    )
    report = reconcile(rsettings)
    assert list(report.stale_views) == ["mv_leaderboard_projects"] and report.refreshed_views == []
    assert "past its 5 s bound: reported" in report.models["mv_leaderboard_projects"].how
    report = reconcile(rsettings, repair=True)
    assert "mv_leaderboard_projects" in report.refreshed_views
    assert one(conn, "SELECT status FROM mv_refresh_queue WHERE view_name = 'mv_leaderboard_projects'") == "idle"


def test_a_dead_redis_is_reported_and_the_run_still_finishes(seeded_url: str, rsettings: Settings) -> None:
    dead = rsettings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    report = reconcile(dead)
    assert report.status == "finished" and report.redis.startswith("unreachable")


# --- drift injected by hand into every read model, one at a time and all at once ----------------
#
# Each injection breaks one read model the way a bug, a hand edit or a writer that bypassed the
# triggers would, and says exactly what every read model must then report. Writes in
# session_replication_role = replica fire no trigger at all (as a pg_restore or a logical replica
# applies them): the read models that follow those tables drift together.

Expected = dict[str, dict[str, list[Any]]]


def first(conn: Connection, query: str, *args: Any) -> tuple[Any, ...]:
    row = conn.execute(query.encode(), args).fetchone()
    assert row is not None
    return tuple(row)


def quietly(conn: Connection, statement: str, *args: Any) -> None:
    """A write that fires no trigger."""
    with conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute(statement.encode(), args)


def inject_project_counters(conn: Connection) -> Expected:
    conn.execute("INSERT INTO project_counters_base (project_id, upvote_count) VALUES (987654, 3)")
    return {"project_counters": {"extra": [987654]}}


def inject_user_dashboard_stats(conn: Connection) -> Expected:
    conn.execute("UPDATE user_stats_base SET upvotes_given = upvotes_given + 2 WHERE user_id = 7")
    return {"user_dashboard_stats": {"different": [7]}}


def inject_intro_request_stats(conn: Connection) -> Expected:
    conn.execute("UPDATE user_stats_base SET sent_declined = sent_declined + 1 WHERE user_id = 8")
    return {"intro_request_stats": {"different": [8]}}


def inject_message_conversations_denorm(conn: Connection) -> Expected:
    user, other = first(conn, "SELECT user_id, other_user_id FROM conversation_base ORDER BY 1, 2 LIMIT 1")
    conn.execute("UPDATE conversation_base SET message_count = message_count + 3 "
                 "WHERE user_id = %s AND other_user_id = %s", (user, other))  # fmt: skip
    return {"message_conversations_denorm": {"different": [[user, other]]}}


def inject_mv_feed_projects(conn: Connection) -> Expected:
    # The issue's first: project 10 on top of ?sort=trending until some later write touches it.
    conn.execute("UPDATE mv_feed_projects SET trending_score = 99999 WHERE id = 10")
    return {"mv_feed_projects": {"different": [10]}}


def inject_mv_chain_projects(conn: Connection) -> Expected:
    # The issue's second: a project pushed up its chain's list.
    chain, project = first(
        conn, "SELECT chain_id, project_id FROM mv_chain_projects ORDER BY upvote_count, chain_id, project_id LIMIT 1"
    )
    conn.execute("UPDATE mv_chain_projects SET upvote_count = upvote_count + 1000 "
                 "WHERE chain_id = %s AND project_id = %s", (chain, project))  # fmt: skip
    return {"mv_chain_projects": {"different": [[project, chain]]}}


def inject_mv_leaderboard_projects(conn: Connection) -> Expected:
    # A feed row edited by hand, and the leaderboard (idle: nothing asked for a refresh) no longer
    # equals its definition, which reads the feed.
    conn.execute("UPDATE mv_feed_projects SET title = 'Edited by hand' WHERE id = 20")
    return {"mv_feed_projects": {"different": [20]}, "mv_leaderboard_projects": {"different": [20]}}


def inject_mv_leaderboard_users(conn: Connection) -> Expected:
    user = one(conn, "SELECT user_id FROM mv_leaderboard_users WHERE display_name <> upper(display_name) "
                     "ORDER BY upvotes_received DESC, user_id DESC LIMIT 1")  # fmt: skip
    quietly(conn, "UPDATE users SET display_name = upper(display_name) WHERE id = %s", user)
    # A row edited by hand, and one deleted.
    edited, deleted = (r[0] for r in conn.execute(
        "SELECT user_id FROM mv_leaderboard_users WHERE user_id <> %s ORDER BY user_id LIMIT 2", (user,)))  # fmt: skip
    conn.execute("UPDATE mv_leaderboard_users SET upvotes_received = upvotes_received + 5 WHERE user_id = %s",
                 (edited,))  # fmt: skip
    conn.execute("DELETE FROM mv_leaderboard_users WHERE user_id = %s", (deleted,))
    # The user's search document shows the name too (its words, lower-cased, do not change).
    return {"mv_leaderboard_users": {"different": [user, edited], "missing": [deleted]},
            "mv_search_documents": {"different": [[user, "user"]]}}  # fmt: skip


def popularity_moved(conn: Connection, table: str, column: str, key: int) -> bool:
    """Whether one more row moved this count to the next step of search_popularity()."""
    return bool(one(conn, f"SELECT search_popularity(count(*)) <> search_popularity(count(*) - 1) FROM {table} "
                          f"WHERE {column} = %s", key))  # fmt: skip


def inject_mv_chain_directory(conn: Connection) -> Expected:
    chain, user = first(
        conn,
        "SELECT c.id, u.id FROM chains c, users u WHERE NOT EXISTS (SELECT 1 FROM chain_members m "
        "WHERE m.chain_id = c.id AND m.user_id = u.id) AND u.id > 100 ORDER BY 1, 2 LIMIT 1",
    )
    quietly(conn, "INSERT INTO chain_members (chain_id, user_id) VALUES (%s, %s)", chain, user)
    # A chain that is not in the directory, and a row for a chain that does not exist.
    other = one(conn, "SELECT max(id) FROM chains")
    conn.execute("DELETE FROM mv_chain_directory WHERE chain_id = %s", (other,))
    conn.execute("INSERT INTO mv_chain_directory (chain_id, slug, name, description, owner_id, owner_username, "
                 "project_count, member_count, thread_count, last_activity_at, created_at) "
                 "VALUES (987654, 'ghost', 'Ghost', '', 1, 'nobody', 0, 0, 0, now(), now())")  # fmt: skip
    expected: Expected = {"mv_chain_directory": {"different": [chain], "missing": [other], "extra": [987654]},
                          "user_dashboard_stats": {"different": [user]}}  # fmt: skip
    if popularity_moved(conn, "chain_members", "chain_id", chain):  # its search document shows its members
        expected["mv_search_documents"] = {"different": [[chain, "chain"]]}
    return expected


def inject_mv_forum_threads(conn: Connection) -> Expected:
    thread, edited = first(conn, "SELECT min(id), max(id) FROM forum_threads")
    quietly(conn, "INSERT INTO forum_posts (thread_id, author_id, body) VALUES (%s, 1, 'quiet')", thread)
    conn.execute("UPDATE mv_forum_threads SET title = 'Edited by hand' WHERE thread_id = %s", (edited,))
    return {"mv_forum_threads": {"different": [thread, edited]}}


def inject_mv_search_documents(conn: Connection) -> Expected:
    quietly(conn, "UPDATE projects SET description = description || ' zebra' WHERE id = 30")
    conn.execute("DELETE FROM mv_search_documents WHERE doc_id = 31 AND doc_type = 'user'")
    conn.execute("UPDATE mv_search_documents SET popularity = popularity + 3 WHERE doc_id = 2 AND doc_type = 'chain'")
    return {"mv_search_documents": {"different": [[2, "chain"], [30, "project"]], "missing": [[31, "user"]]}}


def inject_mv_search_words(conn: Connection) -> Expected:
    # A count edited by hand, a word deleted, and one no document has.
    counted, deleted = (r[0] for r in conn.execute("SELECT word FROM mv_search_words ORDER BY word LIMIT 2"))
    conn.execute("UPDATE mv_search_words SET ndoc = ndoc + 1 WHERE word = %s", (counted,))
    conn.execute("DELETE FROM mv_search_words WHERE word = %s", (deleted,))
    conn.execute("INSERT INTO mv_search_words (word, ndoc) VALUES ('zebraquagga', 2)")
    return {"mv_search_words": {"different": [counted], "missing": [deleted], "extra": ["zebraquagga"]}}


INJECTIONS = {
    name.removeprefix("inject_"): function
    for name, function in list(globals().items())
    if name.startswith("inject_") and callable(function)
}


def inject_upvote_sets(conn: Connection, client: redis.Redis, prefix: str) -> Expected:
    user = one(conn, "SELECT user_id FROM project_upvotes GROUP BY user_id HAVING NOT bool_or(project_id = 399) "
                     "ORDER BY 1 LIMIT 1")  # fmt: skip
    likes = [r[0] for r in conn.execute("SELECT project_id FROM project_upvotes WHERE user_id = %s", (user,))]
    client.sadd(set_key(prefix, user), LOADED, *likes, 399)
    return {"upvote_sets": {"different": [user], "extra": [[user, 399]]}}


def merged(*expectations: Expected) -> Expected:
    out: Expected = {}
    for expected in expectations:
        for model, kinds in expected.items():
            for kind, keys in kinds.items():
                out.setdefault(model, {}).setdefault(kind, []).extend(keys)
    return {m: {k: sorted(v) for k, v in kinds.items()} for m, kinds in out.items()}


def assert_found_exactly(report: Report, expected: Expected) -> None:
    assert {m: found(report, m) for m in report.models if found(report, m)} == expected


def assert_repaired(conn: Connection, rsettings: Settings, expected: Expected) -> None:
    report = reconcile(rsettings, repair=True)
    assert_found_exactly(report, expected)
    for model in expected:
        finding = report.models[model]
        # A Redis set is repaired whole: its missing and extra members are counted, and the set.
        whole = finding.counts["different"] if model == "upvote_sets" else finding.drift
        assert (finding.repaired, finding.unrepaired) == (whole, 0), model
    assert reconcile(rsettings).drift_rows == 0
    settle(conn)
    assert drifted(conn) == {}


def test_every_read_model_is_covered_by_an_injection() -> None:
    assert {m.name for m in REGISTRY} == set(INJECTIONS) | {"upvote_sets"}


@pytest.mark.parametrize("model", sorted(INJECTIONS))
def test_drift_injected_into_one_read_model_is_found_exactly_and_repaired(
    seeded_url: str, conn: Connection, rsettings: Settings, model: str
) -> None:
    expected = merged(INJECTIONS[model](conn))
    assert model in expected
    assert_found_exactly(reconcile(rsettings), expected)
    assert_found_exactly(reconcile(rsettings), expected)  # a dry run changes nothing
    assert_repaired(conn, rsettings, expected)


def test_drift_in_the_redis_sets_is_found_exactly_and_repaired(
    seeded_url: str, conn: Connection, rsettings: Settings, rclient: redis.Redis
) -> None:
    expected = merged(inject_upvote_sets(conn, rclient, rsettings.redis_key_prefix))
    assert_found_exactly(reconcile(rsettings), expected)
    assert_repaired(conn, rsettings, expected)


def test_drift_injected_into_every_read_model_at_once_is_found_exactly_and_repaired(
    seeded_url: str, conn: Connection, rsettings: Settings, rclient: redis.Redis
) -> None:
    expected = merged(*(injection(conn) for injection in INJECTIONS.values()),
                      inject_upvote_sets(conn, rclient, rsettings.redis_key_prefix))  # fmt: skip
    assert set(expected) == {m.name for m in REGISTRY}
    assert_found_exactly(reconcile(rsettings), expected)
    assert_repaired(conn, rsettings, expected)


def test_the_cli_finds_and_repairs_the_issues_two_hand_edits(seeded_url: str, conn: Connection,
                                                              rsettings: Settings) -> None:  # fmt: skip
    expected = merged(inject_mv_feed_projects(conn), inject_mv_chain_projects(conn))
    env = cli_env(DATABASE_URL=seeded_url, REDIS_URL=TEST_REDIS_URL, REDIS_KEY_PREFIX=rsettings.redis_key_prefix)
    for mode, repaired in (("--dry-run", 0), ("--repair", 2)):
        done = run_denorm(["reconcile", mode], env=env)
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        assert summary["drift_rows"] == 2
        assert {m: s["different"] for m, s in summary["models"].items() if s["different"]} == {
            "mv_feed_projects": 1, "mv_chain_projects": 1}  # fmt: skip
        assert sum(s["repaired"] for s in summary["models"].values()) == repaired
    assert reconcile(rsettings).drift_rows == 0
    assert expected
