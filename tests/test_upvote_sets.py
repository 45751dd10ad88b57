"""The Redis upvote sets are right whoever writes and through any fault (issue 15).

Real processes on a private redis-server: two API processes and a refresher (whose invalidator
drains the marks Postgres leaves for every change of project_upvotes). Writers are the API and
plain SQL; faults are real: Redis killed and restarted, stalled with DEBUG SLEEP, one API process
cut off from Redis (a proxy that holds its bytes) and killed between its commit and its
write-through. After each, every `user_has_upvoted` answer given more than 1 s after the last
commit agrees with project_upvotes, and the reconciler finds no drift in the sets.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
import requests

from bench.faults import FreezingProxy, PrivateRedis
from denorm.auth import mint_token
from denorm.config import Settings
from loadtest.localproc import free_port, wait_ready
from services.api.breaker import Breaker
from services.reconciler.reconcile import Reconciler
from tests.support import DENORM, cli_env, one

Connection = psycopg.Connection[Any]
BOUND_S = 1.0  # a change reaches every process's answers within this
USERS = (3, 4, 5, 6)


@dataclass
class Api:
    url: str
    proc: subprocess.Popen[bytes]
    session: requests.Session = field(init=False)

    def __post_init__(self) -> None:
        self.session = requests.Session()
        self.session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=64))

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.session.get(self.url + path, timeout=30, **kwargs)

    def put(self, path: str, **kwargs: Any) -> requests.Response:
        return self.session.put(self.url + path, timeout=30, **kwargs)


@dataclass
class Stack:
    settings: Settings
    redis: PrivateRedis
    apis: list[Api]
    refresher: subprocess.Popen[bytes]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_api(self, redis_url: str, **env: str) -> Api:
        port = free_port()
        proc = subprocess.Popen(
            [*DENORM, "api", "--host", "127.0.0.1", "--port", str(port), "--admin-port", "0"],
            env=service_env(self.settings, redis_url, API_ACCESS_LOG="false", REDIS_BREAKER_COOLDOWN_MS="300", **env),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        api = Api(f"http://127.0.0.1:{port}", proc)
        wait_ready(api.url, proc)
        self.apis.append(api)
        return api


def service_env(settings: Settings, redis_url: str, **extra: str) -> dict[str, str]:
    return cli_env(
        DATABASE_URL=settings.database_url,
        REDIS_URL=redis_url,
        REDIS_KEY_PREFIX=settings.redis_key_prefix,
        ENVIRONMENT="test",
        LOG_LEVEL="WARNING",
        DB_POOL_MIN_SIZE="1",
        REFRESHER_METRICS_PORT="0",
        **extra,
    )


@pytest.fixture
def stack(seeded_url: str, settings: Settings, private_redis: PrivateRedis) -> Iterator[Stack]:
    refresher = subprocess.Popen(
        [*DENORM, "refresher"],
        env=service_env(settings, private_redis.url),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    s = Stack(settings, private_redis, [], refresher, [refresher])
    try:
        s.start_api(private_redis.url)
        s.start_api(private_redis.url)
        yield s
    finally:
        for proc in s.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in s.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        for api in s.apis:
            api.session.close()


def auth(settings: Settings, user: int) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(user, settings.jwt_secret, ttl_seconds=600)}"}


def flags(api: Api, settings: Settings, user: int) -> dict[int, bool]:
    """The first page of the newest feed as `user` sees it: project -> user_has_upvoted."""
    response = api.get("/api/projects", params={"sort": "newest", "limit": 50}, headers=auth(settings, user))
    assert response.status_code == 200, response.text
    return {int(i["id"]): bool(i["user_has_upvoted"]) for i in response.json()["items"]}


def upvote(stack: Stack, api: Api, user: int, project: int) -> requests.Response:
    return api.put(f"/api/projects/{project}/upvote", headers=auth(stack.settings, user))


def truth(conn: Connection, user: int) -> set[int]:
    return {int(r[0]) for r in conn.execute("SELECT project_id FROM project_upvotes WHERE user_id = %s", (user,))}


def wrong(stack: Stack, conn: Connection, users: tuple[int, ...] = USERS) -> list[tuple[str, int, int, bool]]:
    """Every (api, user, project, answer) that disagrees with project_upvotes."""
    out = []
    for api in stack.apis:
        if api.proc.poll() is not None:
            continue
        for user in users:
            mine = truth(conn, user)
            out += [(api.url, user, p, f) for p, f in flags(api, stack.settings, user).items() if f != (p in mine)]
    return out


def assert_right_after_the_bound(stack: Stack, conn: Connection, last_commit: float,
                                 users: tuple[int, ...] = USERS) -> None:  # fmt: skip
    """Answers given more than BOUND_S after the last commit agree with Postgres, in every process
    and in the reconciler's eyes."""
    time.sleep(max(0.0, last_commit + BOUND_S - time.monotonic()))
    for _ in range(3):
        assert wrong(stack, conn, users) == []
    report = Reconciler(stack.settings.model_copy(update={"redis_url": stack.redis.url}), repair=False).run()
    assert report.redis == "checked"
    assert report.models["upvote_sets"].drift == 0, report.models["upvote_sets"].examples


