"""The read API end to end: routes, authentication, read-your-writes, the Redis layer, bad input."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import re
import time
from collections.abc import Iterator, MutableMapping
from typing import Any

import psycopg
import pytest
import redis
import structlog
from fastapi.testclient import TestClient

from denorm.auth import mint_token
from denorm.config import Settings
from denorm.readmodels import REGISTRY
from loadtest.localproc import free_port
from services.api.app import create_app
from services.api.db import connection
from services.api.errors import ApiError
from services.api.pools import open_pool
from services.api.upvotes import _unlock
from tests.support import admin

Connection = psycopg.Connection[Any]


@pytest.fixture
def client(seeded_url: str, settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings.model_copy(update={"api_access_log": False}))) as c:
        yield c


def auth(settings: Settings, user: int, ttl: int = 600) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(user, settings.jwt_secret, ttl_seconds=ttl)}"}


def upvote_rows(conn: Connection, user: int) -> set[int]:
    return {r[0] for r in conn.execute("SELECT project_id FROM project_upvotes WHERE user_id = %s", (user,))}


def redis_set(client: redis.Redis, prefix: str, user: int) -> set[int] | None:
    members = client.smembers(f"{prefix}upvotes:{user}")
    if not members:
        return None
    return {int(m) for m in members if m != b"-"}


# --- every route --------------------------------------------------------------------------------


def test_the_read_routes_answer(client: TestClient, settings: Settings, conn: Connection) -> None:
    for sort in ("trending", "top-rated", "newest"):
        page = client.get("/api/projects", params={"sort": sort, "limit": 5}).json()
        assert len(page["items"]) == 5 and page["as_of"] and page["next_cursor"]
        assert all("user_has_upvoted" not in i or i["user_has_upvoted"] is None for i in page["items"])
    assert len(client.get("/api/leaderboard/projects", params={"limit": 3}).json()["items"]) == 3
    assert len(client.get("/api/leaderboard/users", params={"limit": 3}).json()["items"]) == 3
    chains = client.get("/api/chains").json()
    slug = chains["items"][0]["slug"]
    detail = client.get(f"/api/chains/{slug}").json()
    assert detail["chain"]["slug"] == slug and detail["projects"] and detail["as_of"]
    hits = client.get("/api/search", params={"q": "postgress", "type": "projects", "limit": 3}).json()
    assert hits["corrected"] == "postgres" and all("Postgres" in h["title"] for h in hits["items"])
    after = client.get(f"/api/search?q=postgress&type=projects&limit=3&{hits['next_cursor']}").json()
    assert after["items"] and not {h["id"] for h in after["items"]} & {h["id"] for h in hits["items"]}
    status = client.get(admin("/api/admin/refresh-status")).json()
    assert [m["name"] for m in status["read_models"]] == [m.name for m in REGISTRY]
    by_name = {m["name"]: m for m in status["read_models"]}
    assert (
        by_name["user_dashboard_stats"]["staleness_seconds"] == 0 and by_name["user_dashboard_stats"]["queue"] is None
    )
    assert by_name["mv_leaderboard_projects"]["queue"]["status"] in ("idle", "pending")
    assert by_name["mv_search_words"]["queue"] is None and by_name["mv_search_words"]["as_of"]
    assert by_name["mv_feed_projects"]["as_of"] and status["fold"]["folded_at"]
    me = auth(settings, 3)
    dash = client.get("/api/users/dashboard", headers=me).json()
    truth = conn.execute("SELECT upvotes_given FROM user_dashboard_stats_truth WHERE user_id = 3").fetchone()
    assert truth is not None and dash["upvotes_given"] == truth[0]
    assert client.get("/api/messages/conversations", headers=me).json()["items"]
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    metrics = client.get(admin("/metrics")).text
    assert "denorm_api_request_duration_seconds_bucket" in metrics
    reads = re.search(r"denorm_api_pipelined_reads_total ([0-9.e+]+)", metrics)
    assert reads is not None and float(reads[1]) >= 3  # the feed, the dashboard, the conversations above
    assert "denorm_api_pipeline_lanes_up 2.0" in metrics


def test_cursor_pages_follow_on_and_match_offset_pages(client: TestClient) -> None:
    first = client.get("/api/projects", params={"limit": 10}).json()
    second = client.get("/api/projects", params={"limit": 10, "cursor": first["next_cursor"]}).json()
    by_page = client.get("/api/projects", params={"limit": 10, "page": 2}).json()
    assert [i["id"] for i in second["items"]] == [i["id"] for i in by_page["items"]]
    assert not {i["id"] for i in first["items"]} & {i["id"] for i in second["items"]}


# --- authentication ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/users/dashboard", "/api/messages/conversations"])
def test_private_routes_need_a_valid_token(client: TestClient, settings: Settings, path: str) -> None:
    assert client.get(path).status_code == 401
    assert client.get(path, headers={"Authorization": "Bearer nonsense"}).status_code == 401
    assert client.get(path, headers={"Authorization": "Basic abc"}).status_code == 401
    assert client.get(path, headers=auth(settings, 3, ttl=-10)).status_code == 401
    forged = mint_token(3, "another-secret-that-is-long-enough-000000")
    assert client.get(path, headers={"Authorization": f"Bearer {forged}"}).status_code == 401
    body = client.get(path).json()
    assert body["error"]["code"] == "unauthorized"


def test_each_user_sees_only_their_own_data(client: TestClient, settings: Settings) -> None:
    mine = client.get("/api/users/dashboard", headers=auth(settings, 3)).json()
    theirs = client.get("/api/users/dashboard", headers=auth(settings, 4)).json()
    assert mine["user_id"] == 3 and theirs["user_id"] == 4
    # A query parameter cannot point the route at someone else.
    again = client.get("/api/users/dashboard", params={"user_id": 4}, headers=auth(settings, 3)).json()
    assert again["user_id"] == 3


def test_only_the_target_may_answer_an_intro_request(client: TestClient, settings: Settings, conn: Connection) -> None:
    made = client.post("/api/intro-requests", json={"target_id": 5, "message": "hi"}, headers=auth(settings, 3))
    assert made.status_code == 201
    intro = made.json()["id"]
    assert client.post(f"/api/intro-requests/{intro}/accept", headers=auth(settings, 3)).status_code == 404
    assert client.post(f"/api/intro-requests/{intro}/accept", headers=auth(settings, 5)).status_code == 200
    row = conn.execute("SELECT status FROM intro_requests WHERE id = %s", (intro,)).fetchone()
    assert row == ("accepted",)


# --- read-your-writes and the Redis layer ----------------------------------------------------------


def test_an_upvote_shows_at_once(
    client: TestClient, settings: Settings, conn: Connection, redis_client: redis.Redis
) -> None:
    me = auth(settings, 7)
    page = client.get("/api/projects", params={"limit": 20}, headers=me).json()["items"]
    target = next(i for i in page if not i["user_has_upvoted"])
    answer = client.put(f"/api/projects/{target['id']}/upvote", headers=me).json()
    assert answer == {"upvoted": True, "upvote_count": target["upvote_count"] + 1}
    again = client.get("/api/projects", params={"limit": 20}, headers=me).json()["items"]
    shown = next(i for i in again if i["id"] == target["id"])
    assert shown["user_has_upvoted"] is True and shown["upvote_count"] == target["upvote_count"] + 1
    assert redis_set(redis_client, settings.redis_key_prefix, 7) == upvote_rows(conn, 7)
    # PUT again changes nothing; DELETE twice leaves it cleared.
    assert (
        client.put(f"/api/projects/{target['id']}/upvote", headers=me).json()["upvote_count"] == answer["upvote_count"]
    )
    assert client.delete(f"/api/projects/{target['id']}/upvote", headers=me).json()["upvoted"] is False
    assert client.delete(f"/api/projects/{target['id']}/upvote", headers=me).json() == {
        "upvoted": False,
        "upvote_count": target["upvote_count"],
    }
    assert redis_set(redis_client, settings.redis_key_prefix, 7) == upvote_rows(conn, 7)


def test_concurrent_toggles_leave_postgres_redis_and_counters_equal(
    client: TestClient, settings: Settings, conn: Connection, redis_client: redis.Redis
) -> None:
    # Load the user's set first, so that the write-throughs have something to keep right.
    client.get("/api/projects", headers=auth(settings, 9))
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        same_user = list(
            pool.map(lambda _: client.post("/api/projects/11/upvote", headers=auth(settings, 9)), range(20))
        )
        many_users = list(
            pool.map(lambda u: client.put("/api/projects/12/upvote", headers=auth(settings, u)), range(30, 50))
        )
    assert all(r.status_code == 200 for r in same_user + many_users)
    assert redis_set(redis_client, settings.redis_key_prefix, 9) == upvote_rows(conn, 9)
    truth = conn.execute(
        "SELECT (SELECT count(*) FROM project_upvotes WHERE project_id = 12), upvote_count "
        "FROM project_counters WHERE project_id = 12"
    ).fetchone()
    assert truth is not None and truth[0] == truth[1]
    assert max(r.json()["upvote_count"] for r in many_users) == truth[0]
    # Twenty toggles: each answer is a distinct state change, so exactly half of them said "upvoted".
    assert sum(r.json()["upvoted"] for r in same_user) == 10
    # Each lock is released after its answer (services/api/upvotes.py): soon, and every one of them.
    deadline = time.monotonic() + 5
    while held_upvote_locks(conn):
        assert time.monotonic() < deadline, held_upvote_locks(conn)
        time.sleep(0.01)


def test_a_lock_release_that_fails_closes_its_connection_and_so_frees_the_lock(
    database_url: str, conn: Connection
) -> None:
    """The release after the answer (services/api/upvotes.py) cannot leave a lock behind on a pooled
    connection: if its statement fails, the connection is closed, and the session's locks end."""

    async def release_failing() -> bool:
        pool = await open_pool(database_url, "test-release", 1, 1)
        try:
            lease = contextlib.AsyncExitStack()
            held = await lease.enter_async_context(connection(pool))
            await held.execute("SELECT pg_advisory_lock(upvote_lock_key(3, 5))")
            with pytest.raises(ApiError):  # a value the unlock statement cannot cast: it fails
                await _unlock(held, {"u": "not a number", "p": 5}, lease)
            return held.closed
        finally:
            await pool.close()

    assert asyncio.run(release_failing())
    deadline = time.monotonic() + 5
    while conn.execute("SELECT pg_try_advisory_lock(upvote_lock_key(3, 5))").fetchone() != (True,):
        assert time.monotonic() < deadline, "the lock outlived its connection"
        time.sleep(0.01)
    conn.execute("SELECT pg_advisory_unlock(upvote_lock_key(3, 5))")


