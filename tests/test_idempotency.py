"""Idempotency keys on the writes (services/api/idempotency.py): a retry with the key of a write that
committed gets the first answer back and changes nothing, even when the API was killed between the
commit and the answer; the same key with another request is refused; a failed write records
nothing; keys expire."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
import requests
from fastapi.testclient import TestClient

from bench.faults import PrivatePostgres
from denorm.auth import mint_token
from denorm.config import Settings
from denorm.migrate import ensure_database, migrate
from denorm.seed import SCALES, seed
from denorm.sql import query
from loadtest.localproc import free_port, wait_ready
from services.api.app import create_app
from tests.support import DENORM, cli_env

Connection = psycopg.Connection[Any]
USER = 3


@pytest.fixture
def client(seeded_url: str, settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings.model_copy(update={"api_access_log": False}))) as c:
        yield c


def headers(settings: Settings, key: str | None = None, user: int = USER) -> dict[str, str]:
    found = {"Authorization": f"Bearer {mint_token(user, settings.jwt_secret)}"}
    return found | ({"Idempotency-Key": key} if key is not None else {})


def count(conn: Connection, statement: str, *params: Any) -> int:
    row = conn.execute(statement.encode(), params).fetchone()
    assert row is not None
    return int(row[0])


def marker() -> str:
    return f"idem-{uuid.uuid4().hex}"


# Each POST write, with what it changes: (method, path, body, how many rows carry the marker).
def writes(conn: Connection) -> list[tuple[str, str, dict[str, Any] | None, Callable[[str], int]]]:
    chain = conn.execute("SELECT c.slug, c.id FROM chains c ORDER BY id LIMIT 1").fetchone()
    assert chain is not None
    conn.execute("INSERT INTO chain_members (chain_id, user_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                 (chain[1], USER))  # fmt: skip
    thread = count(conn, "SELECT min(id) FROM forum_threads WHERE chain_id = %s", chain[1])
    return [
        ("POST", "/api/projects", {"title": "{m}"},
         lambda m: count(conn, "SELECT count(*) FROM projects WHERE title = %s", m)),
        ("POST", "/api/projects/5/comments", {"body": "{m}"},
         lambda m: count(conn, "SELECT count(*) FROM project_comments WHERE body = %s", m)),
        ("POST", "/api/messages", {"recipient_id": 4, "body": "{m}"},
         lambda m: count(conn, "SELECT count(*) FROM messages WHERE body = %s", m)),
        ("POST", "/api/intro-requests", {"target_id": 9, "message": "{m}"},
         lambda m: count(conn, "SELECT count(*) FROM intro_requests WHERE message = %s", m)),
        ("POST", f"/api/chains/{chain[0]}/threads", {"title": "{m}", "body": "b"},
         lambda m: count(conn, "SELECT count(*) FROM forum_threads WHERE title = %s", m)),
        ("POST", f"/api/threads/{thread}/posts", {"body": "{m}"},
         lambda m: count(conn, "SELECT count(*) FROM forum_posts WHERE body = %s", m)),
    ]  # fmt: skip


def fill(body: dict[str, Any] | None, mark: str) -> dict[str, Any] | None:
    return None if body is None else {k: v.replace("{m}", mark) if isinstance(v, str) else v for k, v in body.items()}


def test_every_post_write_runs_once_per_key_and_answers_a_retry_as_it_first_did(
    client: TestClient, settings: Settings, conn: Connection
) -> None:
    for method, path, body, made in writes(conn):
        mark, key = marker(), marker()
        first = client.request(method, path, json=fill(body, mark), headers=headers(settings, key))
        assert first.status_code == 201, (path, first.text)
        assert "idempotent-replayed" not in first.headers
        again = client.request(method, path, json=fill(body, mark), headers=headers(settings, key))
        assert (again.status_code, again.content) == (first.status_code, first.content), path
        assert again.headers["idempotent-replayed"] == "true"
        assert made(mark) == 1, path
        # The control: without a key the same request is a second write, or (a second pending intro
        # request to the same user) a 409 that says nothing of the first.
        control = client.request(method, path, json=fill(body, mark), headers=headers(settings)).status_code
        assert (control, made(mark)) in ((201, 2), (409, 1)), path


def test_the_other_writes_take_a_key_too(client: TestClient, settings: Settings, conn: Connection) -> None:
    """Marking messages read, answering an intro request, joining and leaving a chain."""
    conn.execute("INSERT INTO messages (sender_id, recipient_id, body) VALUES (8, %s, 'unread')", (USER,))
    intro = count(conn, "INSERT INTO intro_requests (requester_id, target_id, message) VALUES (11, %s, 'x') "
                        "RETURNING id", USER)  # fmt: skip
    slug = conn.execute("SELECT slug FROM chains ORDER BY id DESC LIMIT 1").fetchone()
    assert slug is not None
    for method, path, body, expected in [
        ("POST", "/api/messages/read", {"other_user_id": 8}, {"changed": 1}),
        ("POST", f"/api/intro-requests/{intro}/accept", None, {"changed": 1}),
        ("PUT", f"/api/chains/{slug[0]}/membership", None, None),
        ("DELETE", f"/api/chains/{slug[0]}/membership", None, None),
    ]:
        key = marker()
        first = client.request(method, path, json=body, headers=headers(settings, key))
        assert first.status_code == 200, (path, first.text)
        if expected is not None:
            assert first.json() == expected
        again = client.request(method, path, json=body, headers=headers(settings, key))
        assert (again.status_code, again.content, again.headers["idempotent-replayed"]) == (200, first.content, "true")


def test_a_key_is_the_callers_and_for_one_request_only(
    client: TestClient, settings: Settings, conn: Connection
) -> None:
    key, mark = marker(), marker()
    assert (
        client.post("/api/projects/5/comments", json={"body": mark}, headers=headers(settings, key)).status_code == 201
    )
    other_body = client.post("/api/projects/5/comments", json={"body": mark + "!"}, headers=headers(settings, key))
    other_path = client.post("/api/projects/6/comments", json={"body": mark}, headers=headers(settings, key))
    for refused in (other_body, other_path):
        assert refused.status_code == 422 and "another request" in refused.json()["error"]["message"]
    # Another user's same key is theirs.
    assert client.post("/api/projects/5/comments", json={"body": mark},
                       headers=headers(settings, key, user=USER + 1)).status_code == 201  # fmt: skip
    assert count(conn, "SELECT count(*) FROM project_comments WHERE body LIKE %s", mark + "%") == 2
    # The same JSON spaced otherwise is the same request.
    raw = client.post("/api/projects/5/comments", content=f'{{ "body" :  "{mark}" }}',
                      headers={**headers(settings, key), "Content-Type": "application/json"})  # fmt: skip
    assert raw.status_code == 201 and raw.headers["idempotent-replayed"] == "true"


@pytest.mark.parametrize("key", ["", "x" * 256, "bad key"])
def test_a_malformed_key_is_a_422_and_writes_nothing(
    client: TestClient, settings: Settings, conn: Connection, key: str
) -> None:
    mark = marker()
    auth = {"Authorization": f"Bearer {mint_token(USER, settings.jwt_secret)}"}
    done = client.post("/api/projects/5/comments", json={"body": mark},
                       headers={**auth, "Idempotency-Key": key})  # fmt: skip
    assert done.status_code == 422
    assert count(conn, "SELECT count(*) FROM project_comments WHERE body = %s", mark) == 0


def test_a_failed_write_records_nothing_and_its_retry_runs_afresh(
    client: TestClient, settings: Settings, conn: Connection
) -> None:
    key = marker()
    missing = client.post("/api/projects/999999/comments", json={"body": "x"}, headers=headers(settings, key))
    assert missing.status_code == 404
    assert count(conn, "SELECT count(*) FROM idempotency_keys WHERE key = %s", key) == 0
    conn.execute("INSERT INTO projects (id, owner_id, title) VALUES (999999, 1, 'late')")
    found = client.post("/api/projects/999999/comments", json={"body": "x"}, headers=headers(settings, key))
    assert found.status_code == 201 and "idempotent-replayed" not in found.headers


def test_a_key_expires(client: TestClient, settings: Settings, conn: Connection) -> None:
    key, mark = marker(), marker()
    assert (
        client.post("/api/projects/5/comments", json={"body": mark}, headers=headers(settings, key)).status_code == 201
    )
    ttl = settings.api_idempotency_ttl_seconds
    conn.execute("UPDATE idempotency_keys SET created_at = now() - make_interval(secs => %s) WHERE key = %s",
                 (ttl + 1, key))  # fmt: skip
    # Past its time, a key is free: for another request too.
    again = client.post("/api/projects/6/comments", json={"body": mark}, headers=headers(settings, key))
    assert again.status_code == 201 and "idempotent-replayed" not in again.headers
    conn.execute("UPDATE idempotency_keys SET created_at = now() - make_interval(secs => %s) WHERE key = %s",
                 (ttl + 1, key))  # fmt: skip
    conn.execute(query("idempotency_prune"), {"ttl": ttl})
    assert count(conn, "SELECT count(*) FROM idempotency_keys WHERE key = %s", key) == 0


def api(url: str, settings: Settings, port: int) -> subprocess.Popen[bytes]:
    env = cli_env(DATABASE_URL=url, REDIS_KEY_PREFIX=settings.redis_key_prefix, API_ACCESS_LOG="false",
                  LOG_LEVEL="ERROR", API_ADMIN_PORT="0")  # fmt: skip
    proc = subprocess.Popen([*DENORM, "api", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    wait_ready(f"http://127.0.0.1:{port}", proc)
    return proc


def test_retries_at_once_make_one_write(seeded_url: str, settings: Settings, conn: Connection) -> None:
    """Eight copies of one request in flight together: one write, eight equal answers."""
    port = free_port()
    proc = api(seeded_url, settings, port)
    try:
        key, mark = marker(), marker()

        def send(_: int) -> tuple[int, bytes]:
            done = requests.post(f"http://127.0.0.1:{port}/api/messages", json={"recipient_id": 4, "body": mark},
                                 headers=headers(settings, key), timeout=30)  # fmt: skip
            return done.status_code, done.content

        with ThreadPoolExecutor(8) as pool:
            answers = set(pool.map(send, range(8)))
        assert len(answers) == 1 and next(iter(answers))[0] == 201
        assert count(conn, "SELECT count(*) FROM messages WHERE body = %s", mark) == 1
    finally:
        proc.terminate()
        proc.wait(timeout=15)


@pytest.fixture
def stalled_commits() -> Iterator[tuple[PrivatePostgres, str]]:
    """A private cluster with the tiny dataset, whose commits can be held after they reach the disk
    and before they are answered (synchronous replication to a standby that never comes)."""
    cluster = PrivatePostgres(durable=True)
    try:
        url = cluster.url("denorm")
        ensure_database(url)
        migrate(url, echo=lambda _m: None)
        seed(url, SCALES["tiny"], seed=5)
        yield cluster, url
    finally:
        cluster.drop()


def hold_commits(url: str, held: bool) -> None:
    with psycopg.connect(url, autocommit=True) as admin:
        if held:
            admin.execute("ALTER SYSTEM SET synchronous_standby_names = 'nobody'")
        else:
            admin.execute("ALTER SYSTEM RESET synchronous_standby_names")
        admin.execute("SELECT pg_reload_conf()")


@pytest.mark.parametrize("keyed", [True, False])
def test_a_kill_between_the_commit_and_the_answer_and_a_retry_make_one_write(
    stalled_commits: tuple[PrivatePostgres, str], settings: Settings, keyed: bool
) -> None:
    """The API killed (-9) while its write's commit waits to be answered; the client, which saw no
    answer, retries on a new API. With a key the retry gets the first answer and nothing is written
    twice; without one (the control) the write is made twice."""
    _cluster, url = stalled_commits
    mark, key = marker(), marker() if keyed else None
    body: dict[str, Any] = {"recipient_id": 4, "body": mark}
    port = free_port()
    first = api(url, settings, port)
    try:
        hold_commits(url, True)
        with ThreadPoolExecutor(1) as pool:
            sent = pool.submit(requests.post, f"http://127.0.0.1:{port}/api/messages", json=body,
                               headers=headers(settings, key), timeout=60)  # fmt: skip
            with psycopg.connect(url, autocommit=True) as watch:
                deadline = time.monotonic() + 30
                while count(watch, "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'") == 0:
                    assert time.monotonic() < deadline, "the write never reached its commit"
                    time.sleep(0.02)
            first.kill()
            first.wait(timeout=15)
            with pytest.raises(requests.ConnectionError):
                sent.result()
        hold_commits(url, False)  # the commit, made before the kill, is now seen
        with psycopg.connect(url, autocommit=True) as watch:
            deadline = time.monotonic() + 30
            while count(watch, "SELECT count(*) FROM messages WHERE body = %s", mark) == 0:
                assert time.monotonic() < deadline, "the first write did not commit"
                time.sleep(0.02)
        second = api(url, settings, port)
        try:
            retry = requests.post(f"http://127.0.0.1:{port}/api/messages", json=body, headers=headers(settings, key),
                                  timeout=30)  # fmt: skip
            assert retry.status_code == 201
            assert retry.headers.get("idempotent-replayed") == ("true" if keyed else None)
            with psycopg.connect(url) as check:
                written = count(check, "SELECT count(*) FROM messages WHERE body = %s", mark)
                assert written == (1 if keyed else 2)
                if keyed:
                    assert retry.json()["id"] == count(check, "SELECT id FROM messages WHERE body = %s", mark)
        finally:
            second.terminate()
            second.wait(timeout=15)
    finally:
        if first.poll() is None:
            first.kill()