def page_projects(stack: Stack, user: int) -> list[int]:
    return list(flags(stack.apis[0], stack.settings, user))


def load_sets(stack: Stack, conn: Connection, users: tuple[int, ...] = USERS) -> None:
    """Every process has read every user's page: their sets are in Redis."""
    time.sleep(0.3)  # the seed's rebuild mark drained
    for api in stack.apis:
        for user in users:
            flags(api, stack.settings, user)
    for user in users:
        cached = stack_redis_members(stack, user)
        assert cached == truth(conn, user), user


def stack_redis_members(stack: Stack, user: int) -> set[int] | None:
    import redis

    client = redis.Redis.from_url(stack.redis.url)
    try:
        members = client.smembers(f"{stack.settings.redis_key_prefix}upvotes:{user}")
    finally:
        client.close()
    return {int(m) for m in members if m != b"-"} if members else None


# --- any writer ---------------------------------------------------------------------------------


def test_plain_sql_inserts_and_deletes_reach_every_process(stack: Stack, conn: Connection) -> None:
    """The issue's first reproduction: a psql INSERT, then a DELETE, of a project on the page."""
    load_sets(stack, conn)
    user = USERS[0]
    project = next(p for p in page_projects(stack, user) if p not in truth(conn, user))
    conn.execute("INSERT INTO project_upvotes (user_id, project_id) VALUES (%s, %s)", (user, project))
    assert_right_after_the_bound(stack, conn, time.monotonic())
    assert all(flags(api, stack.settings, user)[project] for api in stack.apis)
    conn.execute("DELETE FROM project_upvotes WHERE user_id = %s AND project_id = %s", (user, project))
    assert_right_after_the_bound(stack, conn, time.monotonic())
    assert not any(flags(api, stack.settings, user)[project] for api in stack.apis)


def test_bulk_statements_updates_and_cascades_reach_every_process(stack: Stack, conn: Connection) -> None:
    load_sets(stack, conn)
    page = page_projects(stack, USERS[0])
    # One statement upvoting a page's worth for every user, another moving one user's votes.
    conn.execute(
        "INSERT INTO project_upvotes (user_id, project_id) SELECT u, p FROM unnest(%s::bigint[]) u, "
        "unnest(%s::bigint[]) p ON CONFLICT DO NOTHING",
        (list(USERS), page[:10]),
    )
    assert_right_after_the_bound(stack, conn, time.monotonic())
    conn.execute(
        "UPDATE project_upvotes SET project_id = %s WHERE user_id = %s AND project_id = %s",
        (page[20], USERS[1], page[0]) if page[20] not in truth(conn, USERS[1]) else (page[21], USERS[1], page[0]),
    )
    conn.execute("DELETE FROM project_upvotes WHERE user_id = ANY(%s) AND project_id = ANY(%s)",
                 (list(USERS[2:]), page[3:6]))  # fmt: skip
    assert_right_after_the_bound(stack, conn, time.monotonic())
    # A deleted project takes its upvotes with it (ON DELETE CASCADE): every set that held it.
    voted = one(conn, "SELECT project_id FROM project_upvotes WHERE user_id = ANY(%s) "
                      "GROUP BY project_id ORDER BY count(*) DESC, project_id LIMIT 1", list(USERS))  # fmt: skip
    conn.execute("DELETE FROM projects WHERE id = %s", (voted,))
    assert_right_after_the_bound(stack, conn, time.monotonic())