def test_a_lock_release_on_a_connection_postgres_dropped_is_a_warning_not_an_error(
    database_url: str, conn: Connection
) -> None:
    """Postgres went away (here: the session terminated) between the answer and the release: the
    lock went with the session, an expected event, logged as a warning that says so."""

    async def release_on_a_dead_session() -> list[MutableMapping[str, Any]]:
        pool = await open_pool(database_url, "test-release", 1, 1)
        try:
            lease = contextlib.AsyncExitStack()
            held = await lease.enter_async_context(connection(pool))
            await held.execute("SELECT pg_advisory_lock(upvote_lock_key(3, 6))")
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                         ("denorm-test-release",))  # fmt: skip
            with structlog.testing.capture_logs() as logs:
                await _unlock(held, {"u": 3, "p": 6}, lease)  # raises nothing
            return logs
        finally:
            await pool.close()

    logs = asyncio.run(release_on_a_dead_session())
    assert [(e["log_level"], e["event"]) for e in logs] == [
        ("warning", "upvote lock not released: the connection is gone, and the lock went with its session")
    ]
    assert conn.execute("SELECT pg_try_advisory_lock(upvote_lock_key(3, 6))").fetchone() == (True,)


def held_upvote_locks(conn: Connection) -> int:
    """Advisory locks held by this database's sessions (an upvote's is the only kind the API takes)."""
    row = conn.execute(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
        "WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database()"
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_an_empty_or_flushed_redis_is_refilled_from_postgres(
    client: TestClient, settings: Settings, conn: Connection, redis_client: redis.Redis
) -> None:
    me = auth(settings, 8)
    before = {
        i["id"]: i["user_has_upvoted"]
        for i in client.get("/api/projects", params={"limit": 50}, headers=me).json()["items"]
    }
    for key in redis_client.scan_iter(match=f"{settings.redis_key_prefix}*"):
        redis_client.delete(key)
    after = {
        i["id"]: i["user_has_upvoted"]
        for i in client.get("/api/projects", params={"limit": 50}, headers=me).json()["items"]
    }
    assert before == after
    assert {pid for pid, up in after.items() if up} == upvote_rows(conn, 8) & set(after)
    assert redis_set(redis_client, settings.redis_key_prefix, 8) == upvote_rows(conn, 8)


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "params"),
    [
        ("GET", "/api/projects", {"sort": "best"}),
        ("GET", "/api/projects", {"limit": 100000}),
        ("GET", "/api/projects", {"limit": 0}),
        ("GET", "/api/projects", {"page": -1}),
        ("GET", "/api/projects", {"cursor": "garbage!"}),
        ("GET", "/api/search", {"q": ""}),
        ("GET", "/api/search", {"q": "x", "type": "everything"}),
        ("GET", "/api/chains/Not A Slug", {}),
        ("PUT", "/api/projects/abc/upvote", {}),
        ("PUT", "/api/projects/-4/upvote", {}),
        ("PUT", "/api/projects/99999999999999999999/upvote", {}),
    ],
)
def test_bad_input_is_a_clear_4xx(
    client: TestClient, settings: Settings, method: str, path: str, params: dict[str, Any]
) -> None:
    response = client.request(method, path, params=params, headers=auth(settings, 3))
    assert 400 <= response.status_code < 500, response.text
    assert set(response.json()["error"]) == {"code", "message", "details"}


