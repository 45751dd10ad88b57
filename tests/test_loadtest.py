"""The Locust suite and `denorm loadtest`: the gates and the histogram arithmetic on plain data, then short
real runs (tiny dataset, a master and two workers) through the command people run, so the suite cannot rot.
"""

from __future__ import annotations

import csv
import fnmatch
import itertools
import json
import math
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from loadtest import calibrate, gates, histogram
from loadtest.catalog import Catalog, parse_id_ranges
from loadtest.histogram import Histogram, SeriesKey
from loadtest.report import StepResult
from loadtest.run import _positive_ints, _seconds, build_parser, largest_passing, start
from tests.conftest import TEST_REDIS_URL, AdminConnection, delete_keys_with_prefix, scratch_database
from tests.support import run_denorm

INF = math.inf

# --- the histogram ---------------------------------------------------------------------------

# 100 observations: 10 <= 1 ms, 40 in (1, 2.5], 40 in (2.5, 5], 10 in (5, 10].
H = Histogram(((0.001, 10), (0.0025, 50), (0.005, 90), (0.01, 100), (INF, 100)))


def test_quantile_interpolates_within_the_bucket_like_prometheus() -> None:
    assert H.quantile(0.5) == pytest.approx(0.0025)
    assert H.quantile(0.95) == pytest.approx(0.0075)  # halfway through (5, 10] ms
    assert H.quantile(0.05) == pytest.approx(0.0005)  # the first bucket starts at 0
    assert Histogram(((0.001, 0), (INF, 10))).quantile(0.95) == pytest.approx(0.001)  # +Inf: highest finite bound
    assert Histogram(((0.001, 0), (INF, 0))).quantile(0.95) is None
    assert Histogram(()).quantile(0.5) is None


def test_the_share_within_a_bound_is_exact_at_a_bucket_bound_only() -> None:
    assert H.fraction_at_most(0.005) == (0.9, True)
    share, exact = H.fraction_at_most(0.0075) or (0.0, True)
    assert share == pytest.approx(0.95) and not exact
    assert H.fraction_at_most(60.0) == (1.0, False)


def test_subtraction_and_validity() -> None:
    before = Histogram(((0.001, 4), (0.0025, 10), (0.005, 10), (0.01, 10), (INF, 10)))
    delta = H - before
    assert delta.buckets == ((0.001, 6), (0.0025, 40), (0.005, 80), (0.01, 90), (INF, 90))
    assert delta.is_valid()
    assert not (before - H).is_valid()
    assert (Histogram(()) + H) == H
    with pytest.raises(ValueError, match="different buckets"):
        _ = H + Histogram(((1.0, 1), (INF, 1)))


def exposition(upvotes: list[int], healthz: int, scrapes: int) -> str:
    """The API's /metrics text with one PUT upvote series (counts per bucket, not cumulative)."""
    bounds = ["0.001", "0.0025", "0.005", "0.01", "+Inf"]
    lines = ["# HELP denorm_api_request_duration_seconds Request latency by route",
             "# TYPE denorm_api_request_duration_seconds histogram"]  # fmt: skip
    series = [
        ('method="PUT",route="/api/projects/{project_id}/upvote",status="200"', upvotes),
        ('method="GET",route="/healthz",status="200"', [healthz, 0, 0, 0, 0]),
        ('method="GET",route="/metrics",status="200"', [scrapes, 0, 0, 0, 0]),
    ]
    for labels, counts in series:
        total = 0
        for le, n in zip(bounds, counts, strict=True):
            total += n
            lines.append(f'denorm_api_request_duration_seconds_bucket{{{labels},le="{le}"}} {total}')
        lines.append(f"denorm_api_request_duration_seconds_count{{{labels}}} {total}")
        lines.append(f"denorm_api_request_duration_seconds_sum{{{labels}}} 0.1")
    lines.append("# HELP other_total another metric\n# TYPE other_total counter\nother_total 3")
    return "\n".join(lines) + "\n"


