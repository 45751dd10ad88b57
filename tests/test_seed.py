"""`denorm seed`: exact sizes, determinism per seed, realistic skew, and usable sequences afterwards."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from denorm.seed import SCALES, SOURCE_TABLES, STANDARD, Scale, Step, seed
from tests.conftest import AdminConnection, scratch_database

SMALLISH = STANDARD.times(1 / 100)  # 1k users, 2k projects, 20k upvotes: fast, yet skew shows


def digest(url: str) -> dict[str, str]:
    """One md5 per table over all its rows in a canonical order."""
    out = {}
    with psycopg.connect(url) as conn:
        for table in SOURCE_TABLES:
            query = sql.SQL("SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM {} AS t")
            row = conn.execute(query.format(sql.Identifier(table))).fetchone()
            assert row is not None
            out[table] = row[0]
    return out


@pytest.fixture
def other_database_url(admin_conn: AdminConnection, template_database: str) -> Iterator[str]:
    with scratch_database(admin_conn, "test", template_database) as url:
        yield url


def test_same_seed_same_rows_other_seed_other_rows(database_url: str, other_database_url: str) -> None:
    seed(database_url, SCALES["tiny"], seed=7, jobs=2)
    seed(other_database_url, SCALES["tiny"], seed=7, jobs=1)  # other parallelism, same rows
    assert digest(database_url) == digest(other_database_url)
    seed(other_database_url, SCALES["tiny"], seed=8, jobs=2)
    changed = {t for t, d in digest(other_database_url).items() if d != digest(database_url)[t]}
    assert changed == set(SOURCE_TABLES)


def test_reseeding_replaces_the_rows(database_url: str) -> None:
    first = seed(database_url, SCALES["tiny"], seed=1)
    second = seed(database_url, SCALES["tiny"], seed=1)
    assert first.counts == second.counts


def test_sizes_skew_and_time_span(database_url: str) -> None:
    report = seed(database_url, SMALLISH, seed=3)
    s = SMALLISH
    expected = {
        "users": s.users, "projects": s.projects, "project_upvotes": s.upvotes,
        "project_comments": s.comments, "chains": s.chains, "chain_projects": s.chain_projects,
        "chain_members": s.chain_members, "forum_threads": s.threads, "forum_posts": s.posts,
        "messages": s.messages, "intro_requests": s.intros,
    }  # fmt: skip
    # Upvotes are distinct (user, project) pairs: a project's count is capped below the user count,
    # which at this small scale trims the head of the popularity law a little.
    upvotes = report.counts.pop("project_upvotes")
    assert 0.95 * expected.pop("project_upvotes") <= upvotes <= s.upvotes
    assert report.counts == expected
    with psycopg.connect(database_url) as conn:
        # The top 1% of projects draw a large share of upvotes; the top 1% of users many messages.
        top_projects = conn.execute(
            """SELECT sum(n)::float8 / %s FROM (
                 SELECT count(*) AS n FROM project_upvotes GROUP BY project_id ORDER BY n DESC LIMIT %s) t""",
            (s.upvotes, s.projects // 100),
        ).fetchone()
        assert top_projects is not None and top_projects[0] > 0.15
        top_receivers = conn.execute(
            """SELECT sum(n)::float8 / %s FROM (
                 SELECT count(*) AS n FROM messages GROUP BY recipient_id ORDER BY n DESC LIMIT %s) t""",
            (s.messages, s.users // 100),
        ).fetchone()
        assert top_receivers is not None and top_receivers[0] > 0.08
        span = conn.execute(
            "SELECT extract(epoch FROM max(created_at) - min(created_at)) / 86400 FROM messages"
        ).fetchone()
        assert span is not None and 360 <= float(span[0]) <= 366
        statuses = {row[0] for row in conn.execute("SELECT DISTINCT status FROM intro_requests")}
        assert statuses == {"pending", "accepted", "declined"}


def test_new_rows_get_fresh_ids_after_a_seed(database_url: str) -> None:
    seed(database_url, SCALES["tiny"], seed=5)
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "INSERT INTO users (username, display_name) VALUES ('newcomer', 'New Comer') RETURNING id"
        ).fetchone()
        assert row is not None and row[0] == SCALES["tiny"].users + 1
        # The helper schema is gone: seeding leaves nothing behind but data.
        assert conn.execute("SELECT to_regnamespace('seed_util')").fetchone() == (None,)


def test_rank_chunks_cover_every_rank_once() -> None:
    step = Step("project_upvotes", items=200_000, rows=2_000_000, law=1 / 3)
    chunks = step.chunks()
    covered = [r for c in chunks for r in (c.lo, c.hi)]
    assert chunks[0].lo == 1 and chunks[-1].hi == 200_000
    assert all(a.hi + 1 == b.lo for a, b in itertools.pairwise(chunks))
    assert len(chunks) == 10 and covered == sorted(covered)


def test_scale_factor_multiplies_every_count() -> None:
    double = STANDARD.times(2)
    assert double == Scale(**{k: 2 * v for k, v in vars(STANDARD).items()})
    with pytest.raises(ValueError):
        STANDARD.times(0)