def test_oversized_and_invalid_bodies_write_nothing(client: TestClient, settings: Settings, conn: Connection) -> None:
    before = conn.execute("SELECT count(*) FROM messages").fetchone()
    me = auth(settings, 3)
    big = client.post("/api/messages", json={"recipient_id": 4, "body": "x" * 100_000}, headers=me)
    assert big.status_code == 413
    for body in ({"recipient_id": 3, "body": "me"}, {"recipient_id": 4, "body": ""}, {"recipient_id": 4},
                 {"recipient_id": 4, "body": "hi", "extra": 1}, {"recipient_id": 10**30, "body": "hi"}):  # fmt: skip
        response = client.post("/api/messages", json=body, headers=me)
        assert response.status_code == 422, (body, response.text)
    assert client.post("/api/messages", json={"recipient_id": 99999, "body": "hi"}, headers=me).status_code == 404
    assert client.put("/api/projects/99999/upvote", headers=me).status_code == 404
    assert conn.execute("SELECT count(*) FROM messages").fetchone() == before


def test_writes_reach_every_read_model(client: TestClient, settings: Settings, conn: Connection) -> None:
    me, other = auth(settings, 3), auth(settings, 4)
    project = client.post("/api/projects", json={"title": "Brand new", "tags": ["new"]}, headers=me).json()["id"]
    assert client.post(f"/api/projects/{project}/comments", json={"body": "first"}, headers=other).status_code == 201
    assert client.post("/api/messages", json={"recipient_id": 3, "body": "hello"}, headers=other).status_code == 201
    convo = client.get("/api/messages/conversations", headers=me).json()["items"][0]
    assert convo["other_user_id"] == 4 and convo["last_message_preview"] == "hello" and convo["unread_count"] >= 1
    assert client.post("/api/messages/read", json={"other_user_id": 4}, headers=me).json()["changed"] >= 1
    dash = client.get("/api/users/dashboard", headers=me).json()
    truth = conn.execute(
        "SELECT project_count, comments_received, unread_messages FROM user_dashboard_stats_truth WHERE user_id = 3"
    ).fetchone()
    assert (dash["project_count"], dash["comments_received"], dash["unread_messages"]) == truth
    slug = client.get("/api/chains").json()["items"][0]["slug"]
    assert client.put(f"/api/chains/{slug}/membership", headers=me).status_code == 200
    assert client.put(f"/api/chains/{slug}/membership", headers=me).json()["changed"] == 0
    thread = client.post(f"/api/chains/{slug}/threads", json={"title": "Hello"}, headers=me).json()["id"]
    assert client.put(f"/api/chains/{slug}/membership", headers=other).status_code == 200
    assert client.post(f"/api/threads/{thread}/posts", json={"body": "reply"}, headers=other).status_code == 201
    assert client.delete(f"/api/chains/{slug}/membership", headers=me).json()["changed"] == 1