def test_parse_reads_every_series_of_the_histogram() -> None:
    series = histogram.parse(exposition([1, 2, 3, 4, 0], healthz=5, scrapes=1))
    upvote = series[("PUT", "/api/projects/{project_id}/upvote", "200")]
    assert upvote.buckets == ((0.001, 1), (0.0025, 3), (0.005, 6), (0.01, 10), (INF, 10))
    assert set(series) == {
        ("PUT", "/api/projects/{project_id}/upvote", "200"),
        ("GET", "/healthz", "200"),
        ("GET", "/metrics", "200"),
    }


def test_a_snapshot_adds_up_distinct_processes_and_ignores_scrapes(monkeypatch: pytest.MonkeyPatch) -> None:
    # Two API processes answer in turn; the same process seen again (only its /metrics count moved)
    # is not counted twice.
    answers = iter([
        exposition([1, 0, 0, 0, 0], healthz=2, scrapes=1),
        exposition([1, 0, 0, 0, 0], healthz=2, scrapes=2),
        exposition([0, 3, 0, 0, 0], healthz=0, scrapes=1),
    ])  # fmt: skip
    monkeypatch.setattr(histogram, "scrape", lambda _url, _timeout=5.0: next(answers))
    snap = histogram.snapshot("http://api", processes=2)
    assert snap.processes_seen == 2
    assert snap.series[("PUT", "/api/projects/{project_id}/upvote", "200")].count == 4
    assert snap.series[("GET", "/healthz", "200")].count == 2


# --- the gates -------------------------------------------------------------------------------


def test_the_targets_file_holds_the_seeds_after_column() -> None:
    t = gates.load_targets()
    assert t.percentile == 0.95 and t.default_ms == 200
    assert t.client_target("GET /api/projects?sort=trending") == 120
    assert t.client_target("GET /api/projects?sort=newest&cursor=[cursor] (signed in)") == 120
    assert t.client_target("GET /api/leaderboard/projects") == 80
    assert t.client_target("GET /api/leaderboard/users") == 80
    assert t.client_target("GET /api/users/dashboard") == 50
    assert t.client_target("GET /api/chains") == 90
    assert t.client_target("GET /api/chains/[slug]") == 90
    assert t.client_target("GET /api/search?q=[query]") == 150
    # The pages a list links to (issue 18): the seed's sub-200 ms, each by a pattern of its own.
    for name in ("GET /api/projects/[id]", "GET /api/projects/[id]/comments?cursor=[cursor]", "GET /api/threads/[id]",
                 "GET /api/messages/conversations/[id]", "GET /api/intro-requests?box=sent"):  # fmt: skip
        assert t.client_target(name) == 200, name
        assert any(fnmatch.fnmatchcase(name, pattern) for pattern, _ in t.client), name
    # Everything else: under 200 ms, the upvote's round trip included; its 5 ms is server time.
    assert t.client_target("PUT /api/projects/[id]/upvote") == 200
    assert t.client_target("GET /api/messages/conversations") == 200
    assert dict(t.server) == {"* /api/projects/{project_id}/upvote": 5}


def targets() -> gates.Targets:
    return gates.Targets(
        0.95, 200.0, (("GET /api/projects?*", 120.0),), (("* /api/projects/{project_id}/upvote", 5.0),)
    )


def test_client_verdicts_judge_each_request_by_its_first_matching_target() -> None:
    rows = [
        gates.ClientRow("GET", "/api/projects?sort=trending", 100, 0, 119.0),
        gates.ClientRow("GET", "/api/projects?sort=newest", 100, 0, 121.0),
        gates.ClientRow("GET", "/api/messages/conversations", 100, 0, 150.0),  # default 200
        gates.ClientRow("POST", "/api/messages", 100, 1, 3.0),  # fast, but one failed
        gates.ClientRow("GET", "/api/chains?limit=100 (catalog)", 0, 0, None),  # only before the reset
    ]
    verdicts = {v.name: v for v in gates.client_verdicts(targets(), rows)}
    assert verdicts["GET /api/projects?sort=trending"].passed
    assert not verdicts["GET /api/projects?sort=newest"].passed
    assert verdicts["GET /api/messages/conversations"].passed
    assert verdicts["GET /api/messages/conversations"].target_ms == 200
    assert not verdicts["POST /api/messages"].passed and verdicts["POST /api/messages"].note == "1 failed"
    assert "GET /api/chains?limit=100 (catalog)" not in verdicts
    assert not gates.passed(verdicts.values())


