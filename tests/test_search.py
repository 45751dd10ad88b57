"""Search: weighted full text over projects, users and chains, tolerant of typos."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qs

import psycopg
import pytest

from denorm.pg import session_options
from denorm.seed import SCALES, seed
from denorm.sql import queries
from services.api.params import SEARCH_START
from services.api.pools import OLTP_SETTINGS
from tests.conftest import scratch_database
from tests.support import settle

Connection = psycopg.Connection[Any]
SEARCH = queries()["search"]


def answer(
    conn: Connection, q: str, doc_type: str | None = None, limit: int = 10, cursor: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The search query's JSON document: a first page, or the page after `cursor`."""
    params = {"q": q, "doc_type": doc_type, "limit": limit, **(cursor or SEARCH_START)}
    row = conn.execute(SEARCH.encode(), params).fetchone()
    assert row is not None
    document: dict[str, Any] = json.loads(row[0])
    return document


def search(conn: Connection, q: str, doc_type: str | None = None, limit: int = 10) -> list[tuple[Any, ...]]:
    """The hits as (type, id, title, subtitle, slug, corrected query, score)."""
    found = answer(conn, q, doc_type, limit)
    return [(h["type"], h["id"], h["title"], h["subtitle"], h["slug"], found["corrected"], h["score"])
            for h in found["items"]]  # fmt: skip


@pytest.fixture(scope="module")
def searchable(admin_conn: Connection, template_database: str) -> Any:
    # One seeded database for the module: searching does not write.
    with scratch_database(admin_conn, "search", template_database) as url:
        seed(url, SCALES["small"], seed=5)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO projects (owner_id, title, tagline, description) VALUES "
                "(1, 'Pgvector Playground', 'Vectors in Postgres', 'Try embeddings'),"
                "(2, 'Quiet Notebook', 'A calm place to write', 'Nothing about databases here')"
            )
            settle(conn)
            yield conn


@pytest.mark.parametrize(
    ("query", "must_contain"),
    [
        ("postgres", ["postgres"]),
        ("postgress", ["postgres"]),  # one letter too many
        ("postgre", ["postgres"]),  # one too few
        ("reddis cache", ["redis", "cache"]),
        ("kubernetis dashbord", ["kubernetes", "dashboard"]),
        ("elasticsearh", ["elasticsearch"]),
    ],
)
def test_projects_are_found_despite_typos(searchable: Connection, query: str, must_contain: list[str]) -> None:
    hits = search(searchable, query, "project")
    assert len(hits) == 10
    for _type, _id, title, _subtitle, _slug, _corrected, _score in hits:
        assert all(word in title.lower() for word in must_contain), (query, title)


def test_the_title_outweighs_the_description(searchable: Connection) -> None:
    hits = search(searchable, "pgvector", "project")
    assert hits[0][2] == "Pgvector Playground"
    # "Postgres" appears only in its tagline (weight B), so title matches (weight A) rank above it
    top = search(searchable, "postgres", "project", limit=50)
    assert "Pgvector Playground" not in [h[2] for h in top[:10]]


def test_users_and_chains_are_searchable(searchable: Connection) -> None:
    users = search(searchable, "lovelase", "user")  # Lovelace, misspelt
    assert users and all("lovelace" in h[2].lower() for h in users)
    chains = search(searchable, "redis guild", "chain")
    assert chains and all("redis" in h[2].lower() for h in chains)
    everything = search(searchable, "redis", None, limit=50)
    assert {h[0] for h in everything} >= {"project"}


def test_the_corrected_query_is_reported(searchable: Connection) -> None:
    hits = search(searchable, "reddis", "project")
    assert hits[0][5] == "redis"


def test_no_match_is_an_empty_answer_that_still_says_how_old_it_is(searchable: Connection) -> None:
    nothing = answer(searchable, "zzqqxx")
    assert nothing["items"] == [] and nothing["corrected"] == "zzqqxx" and nothing["as_of"] is not None
    blank = answer(searchable, "   ")
    assert blank["items"] == [] and blank["corrected"] is None and blank["as_of"] is not None


def test_hits_come_best_first(searchable: Connection) -> None:
    scores = [h[6] for h in search(searchable, "redis", None, limit=50)]
    assert len(scores) == 50 and scores == sorted(scores, reverse=True)


# Every match of a query, in the order the pages follow, by a plain query over the whole table.
EVERY_MATCH = """
    SELECT doc_type, doc_id
    FROM mv_search_documents, plainto_tsquery('english', %(w)s) q
    WHERE document @@ q AND (%(t)s::text IS NULL OR doc_type = %(t)s)
    ORDER BY head @@ q DESC, popularity DESC, search_type_rank(doc_type) DESC, doc_id DESC"""


def every_page(conn: Connection, q: str, doc_type: str | None, limit: int) -> list[tuple[str, int]]:
    """Each page after the one before, by its next_cursor, until a page says there is no more."""
    got: list[tuple[str, int]] = []
    cursor = None
    for _ in range(1000):
        page = answer(conn, q, doc_type, limit, cursor)
        got += [(h["type"], h["id"]) for h in page["items"]]
        if page["next_cursor"] is None:
            return got
        cursor = {k: v[0] for k, v in parse_qs(page["next_cursor"]).items()}
    raise AssertionError("a thousand pages")


# Common words (the walk in popularity order), a rare one and an absent one (the GIN index), words
# common in one tier and absent from the other, in one type only or in all.
@pytest.mark.parametrize("word", ["redis", "redis cache", "lovelace", "guild", "pgvector", "version", "zzqqxx"])
@pytest.mark.parametrize("doc_type", [None, "project", "user", "chain"])
def test_the_pages_follow_on_and_hold_every_match_in_order(searchable: Connection, word: str,
                                                         doc_type: str | None) -> None:  # fmt: skip
    want = [tuple(r) for r in searchable.execute(EVERY_MATCH.encode(), {"w": word, "t": doc_type})]
    for limit in (29, 100):
        assert every_page(searchable, word, doc_type, limit) == want, limit


@pytest.mark.parametrize("doc_type", ["project", "chain", "user"])
@pytest.mark.parametrize(("tier", "index"), [(2, "head"), (1, "fts")])
def test_a_rare_words_matches_are_read_from_the_index_of_its_type_and_tier(
    searchable: Connection, doc_type: str, tier: int, index: str
) -> None:
    """search_rare() runs, as the API runs it (a generic plan), on the partial index of its type and
    tier: not on another type's, and not on an index that holds every type."""
    plans: list[str] = []
    with psycopg.connect(searchable.info.dsn, autocommit=True, options=session_options(OLTP_SETTINGS)) as conn:
        conn.add_notice_handler(lambda d: plans.append(d.message_primary or ""))
        conn.execute("LOAD 'auto_explain'")
        for setting in ("log_min_duration = 0", "log_nested_statements = on", "log_level = notice", "log_analyze = on"):
            conn.execute(f"SET auto_explain.{setting}")
        conn.execute(
            "SELECT * FROM search_rare(plainto_tsquery('english', 'redis cache'), %s, %s, 2147483647, "
            "9223372036854775807, 20, -1)",
            (doc_type, tier),
        ).fetchall()
    # The plan holds both tiers' halves; the one of the other tier is "never executed".
    scans = {found.group(1) for plan in plans for line in plan.splitlines() if "never executed" not in line
             for found in [re.search(r"Bitmap Index Scan on (\w+)", line)] if found}  # fmt: skip
    assert scans == {f"mv_search_documents_{doc_type}_{index}_idx"}