def test_a_truncate_empties_every_set(stack: Stack, conn: Connection) -> None:
    load_sets(stack, conn)
    assert any(truth(conn, u) for u in USERS)
    conn.execute("TRUNCATE project_upvotes")
    assert_right_after_the_bound(stack, conn, time.monotonic())
    assert not any(any(flags(api, stack.settings, u).values()) for api in stack.apis for u in USERS)


def test_the_apis_own_upvotes_answer_from_redis_at_once(stack: Stack, conn: Connection) -> None:
    """A write-through records its change's mark as applied: the other process answers from the
    updated set at once, and the drain then deletes the mark without dropping the set."""
    load_sets(stack, conn)
    user = USERS[0]
    a, b = stack.apis
    project = next(p for p in page_projects(stack, user) if p not in truth(conn, user))
    response = upvote(stack, a, user, project)
    assert response.json()["upvoted"] is True
    assert flags(b, stack.settings, user)[project] is True  # at once, in the other process too
    deadline = time.monotonic() + 10
    while one(conn, "SELECT count(*) FROM upvote_set_changes") > 0:  # drained
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert stack_redis_members(stack, user) == truth(conn, user)  # written through, and not dropped


# --- faults -------------------------------------------------------------------------------------


def test_a_write_through_on_a_connection_redis_killed_is_not_lost(stack: Stack, conn: Connection) -> None:
    """The issue's second reproduction: a warmed connection pool, Redis killed -9 and started again
    with no traffic between, a set loaded, then three concurrent upvotes."""
    user, api = USERS[1], stack.apis[0]
    others = page_projects(stack, USERS[0])[:40]
    with ThreadPoolExecutor(40) as pool:  # 40 pooled connections, each used once
        list(pool.map(lambda p: upvote(stack, api, 7, p), others))
    stack.redis.kill()
    stack.redis.start()
    flags(api, stack.settings, user)  # the set loads
    fresh = [p for p in page_projects(stack, user) if p not in truth(conn, user)][:3]
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda p: upvote(stack, api, user, p), fresh))
    assert [r.json()["upvoted"] for r in answers] == [True, True, True]
    assert_right_after_the_bound(stack, conn, time.monotonic(), (user, 7))
    assert all(flags(a, stack.settings, user)[p] for a in stack.apis for p in fresh)