def upvotes(within_5ms: int, total: int) -> dict[histogram.SeriesKey, Histogram]:
    hist = Histogram(((0.001, 0), (0.0025, 0), (0.005, within_5ms), (0.01, total), (INF, total)))
    return {("PUT", "/api/projects/{project_id}/upvote", "200"): hist,
            ("GET", "/healthz", "200"): Histogram(((0.001, 50), (INF, 50)))}  # fmt: skip


def test_server_verdicts_are_exact_at_a_bucket_bound() -> None:
    (held,) = gates.server_verdicts(targets(), upvotes(95, 100))
    assert held.passed and held.name == "PUT /api/projects/{project_id}/upvote" and held.requests == 100
    assert held.note.startswith("95.0% within 5 ms")
    (missed,) = gates.server_verdicts(targets(), upvotes(94, 100))
    assert not missed.passed


def test_a_server_target_that_cannot_be_checked_fails() -> None:
    (nothing,) = gates.server_verdicts(targets(), {})
    assert not nothing.passed and "not checked" in nothing.note
    key: SeriesKey = ("PUT", "/api/projects/{project_id}/upvote", "200")
    broken = {key: Histogram(((0.005, 3), (INF, 1)))}
    (inconsistent,) = gates.server_verdicts(targets(), broken)
    assert not inconsistent.passed and "inconsistent" in inconsistent.note


def test_any_failed_request_or_no_request_at_all_fails_the_run() -> None:
    assert gates.failure_verdict(1000, 0).passed
    assert not gates.failure_verdict(1000, 1).passed
    assert not gates.failure_verdict(0, 0).passed


def test_the_table_puts_failures_first() -> None:
    rows = [gates.ClientRow("GET", "/api/projects?sort=trending", 10, 0, 5.0),
            gates.ClientRow("GET", "/api/projects?sort=newest", 10, 0, 500.0)]  # fmt: skip
    verdicts = gates.client_verdicts(targets(), rows)
    lines = gates.format_table(verdicts, 0.95).splitlines()
    assert lines[0].split()[:5] == ["where", "request", "requests", "failed", "p95"]
    assert "newest" in lines[1] and "FAIL" in lines[1]
    assert "trending" in lines[2] and "pass" in lines[2]


# --- the catalog and the runner's arithmetic ---------------------------------------------------


def test_user_id_ranges() -> None:
    assert parse_id_ranges("1-3, 7") == [range(1, 4), range(7, 8)]
    for bad in ("", "0-5", "5-1", "a-b"):
        with pytest.raises(ValueError):
            parse_id_ranges(bad)
    catalog = Catalog("1-200")
    assert {catalog.user() for _ in range(2000)} <= set(range(1, 201))


def test_a_member_asks_another_member_online() -> None:
    catalog = Catalog("1-10")
    catalog.come_online(1)
    catalog.come_online(2)
    assert catalog.online_peer(1) == 2
    catalog.go_offline(2)
    assert catalog.online_peer(1) is None


def step(users: int, passed: bool) -> StepResult:
    return StepResult(users, 100, 0, 10.0, 1.0, 2.0, 3.0, passed, 0 if passed else 1)


def test_the_largest_passing_step_stops_at_the_first_failure() -> None:
    assert largest_passing([step(500, True), step(1000, True), step(2000, False), step(5000, True)]) == 1000
    assert largest_passing([step(500, False)]) is None
    assert largest_passing([]) is None


