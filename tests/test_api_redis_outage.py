"""Redis is optional at run time: stopped, slow, flushed or never there, every route answers right."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import redis
from fastapi.testclient import TestClient

from bench.faults import PrivateRedis
from denorm.config import Settings
from loadtest.localproc import free_port
from services.api.app import create_app
from services.refresher.invalidator import Invalidator
from tests.support import admin
from tests.test_api import auth, redis_set, upvote_rows

Connection = psycopg.Connection[Any]
ROUTES = ["/api/projects", "/api/leaderboard/projects", "/api/leaderboard/users", "/api/chains",
          "/api/search?q=redis", "/api/users/dashboard", "/api/messages/conversations",
          admin("/api/admin/refresh-status"), "/readyz"]  # fmt: skip


def make_client(settings: Settings, redis_url: str) -> TestClient:
    return TestClient(
        create_app(
            settings.model_copy(
                update={
                    "redis_url": redis_url,
                    "api_access_log": False,
                    "redis_breaker_cooldown_ms": 300,
                    "redis_timeout_ms": 50,
                }
            )
        )
    )


def upvoted_on_page(client: TestClient, headers: dict[str, str]) -> dict[int, bool]:
    response = client.get("/api/projects", params={"limit": 50}, headers=headers)
    assert response.status_code == 200, response.text
    return {i["id"]: i["user_has_upvoted"] for i in response.json()["items"]}


def test_every_route_answers_with_redis_stopped_and_recovers(
    seeded_url: str, settings: Settings, conn: Connection, private_redis: PrivateRedis
) -> None:
    me = auth(settings, 3)
    with make_client(settings, private_redis.url) as client:
        expected = upvoted_on_page(client, me)  # loads the set while Redis is up
        private_redis.stop()
        for route in ROUTES:
            response = client.get(route, headers=me)
            assert response.status_code == 200, (route, response.text)
        assert client.get("/readyz").json()["redis"].startswith("degraded")
        assert upvoted_on_page(client, me) == expected
        # A write while Redis is down reaches Postgres; the answer is right all the same.
        pid = next(p for p, up in expected.items() if not up)
        assert client.put(f"/api/projects/{pid}/upvote", headers=me).json()["upvoted"] is True
        assert upvoted_on_page(client, me)[pid] is True
        breaker = client.get(admin("/metrics")).text
        assert 'denorm_api_redis_breaker_state{state="closed"} 0.0' in breaker
        private_redis.start()  # empty: it kept nothing
        time.sleep(0.4)  # past the breaker's cooldown
        assert upvoted_on_page(client, me)[pid] is True
        assert upvoted_on_page(client, me)[pid] is True
        assert client.get("/readyz").json()["redis"] == "ok"
        cached = redis_set(redis.Redis.from_url(private_redis.url), settings.redis_key_prefix, 3)
        assert cached == upvote_rows(conn, 3)


def test_a_slow_redis_counts_as_down_and_the_set_is_right_after_the_drain(
    seeded_url: str, settings: Settings, conn: Connection, private_redis: PrivateRedis
) -> None:
    me = auth(settings, 4)
    direct = redis.Redis.from_url(private_redis.url)
    with make_client(settings, private_redis.url) as client:
        page = upvoted_on_page(client, me)
        assert redis_set(direct, settings.redis_key_prefix, 4) == upvote_rows(conn, 4)
        pid = next(p for p, up in page.items() if not up)
        # Redis stalls for 1.5 s (it keeps its data): every call times out meanwhile.
        sleeper = private_redis.stall(1.5)
        started = time.perf_counter()
        assert client.put(f"/api/projects/{pid}/upvote", headers=me).json()["upvoted"] is True
        assert upvoted_on_page(client, me)[pid] is True
        assert time.perf_counter() - started < 1.5  # the timeout, not Redis, bounded the wait
        sleeper.wait()
        time.sleep(0.4)
        # Back: Redis ran the write-through queued behind the stall (the client had given up on
        # it), so its mark is recorded as applied; the drain deletes the mark, and drops the set
        # only if it was not.
        drained = Invalidator(settings.model_copy(update={"redis_url": private_redis.url})).drain_once(conn)
        assert drained is not None and drained.marks >= 1
        assert upvoted_on_page(client, me)[pid] is True
        assert upvoted_on_page(client, me)[pid] is True
        assert redis_set(direct, settings.redis_key_prefix, 4) == upvote_rows(conn, 4)
    direct.close()


def test_no_redis_at_all(seeded_url: str, settings: Settings, conn: Connection) -> None:
    me = auth(settings, 5)
    with make_client(settings, f"redis://127.0.0.1:{free_port()}/0") as client:
        for route in ROUTES:
            assert client.get(route, headers=me).status_code == 200, route
        page = upvoted_on_page(client, me)
        assert {p for p, up in page.items() if up} == upvote_rows(conn, 5) & set(page)