def test_a_stall_leaves_no_answer_wrong_past_the_bound(stack: Stack, conn: Connection) -> None:
    """The issue's third reproduction: DEBUG SLEEP while both processes serve reads and take
    upvotes and plain SQL writes; answers are recorded with their time and checked afterwards."""
    load_sets(stack, conn)
    stop = threading.Event()
    answers: list[tuple[float, int, dict[int, bool]]] = []

    def read(api: Api) -> None:
        while not stop.is_set():
            for user in USERS:
                answers.append((time.monotonic(), user, flags(api, stack.settings, user)))

    readers = [threading.Thread(target=read, args=(api,)) for api in stack.apis]
    for r in readers:
        r.start()
    sleeper = stack.redis.stall(2.0)
    time.sleep(0.2)
    page = page_projects(stack, USERS[0])
    for i, user in enumerate(USERS):
        api = stack.apis[i % 2]
        upvote(stack, api, user, page[i])
        conn.execute("INSERT INTO project_upvotes (user_id, project_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                     (user, page[10 + i]))  # fmt: skip
    last_commit = time.monotonic()
    sleeper.wait()
    time.sleep(2.5)
    stop.set()
    for r in readers:
        r.join()
    final = {u: truth(conn, u) for u in USERS}
    late = [(t, u, a) for t, u, a in answers if t > last_commit + BOUND_S]
    assert len(late) > 20
    bad = [(round(t - last_commit, 2), u, p) for t, u, a in late for p, f in a.items() if f != (p in final[u])]
    assert bad == []
    assert_right_after_the_bound(stack, conn, last_commit)


def test_a_process_killed_between_commit_and_write_through(stack: Stack, conn: Connection) -> None:
    """A third API process reaches Redis through a proxy that freezes: its upvote commits, its
    write-through hangs, and it is killed. The mark it left in Postgres outlives it: the other
    processes, which had the set cached, answer right within the bound."""
    proxy = FreezingProxy(stack.redis.port)
    try:
        cut = stack.start_api(proxy.url, REDIS_TIMEOUT_MS="30000")
        users = (USERS[2],)
        load_sets(stack, conn, users)
        user = users[0]
        project = next(p for p in page_projects(stack, user) if p not in truth(conn, user))
        proxy.freeze()
        hung = threading.Thread(target=_quietly, args=(upvote, stack, cut, user, project))
        hung.start()
        deadline = time.monotonic() + 10
        while project not in truth(conn, user):  # committed; the write-through is held by the proxy
            assert time.monotonic() < deadline
            time.sleep(0.01)
        last_commit = time.monotonic()
        os.kill(cut.proc.pid, signal.SIGKILL)
        cut.proc.wait(timeout=10)
        hung.join()
        stack.apis.remove(cut)
        assert_right_after_the_bound(stack, conn, last_commit, users)
        assert all(flags(api, stack.settings, user)[project] for api in stack.apis)
    finally:
        proxy.close()


def test_a_process_cut_off_from_redis_cannot_leave_the_others_reading_a_stale_set(
    stack: Stack, conn: Connection
) -> None:
    """While one process cannot reach Redis (its write-throughs time out, its breaker opens), the
    others keep serving from Redis, and see its changes within the bound."""
    proxy = FreezingProxy(stack.redis.port)
    try:
        cut = stack.start_api(proxy.url)
        load_sets(stack, conn)
        proxy.freeze()
        page = page_projects(stack, USERS[0])
        last_commit = time.monotonic()
        for i, user in enumerate(USERS):
            response = upvote(stack, cut, user, page[30 + i])
            assert response.status_code == 200
            last_commit = time.monotonic()
        assert_right_after_the_bound(stack, conn, last_commit)
    finally:
        proxy.close()


def _quietly(call: Any, *args: Any) -> None:
    with contextlib.suppress(requests.RequestException):  # the process was killed under it
        call(*args)


# --- the breaker --------------------------------------------------------------------------------


def test_a_half_open_breaker_admits_one_probe() -> None:
    breaker = Breaker(threshold=2, cooldown=0.05)
    breaker.failure()
    assert breaker.allow()  # one failure: still closed
    breaker.failure()
    assert breaker.state == "open" and not breaker.allow()
    time.sleep(0.06)
    assert breaker.state == "half_open"
    assert [breaker.allow() for _ in range(5)] == [True, False, False, False, False]
    breaker.failure()  # the probe failed: open again, for a whole cooldown
    assert breaker.state == "open" and not breaker.allow()
    time.sleep(0.06)
    assert breaker.allow() and not breaker.allow()
    breaker.success()  # the probe answered: closed, everyone through
    assert breaker.state == "closed" and all(breaker.allow() for _ in range(5))