def test_command_line_values() -> None:
    assert _positive_ints("2000,500, 1000,500") == (500, 1000, 2000)
    assert _seconds("90") == 90 and _seconds("90s") == 90 and _seconds("2m") == 120
    for bad in ("0", "x", "5d"):
        with pytest.raises(Exception):  # noqa: B017 -- argparse's ArgumentTypeError
            _seconds(bad)
    assert build_parser().parse_args([]).generator_nice == 10
    assert build_parser().parse_args(["--generator-nice", "0"]).generator_nice == 0


def test_the_generator_starts_at_a_lower_cpu_priority(tmp_path: Path) -> None:
    """The runner's Locust processes yield the CPU to the system under test (docs/performance.md)."""
    said = tmp_path / "nice.log"
    code = "import os; print(os.nice(0), os.getpid())"
    proc = start("niceness", [sys.executable, "-c", code], dict(os.environ), said, 7)
    assert proc.wait(timeout=30) == 0
    niceness, pid = map(int, said.read_text().split())
    assert niceness == os.nice(0) + 7
    assert pid == proc.pid  # the process the CPU sampler counts is the generator itself


# --- short real runs ---------------------------------------------------------------------------

# Every route the suite drives, as Locust names them; each class's tasks must have reached the API.
READER_ROUTES = {
    ("GET", "/api/projects?sort=trending"),
    ("GET", "/api/projects?sort=newest"),
    ("GET", "/api/projects?sort=top-rated"),
    ("GET", "/api/projects?sort=trending&cursor=[cursor]"),
    ("GET", "/api/leaderboard/projects"),
    ("GET", "/api/leaderboard/users"),
    ("GET", "/api/chains"),
    ("GET", "/api/chains/[slug]"),
    ("GET", "/api/search?q=[query]"),
}
MEMBER_ROUTES = {
    ("GET", "/api/projects?sort=trending (signed in)"),
    ("GET", "/api/users/dashboard"),
    ("GET", "/api/messages/conversations"),
    ("PUT", "/api/projects/[id]/upvote"),
    ("DELETE", "/api/projects/[id]/upvote"),
    ("POST", "/api/projects/[id]/upvote"),
    ("POST", "/api/projects/[id]/comments"),
    ("POST", "/api/messages"),
    ("POST", "/api/messages/read"),
    ("POST", "/api/intro-requests"),
    ("POST", "/api/intro-requests/[id]/[decision]"),
}


@pytest.fixture(scope="module")
def loadtest_db(admin_conn: AdminConnection, template_database: str) -> Iterator[tuple[str, str]]:
    """One migrated database and Redis key prefix for this module's runs (the second reuses the seed)."""
    prefix = f"test:{uuid.uuid4().hex}:"
    with scratch_database(admin_conn, "loadtest", template_database) as url:
        yield url, prefix
    client = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        delete_keys_with_prefix(client, prefix)
    finally:
        client.close()


def loadtest(db: tuple[str, str], out: Path, targets_toml: str, *args: str) -> tuple[int, str]:
    targets_file = out.parent / f"{out.name}-targets.toml"
    targets_file.write_text(targets_toml, encoding="utf-8")
    url, prefix = db
    result = run_denorm(
        ["loadtest", "--database-url", url, "--redis-prefix", prefix, "--scale", "tiny", "--targets",
         str(targets_file), "--out", str(out), *args],
        timeout=240,
    )  # fmt: skip
    return result.returncode, result.stdout + result.stderr


def late_restarts(step_dir: Path, users: int, after_s: int = 3) -> int:
    """How often Locust's running total fell (its stats restarted) `after_s` or more after every
    user ran: not the restart at the end of spawning, which may fall just after the first row."""
    with (step_dir / "locust_stats_history.csv").open(newline="") as f:
        rows = [(int(r["Timestamp"]), int(r["Total Request Count"])) for r in csv.DictReader(f)
                if r["Name"] == "Aggregated" and int(r["User Count"]) == users]  # fmt: skip
    return sum(1 for (_, a), (t, b) in itertools.pairwise(rows) if b < a and t >= rows[0][0] + after_s)


def stats_rows(step_dir: Path) -> list[dict[str, str]]:
    with (step_dir / "locust_stats.csv").open(newline="") as f:
        return [r for r in csv.DictReader(f) if r["Name"] != "Aggregated"]