def test_a_search_answer_is_reused_for_a_few_seconds_then_recomputed(
    seeded_url: str, settings: Settings, conn: Connection
) -> None:
    from tests.support import settle

    quiet = settings.model_copy(update={"api_access_log": False, "api_search_cache_seconds": 1.0})
    with TestClient(create_app(quiet)) as client:

        def search() -> dict[str, Any]:
            found: dict[str, Any] = client.get("/api/search", params={"q": "zebracorn"}).json()
            return found

        def cache_counts() -> tuple[float, float]:
            text = client.get(admin("/metrics")).text
            hits = re.search(r"denorm_api_search_cache_hits_total ([0-9.e+]+)", text)
            misses = re.search(r"denorm_api_search_cache_misses_total ([0-9.e+]+)", text)
            assert hits is not None and misses is not None
            return float(hits[1]), float(misses[1])

        first = search()
        assert first["items"] == []
        conn.execute("INSERT INTO projects (owner_id, title) VALUES (3, 'Zebracorn Tracker')")
        settle(conn)
        assert search() == first  # the same answer, as_of included: it says how old it is
        # A hit; if the settling took most of the answer's second, it also started a refresh ahead.
        assert cache_counts()[0] == 1
        time.sleep(1.1)
        fresh = search()
        assert [h["title"] for h in fresh["items"]] == ["Zebracorn Tracker"] and fresh["as_of"] > first["as_of"]
        assert cache_counts()[1] == 2


