"""The API reading from a real streaming replica (issue 19): a private primary and a pg_basebackup
-R replica of it that applies each transaction 500 ms after its commit. A caller's reads follow
their own writes (upvote then feed, comment then project page, message then conversation) while
other reads stay on the replica; an answer read there never claims an as_of past what the replica
has replayed; a replica further behind than DATABASE_READ_MAX_LAG_MS is bypassed."""

from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from denorm.config import Settings
from services.api.app import create_app
from tests.conftest import TEST_REDIS_URL
from tests.support import admin
from tests.test_api import auth

pytestmark = pytest.mark.cluster


def client_for(pair: tuple[str, str], redis_prefix: str, **overrides: Any) -> TestClient:
    primary, replica = pair
    settings = Settings(database_url=primary, database_read_url=replica, redis_url=TEST_REDIS_URL,
                        redis_key_prefix=redis_prefix, environment="test", api_access_log=False,
                        api_rate_writes_per_address="100000/second", **overrides)  # fmt: skip
    return TestClient(create_app(settings))


def served(client: TestClient) -> dict[str, float]:
    text = client.get(admin("/metrics")).text
    return {m[0]: float(m[1]) for m in re.findall(r'denorm_api_reads_served_total\{on="(\w+)"\} ([0-9.e+]+)', text)}


def wait_usable(client: TestClient) -> None:
    deadline = time.monotonic() + 10
    while not client.get("/readyz").json().get("replica", "").startswith("ok"):
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.1)


def test_a_callers_reads_follow_their_writes_and_the_rest_stay_on_the_replica(
    replicated: tuple[str, str], redis_prefix: str
) -> None:
    settings = Settings(jwt_secret=Settings().jwt_secret)
    stale_for_others = 0
    with client_for(replicated, redis_prefix) as client, psycopg.connect(replicated[0], autocommit=True) as primary:
        wait_usable(client)
        for i in range(6):
            user, other = 10 + i, 60 + i
            me = auth(settings, user)
            # Upvote, then the feed: the count and the flag as the primary has them.
            page = client.get("/api/projects", params={"sort": "newest", "limit": 20}, headers=me).json()["items"]
            item = next(p for p in page if not p["user_has_upvoted"])
            assert client.put(f"/api/projects/{item['id']}/upvote", headers=me).status_code == 200
            again = client.get("/api/projects", params={"sort": "newest", "limit": 20}, headers=me).json()["items"]
            seen = next(p for p in again if p["id"] == item["id"])
            truth = primary.execute("SELECT count(*) FROM project_upvotes WHERE project_id = %s", (item["id"],))
            assert (seen["upvote_count"], seen["user_has_upvoted"]) == (truth.fetchone()[0], True)  # type: ignore[index]
            # Comment, then the project page.
            made = client.post(f"/api/projects/{item['id']}/comments", json={"body": f"c{i}"}, headers=me).json()
            mine = client.get(f"/api/projects/{item['id']}", headers=me).json()
            assert mine["comments"]["items"][0]["id"] == made["id"]
            # Someone else reading at once reads the replica, which has not replayed it yet.
            theirs = client.get(f"/api/projects/{item['id']}").json()
            stale_for_others += theirs["comments"]["items"][:1] != mine["comments"]["items"][:1]
            # Message, then the conversation.
            sent = client.post("/api/messages", json={"recipient_id": other, "body": f"m{i}"}, headers=me).json()
            convo = client.get(f"/api/messages/conversations/{other}", headers=me).json()
            assert convo["items"][0]["id"] == sent["id"]
        # Everybody else's reads: the replica.
        for _ in range(30):
            assert client.get("/api/leaderboard/projects", params={"limit": 5}).status_code == 200
            assert client.get("/api/projects", params={"limit": 5}).status_code == 200
        counts = served(client)
    assert stale_for_others >= 3, "the replica was not behind: the test would prove nothing"
    assert counts["replica"] > 2 * counts["primary"], counts


def replay_time(replica_url: str) -> datetime:
    with psycopg.connect(replica_url) as conn:
        row = conn.execute("SELECT pg_last_xact_replay_timestamp()").fetchone()
        assert row is not None
        return row[0]  # type: ignore[no-any-return]


def test_an_answer_from_the_replica_claims_no_as_of_past_what_it_replayed(
    replicated: tuple[str, str], redis_prefix: str
) -> None:
    with client_for(replicated, redis_prefix) as client, psycopg.connect(replicated[0], autocommit=True) as primary:
        wait_usable(client)
        for i in range(5):
            # A write the replica will hold back for 500 ms, then an idle view's answer from it.
            primary.execute("UPDATE users SET bio = %s WHERE id = 1", (f"bio {i}",))
            time.sleep(0.1)
            answer = client.get("/api/leaderboard/projects", params={"limit": 1}).json()
            as_of = datetime.fromisoformat(answer["as_of"])
            assert as_of <= replay_time(replicated[1]), (as_of, replay_time(replicated[1]))
        assert served(client)["replica"] >= 5


def test_a_replica_too_far_behind_is_bypassed(replicated: tuple[str, str], redis_prefix: str) -> None:
    with (
        client_for(replicated, redis_prefix, database_read_max_lag_ms=300) as client,
        psycopg.connect(replicated[0], autocommit=True) as primary,
        psycopg.connect(replicated[1], autocommit=True) as replica,
    ):
        wait_usable(client)
        replica.execute("SELECT pg_wal_replay_pause()")
        try:
            primary.execute("UPDATE users SET bio = 'paused' WHERE id = 2")
            deadline = time.monotonic() + 10
            while not client.get("/readyz").json()["replica"].startswith("bypassed"):
                primary.execute("UPDATE users SET bio = 'paused again' WHERE id = 2")
                assert time.monotonic() < deadline, client.get("/readyz").json()
                time.sleep(0.1)
            before = served(client)
            project = client.get("/api/projects/1").json()
            truth = primary.execute("SELECT count(*) FROM project_comments WHERE project_id = 1").fetchone()
            assert truth is not None and project["comment_count"] == truth[0]
            assert served(client)["primary"] == before["primary"] + 1
            assert client.get("/readyz").status_code == 200  # reported, not fatal
        finally:
            replica.execute("SELECT pg_wal_replay_resume()")