@pytest.mark.loadrun
def test_a_short_run_drives_every_route_and_writes_every_result(loadtest_db: tuple[str, str], tmp_path: Path) -> None:
    # Targets no healthy run can miss: this run checks the suite and the runner, not this machine's speed.
    lenient = 'default_ms = 10000\n[server]\n"* /api/projects/{project_id}/upvote" = 2500\n'
    out = tmp_path / "run"
    code, output = loadtest(loadtest_db, out, lenient, "--users", "120", "--spawn-rate", "60", "--run-time", "20",
                            "--warm-up", "10", "--workers", "2", "--think-scale", "0.1")  # fmt: skip
    assert code == 0, output[-5000:]
    # The warm-up: with every user running, the stats restarted once more, 10 s after spawning (the
    # history's first row at full load may come up to a worker report, 3 s, after spawning ends).
    assert late_restarts(out / "users-00120", 120) >= 1

    step_dir = out / "users-00120"
    rows = stats_rows(step_dir)
    made = {(r["Type"], r["Name"]) for r in rows if int(r["Request Count"]) > 0}
    assert made >= READER_ROUTES, READER_ROUTES - made
    assert made >= MEMBER_ROUTES, MEMBER_ROUTES - made
    assert all(int(r["Failure Count"]) == 0 for r in rows), [r for r in rows if r["Failure Count"] != "0"]
    assert sum(int(r["Request Count"]) for r in rows) > 1000

    verdicts = json.loads((step_dir / "gates.json").read_text())
    assert verdicts["passed"]
    server = [v for v in verdicts["verdicts"] if v["check"] == "server"]
    assert {v["name"] for v in server} >= {"PUT /api/projects/{project_id}/upvote"}
    assert all(v["requests"] > 0 for v in server)
    assert "every request" in output and "gates hold" in output

    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "locust" in (step_dir / "report.html").read_text().lower()
    assert (step_dir / "locust_stats_history.csv").stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["largest_passing_users"] == 120
    assert summary["steps"][0]["cpu_cores"]["api"] > 0
    # Where the time went, beside the client's percentiles (loadtest/attribution.py).
    where = summary["steps"][0]["attribution"]
    assert where["server"]["PUT /api/projects/{project_id}/upvote"]["count"] > 0
    # Every phase of an upvote's server time, the rate limit's round trip to Redis apart.
    assert set(where["upvote_phases"]) == {"rate_limit", "front", "connection", "change", "write_through"}
    assert where["server"]["GET /api/projects"]["p95_ms"] is not None
    assert where["event_loop_lag"]["count"] > 0 and where["gc"]["over_25ms"] is not None
    assert where["postgres"]["commits_per_s"] > 0 and isinstance(where["postgres"]["autovacuum_runs"], int)
    shares = [x["share"] for x in where["postgres"]["statements"].values()]
    assert sum(shares) <= 1.0 + 0.0005 * len(shares)  # each rounded to 0.001
    clients = where["postgres"]["cpu_by_client"]
    assert clients["denorm-api-pipe"] > 0 and "postgres CPU by client" in (out / "summary.txt").read_text()
    wal = where["postgres"]["wal_by_relation"]
    assert wal and "note" not in wal and all(x["mib"] >= x["fpi_mib"] for x in wal.values())
    text = (out / "summary.txt").read_text()
    assert "where the time went" in text and "event-loop lag" in text and "locust workers" in text
    # Memory and the disk: the database prewarmed, so (nearly) every block came from shared_buffers.
    assert where["postgres"]["shared_buffers_hit_pct"] > 90 and where["postgres"]["blocks_read_per_s"] >= 0
    assert where["disk"]["writes_per_s"] > 0 and len(where["disk"]["os_cache_mib"]) == 2
    assert "blocks/s past shared_buffers" in text and "machine disk" in text
    # The state the load started from (issue 20): vacuumed, checkpointed, every view fresh.
    (before,) = summary["before_each_step"]
    assert before["checkpointed"] is True and before["views_pending"] == 0 and "before the load" in output
    assert before["prewarmed"] == "into shared_buffers" and before["shared_buffers_hold_pct"] == 100
    # And how fast the machine was, so that runs can be compared (loadtest/calibrate.py).
    assert set(before["machine"]) == {
        "python_ms", "round_trip_ms", "commit_ms", "paced_round_trip_ms", "paced_commit_ms"
    }  # fmt: skip
    assert "machine speed" in output and "before 120 users: machine speed" in text