def test_an_upvote_waits_for_a_stuck_lock_only_so_long(
    client: TestClient, settings: Settings, conn: Connection, database_url: str
) -> None:
    """A (user, project) lock left held somewhere makes that upvote a 503 after a bounded wait, not a hang."""
    before = upvote_rows(conn, 9)
    with psycopg.connect(database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(hashtextextended('upvote:9:13', 0))")
        started = time.monotonic()
        answer = client.put("/api/projects/13/upvote", headers=auth(settings, 9))
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "unavailable"
        assert time.monotonic() - started < 10
    assert upvote_rows(conn, 9) == before  # nothing written
    assert client.put("/api/projects/13/upvote", headers=auth(settings, 9)).status_code == 200  # and it recovers


@pytest.mark.parametrize(("durable", "commit"), [(False, "off"), (True, "on")])
def test_an_upvote_waits_for_the_disk_only_when_asked(seeded_url: str, durable: bool, commit: str) -> None:
    with psycopg.connect(seeded_url) as db:  # one transaction, rolled back: nothing kept
        db.execute("SELECT * FROM upvote_set(3, 5, true, %s)", (durable,))
        assert db.execute("SHOW synchronous_commit").fetchone() == (commit,)
        db.rollback()
        db.execute("SELECT pg_advisory_unlock_all()")  # the session lock outlives the rollback
        assert db.execute("SHOW synchronous_commit").fetchone() == ("on",)  # for that transaction only


def test_without_postgres_reads_answer_503_and_readiness_says_so(settings: Settings) -> None:
    """Postgres is the source of truth: without it there is no answer, but a clear JSON 503, not a 500."""
    dead = settings.model_copy(
        update={"database_url": f"postgresql://postgres@127.0.0.1:{free_port()}/none", "api_access_log": False}
    )
    with TestClient(create_app(dead)) as client:
        for path in ("/api/projects", "/api/leaderboard/users", "/api/chains"):
            answer = client.get(path)
            assert answer.status_code == 503, path
            assert answer.json()["error"]["code"] == "unavailable"
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["read_pipeline"] == "0/2 up"
