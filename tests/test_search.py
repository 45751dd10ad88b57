"""Search: weighted full text over projects, users and chains, tolerant of typos."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from denorm.seed import SCALES, seed
from denorm.sql import queries
from tests.conftest import scratch_database
from tests.support import settle

Connection = psycopg.Connection[Any]
SEARCH = queries()["search"]


def answer(conn: Connection, q: str, doc_type: str | None = None, limit: int = 10) -> dict[str, Any]:
    """The search query's JSON document."""
    row = conn.execute(SEARCH.encode(), {"q": q, "doc_type": doc_type, "limit": limit}).fetchone()
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


@pytest.mark.parametrize("word", ["redis", "postgres", "lovelace", "guild", "zzqqxx"])
@pytest.mark.parametrize("doc_type", ["project", "user", "chain"])
def test_candidates_are_each_types_200_most_popular_matches(searchable: Connection, word: str, doc_type: str) -> None:
    """Whichever path search_candidates() takes (a walk in popularity order, or the GIN index),
    it returns what this plain query says."""
    query = "plainto_tsquery('english', %(w)s)"
    got = searchable.execute(
        f"SELECT doc_id FROM search_candidates({query}, %(t)s)".encode(), {"w": word, "t": doc_type}
    ).fetchall()
    want = searchable.execute(
        f"SELECT doc_id FROM mv_search_documents WHERE doc_type = %(t)s AND document @@ {query} "
        "ORDER BY popularity DESC, doc_id DESC LIMIT 200".encode(),
        {"w": word, "t": doc_type},
    ).fetchall()
    assert got == want