def test_the_commit_probe_waits_for_a_wal_flush_each_time(loadtest_db: tuple[str, str]) -> None:
    """The probe's commits are durable ones: each flushes the WAL, as an upvote's does (a commit of a
    transaction that wrote nothing, such as `SELECT txid_current()`, would not)."""
    url, _ = loadtest_db
    with psycopg.connect(url, autocommit=True) as conn:

        def syncs() -> int:
            row = conn.execute("SELECT wal_sync FROM pg_stat_wal").fetchone()
            assert row is not None
            return int(row[0])

        before = syncs()
        found = calibrate.postgres_ms(url, n=40, paced=10)
        assert syncs() - before >= 40 + 10
    assert all(found[k] > 0 for k in ("round_trip_ms", "commit_ms", "paced_round_trip_ms", "paced_commit_ms"))
    assert calibrate.python_ms(tries=2) > 0


@pytest.mark.loadrun
def test_an_impossible_target_fails_the_run(loadtest_db: tuple[str, str], tmp_path: Path) -> None:
    impossible = 'default_ms = 0.001\n[server]\n"* /api/projects/{project_id}/upvote" = 0.001\n'
    out = tmp_path / "impossible"
    code, output = loadtest(loadtest_db, out, impossible, "--reuse", "--steps", "20,30", "--spawn-rate", "30",
                            "--run-time", "6", "--warm-up", "0", "--workers", "1", "--think-scale", "0.1")  # fmt: skip
    assert code == 1, output[-5000:]
    assert late_restarts(out / "users-00030", 30) == 0  # no warm-up: measured from spawning's end
    for step in ("users-00020", "users-00030"):
        verdicts = json.loads((out / step / "gates.json").read_text())
        assert not verdicts["passed"]
        judged = [v for v in verdicts["verdicts"] if v["check"] in ("client", "server")]
        assert judged and not any(v["passed"] for v in judged)
    assert "gates FAILED" in output and "FAIL" in (out / "summary.txt").read_text()
    # Each step starts from the same state, the second's after the first's writes (run.settle).
    befores = json.loads((out / "summary.json").read_text())["before_each_step"]
    assert [b["users"] for b in befores] == [20, 30]
    assert all(b["checkpointed"] is True and b["views_pending"] == 0 and b["machine"]["commit_ms"] > 0
               for b in befores)  # fmt: skip


def test_the_probe_names_the_statement_a_session_runs(loadtest_db: tuple[str, str]) -> None:
    """The statement shares name what the API sends, as pg_stat_activity shows it: here an upvote's
    change, kept waiting on its advisory lock so that it is seen running."""
    from denorm.sql import positional, queries, query
    from loadtest.attribution import statement_name

    url, _ = loadtest_db
    with psycopg.connect(url, autocommit=True) as holder, psycopg.connect(url, autocommit=True) as waiter:
        holder.execute("SELECT pg_advisory_lock(upvote_lock_key(1, 1))")
        pid = waiter.info.backend_pid
        done = threading.Thread(
            target=waiter.execute, args=(query("upvote_change"), {"u": 1, "p": 1, "want": True, "durable": True})
        )
        done.start()
        try:
            for _ in range(100):
                row = holder.execute(
                    "SELECT query FROM pg_stat_activity WHERE pid = %s AND wait_event = 'advisory'", (pid,)
                ).fetchone()
                if row:
                    break
                time.sleep(0.05)
            assert row is not None
        finally:
            holder.execute("SELECT pg_advisory_unlock(upvote_lock_key(1, 1))")
            done.join(timeout=10)
    assert statement_name(row[0]) == "upvote_change"
    # A statement longer than the server shows (track_activity_query_size) is known by its beginning.
    name, body = max(queries().items(), key=lambda kv: len(kv[1]))
    shown = positional(body)[0].encode()[:1023].decode(errors="ignore")
    assert len(body) > 1100 and statement_name(shown) == name
    # A template by what it has before its slot: the feed's, with a sort's column in it.
    from services.api import feed

    assert {statement_name(positional(text)[0]) for text in feed.statements().values()} == {"feed_page"}
    # Anything else by its first words.
    assert statement_name("REFRESH MATERIALIZED VIEW  mv_x") == "REFRESH MATERIALIZED VIEW mv_x"


def test_the_probe_says_which_relations_the_wal_came_from(loadtest_db: tuple[str, str]) -> None:
    """WAL by relation (pg_walinspect): what a window wrote lands on the tables and indexes it
    touched, full-page images counted apart; and a window from before any WAL still on disk says
    it was not read rather than failing the run."""
    from loadtest.attribution import wal_by_relation

    url, _ = loadtest_db
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        conn.execute("CREATE TABLE wal_probe (id int PRIMARY KEY, pad text)")
        conn.execute("INSERT INTO wal_probe SELECT i, repeat('x', 500) FROM generate_series(1, 5000) i")
        conn.execute("CHECKPOINT")  # the first change of each page after it writes the whole page
        since = str(conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0])  # type: ignore[index]
        conn.execute("UPDATE wal_probe SET pad = 'y' WHERE id % 100 = 0")  # 50 rows, 50 pages
        by_relation = wal_by_relation(conn, since, top=50)
        assert next(iter(by_relation)) == "wal_probe"  # largest first
        assert by_relation["wal_probe"]["fpi_mib"] >= 0.3 and by_relation["wal_probe"]["records"] >= 50
        assert "(no relation)" in by_relation  # the commits
        assert "note" in wal_by_relation(conn, "0/1000")


def test_the_database_is_read_into_shared_buffers_before_the_load(
    admin_conn: AdminConnection, template_database: str
) -> None:
    """A steady state has the database in memory (issue 20: reads from a disk, on a host that pages
    the OS cache out, were a tenth to a third of Postgres's waits): a table written in bulk, which
    leaves most of its pages out of shared_buffers, is wholly there after warm(), and the run says
    how much of the database shared_buffers holds."""
    from loadtest.run import warm

    with scratch_database(admin_conn, "warm", template_database) as url, psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pg_buffercache")
        # CREATE TABLE AS writes through a ring of 16 MB of buffers: 45 MB leaves most pages out.
        conn.execute("CREATE TABLE cold AS SELECT i, repeat('x', 400) AS pad FROM generate_series(1, 100000) i")
        pages = conn.execute("SELECT pg_relation_size('cold') / current_setting('block_size')::int").fetchone()[0]  # type: ignore[index]
        cached = (
            "SELECT count(*) FROM pg_buffercache WHERE relfilenode = pg_relation_filenode('cold') "
            "AND reldatabase = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        before = conn.execute(cached).fetchone()[0]  # type: ignore[index]
        assert before < pages / 2, (before, pages)
        said = warm(conn)
        assert conn.execute(cached).fetchone()[0] == pages  # type: ignore[index]
        assert said["prewarmed"] == "into shared_buffers" and said["shared_buffers_hold_pct"] == 100
        assert said["database_mib"] >= 45


def test_the_probe_counts_the_machines_disk_reads() -> None:
    """The machine's disk over a window: a file dropped from the OS cache and read again shows as
    reads from the disk, and the OS cache's size is read at both ends."""
    from loadtest.attribution import disk_rates, disk_snapshot

    path = Path(__file__).resolve().parent / f".disk-probe-{uuid.uuid4().hex}"  # on the disk, not a tmpfs
    try:
        path.write_bytes(os.urandom(16 << 20))
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # written back first: only clean pages leave the cache when asked
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            before, started = disk_snapshot(), time.monotonic()
            while os.read(fd, 1 << 20):
                pass
            rates = disk_rates(before, disk_snapshot(), time.monotonic() - started)
        finally:
            os.close(fd)
    finally:
        path.unlink(missing_ok=True)
    assert rates["read_mib"] >= 15 and rates["reads_per_s"] > 0 and rates["read_ms_each"] is not None
    assert all(mib > 0 for mib in rates["os_cache_mib"])


def test_the_probe_gives_postgres_cpu_to_the_client_whose_backend_used_it(loadtest_db: tuple[str, str]) -> None:
    """Postgres's CPU by client: a backend that computes for a while is counted to its
    application_name, one that stays idle is not, and one opened within the window counts whole."""
    from loadtest.attribution import backend_cpu, cores_by_client

    url, _ = loadtest_db
    with (
        psycopg.connect(url, autocommit=True, application_name="probe-burner") as burner,
        psycopg.connect(url, autocommit=True, application_name="probe-idler"),
        psycopg.connect(url, autocommit=True) as probe,
    ):
        before = backend_cpu(probe)
        started = time.monotonic()
        burner.execute("SELECT count(*) FROM generate_series(1, 3000000)")
        with psycopg.connect(url, autocommit=True, application_name="probe-late") as late:
            late.execute("SELECT count(*) FROM generate_series(1, 1000000)")
            after = backend_cpu(probe)
        seconds = time.monotonic() - started
    clients = cores_by_client(before, after, seconds)
    assert next(iter(clients)) == "probe-burner"
    assert clients["probe-burner"] * seconds >= 0.1  # CPU seconds, not a share of some other total
    assert clients["probe-late"] > 0 and "probe-idler" not in clients
    assert cores_by_client(None, after, seconds) == {}


def test_the_statement_shares_say_what_each_statement_waited_on() -> None:
    from collections import Counter

    from loadtest.attribution import _by_statement

    samples = Counter({("upvote_change", "CPU"): 6, ("upvote_change", "IO:WALSync"): 4, ("search", "CPU"): 30})
    samples[("search", "IO:DataFileRead")] = 1  # under the 5% shown
    assert list(_by_statement(samples, 41, top=1)) == ["search"]
    assert _by_statement(samples, 41)["upvote_change"] == {"share": 0.244, "waits": {"CPU": 0.6, "IO:WALSync": 0.4}}
    assert _by_statement(samples, 41)["search"]["waits"] == {"CPU": 0.97}


def test_the_step_says_what_ran_out_of_cpu() -> None:
    from loadtest.attribution import saturation

    busy = {"machine": 1.93, "locust workers": 0.7, "api": 0.52, "postgres (this database)": 0.55}
    assert saturation(busy, 2, 2, 1).startswith("the machine: 1.93 of its 2 cores")
    assert "locust workers 0.70" in saturation(busy, 2, 2, 1)
    assert saturation({"machine": 2.0, "locust workers": 1.8}, 8, 2, 1).startswith("the load generator")
    assert saturation({"machine": 1.2, "api": 0.9}, 4, 2, 1).startswith("the API process")
    assert saturation({"machine": 1.2, "api": 0.9}, 4, 2, 2).startswith("nothing (1.20 of 4 cores)")
    # Cores the hypervisor gave to others are not this machine's to use either.
    stolen = saturation({"machine": 1.6, "stolen": 0.3, "api": 0.5}, 2, 2, 1)
    assert stolen.startswith("the machine: 1.60 (and 0.30 taken by the hypervisor) of its 2 cores")
    assert "stolen" not in stolen


def test_the_cpu_sampler_reports_steal_beside_the_machine() -> None:
    from loadtest.cpu import STOLEN, Component, CpuSampler

    sampler = CpuSampler({"me": Component(lambda: [os.getpid()])}, interval=0.05).start()
    time.sleep(0.3)
    sampler.stop()
    means = sampler.means(since=0)
    assert set(means) == {"me", "machine", STOLEN} and all(v >= 0 for v in means.values())
