"""Fail fast and safe (issue 16): secrets safe by default, bad input a 4xx, a dead Postgres a quick
503, a stop that never hangs."""

from __future__ import annotations

import contextlib
import random
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jwt
import psycopg
import pytest
import redis
import requests
from fastapi.testclient import TestClient

from bench.faults import PrivatePostgres, PrivateRedis
from denorm.auth import mint_token
from denorm.config import DEV_JWT_SECRET, Settings
from loadtest.localproc import free_port, wait_ready
from services.api.app import create_app
from tests.support import DENORM, admin, cli_env, drifted, drop_role, make_role, one, run_denorm
from tests.test_api import auth

Connection = psycopg.Connection[Any]


@contextlib.contextmanager
def api_process(url: str, settings: Settings, **env: str) -> Iterator[str]:
    """`denorm api` as a process on `url` (with this test's Redis key space and `env`), ready; its
    base URL. Stopped on the way out. Its admin port is API_ADMIN_PORT when `env` gives it, else any."""
    port = free_port()
    environment = cli_env(DATABASE_URL=url, REDIS_KEY_PREFIX=settings.redis_key_prefix, API_ACCESS_LOG="false",
                          LOG_LEVEL="ERROR", **{"API_ADMIN_PORT": "0", **env})  # fmt: skip
    proc = subprocess.Popen([*DENORM, "api", "--port", str(port)], env=environment, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, proc)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def in_process(settings: Settings) -> TestClient:
    """The app in this process, without its access log."""
    return TestClient(create_app(settings.model_copy(update={"api_access_log": False})))


# --- secrets ------------------------------------------------------------------------------------


def test_an_unset_environment_means_production(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENVIRONMENT", raising=False)
    monkeypatch.delenv("JWT_SECRET", raising=False)
    settings = Settings()
    assert settings.environment == "production" and settings.jwt_secret == DEV_JWT_SECRET
    with pytest.raises(RuntimeError, match="development placeholder"):
        settings.check_production_safety()
    for environment in ("development", "test"):
        Settings(environment=environment).check_production_safety()  # said outright: accepted


def test_the_api_refuses_to_start_with_the_published_secret_when_the_environment_is_unset(database_url: str) -> None:
    env = {k: v for k, v in cli_env(DATABASE_URL=database_url).items() if k not in ("ENVIRONMENT", "JWT_SECRET")}
    done = subprocess.run([*DENORM, "api", "--port", str(free_port()), "--admin-port", "0"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode != 0
    assert "JWT_SECRET is the development placeholder" in done.stderr + done.stdout


def test_the_test_environments_second_key_is_accepted_only_outside_production(
    seeded_url: str, settings: Settings
) -> None:
    real, test_key = "r" * 40, "t" * 40
    staging = settings.model_copy(update={"environment": "staging", "jwt_secret": real, "jwt_test_secret": test_key})
    staging.check_production_safety()
    with TestClient(create_app(staging)) as client:
        for key in (real, test_key):
            headers = {"Authorization": f"Bearer {mint_token(3, key)}"}
            assert client.get("/api/users/dashboard", headers=headers).status_code == 200
        forged = {"Authorization": f"Bearer {mint_token(3, 'f' * 40)}"}
        assert client.get("/api/users/dashboard", headers=forged).status_code == 401
    with pytest.raises(RuntimeError, match="JWT_TEST_SECRET"):
        staging.model_copy(update={"environment": "production"}).check_production_safety()


# --- bad input ----------------------------------------------------------------------------------

# Each body route with a body that carries a bad text where the issue found one unchecked (a list
# item) and in a plain field; the raw JSON keeps the \ud800 escape, which json.dumps would too.
BAD_BODIES = [
    ("POST", "/api/projects", '{"title": "t", "tags": ["ok", "\\ud800"]}'),
    ("POST", "/api/projects", '{"title": "t", "tags": ["a\\u0000b"]}'),
    ("POST", "/api/projects", '{"title": "\\udfff"}'),
    ("POST", "/api/projects/1/comments", '{"body": "x\\ud800y"}'),
    ("POST", "/api/messages", '{"recipient_id": 4, "body": "\\u0000"}'),
    ("POST", "/api/intro-requests", '{"target_id": 4, "message": "\\ud83d"}'),
    ("POST", "/api/chains/chain-1-postgres/threads", '{"title": "t", "body": "\\udc00"}'),
    ("POST", "/api/threads/1/posts", '{"body": "\\ud800\\u0000"}'),
]
WRITTEN = "SELECT (SELECT count(*) FROM projects) + (SELECT count(*) FROM project_comments) + " \
          "(SELECT count(*) FROM messages) + (SELECT count(*) FROM intro_requests) + " \
          "(SELECT count(*) FROM forum_threads) + (SELECT count(*) FROM forum_posts)"  # fmt: skip


def test_lone_surrogates_and_nul_anywhere_in_a_body_are_a_422_and_write_nothing(
    seeded_url: str, settings: Settings, conn: Connection
) -> None:
    before = one(conn, WRITTEN)
    with in_process(settings) as client:
        for method, path, raw in BAD_BODIES:
            response = client.request(method, path, content=raw.encode(), headers={
                **auth(settings, 3), "content-type": "application/json"})  # fmt: skip
            assert response.status_code == 422, (path, raw, response.text)
            assert response.json()["error"]["code"] == "invalid_input"
    assert one(conn, WRITTEN) == before


# Validly signed tokens whose subject is not a user id in plain ASCII digits within the id range.
BAD_SUBJECTS = ["¹", "١", "٣", "-1", "0", " 1", "1 ", "+1", "1e3", "0x1", str(2**63), "1.0", "", "１"]  # noqa: RUF001


@pytest.mark.parametrize(("method", "route"), [("GET", "/api/projects"), ("GET", "/api/users/dashboard"),
                                               ("GET", "/api/messages/conversations"),
                                               ("PUT", "/api/projects/1/upvote")])  # fmt: skip
def test_a_token_whose_subject_is_not_an_id_is_a_401_on_every_path(
    seeded_url: str, settings: Settings, method: str, route: str
) -> None:
    """The direct read path (the GETs) and FastAPI's (the PUT) parse the subject alike."""
    with in_process(settings) as client:
        for sub in BAD_SUBJECTS:
            token = jwt.encode({"sub": sub, "exp": int(time.time()) + 600}, settings.jwt_secret, algorithm="HS256")
            response = client.request(method, route, headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 401, (sub, response.text)
            assert response.json()["error"]["code"] == "unauthorized"


# --- bodies over the limit or too slow, on a real server ----------------------------------------


@pytest.fixture
def api_url(seeded_url: str, settings: Settings) -> Iterator[str]:
    with api_process(seeded_url, settings, API_BODY_TIMEOUT_MS="500") as base:
        yield base.removeprefix("http://")


def raw_request(address: str, head: str, body_parts: list[bytes], pause_s: float = 0.0) -> tuple[int, float]:
    """Send a request by hand; (status, seconds until the answer's first line)."""
    host, port = address.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(head.encode())
        for part in body_parts:
            try:
                sock.sendall(part)
            except OSError:
                break  # the server answered and closed before the whole body was sent
            time.sleep(pause_s)
        answer = sock.recv(4096).decode("latin-1")
        return int(answer.split(" ", 2)[1]), time.monotonic() - started


def test_a_chunked_body_over_the_limit_is_a_413(api_url: str, settings: Settings, conn: Connection) -> None:
    before = one(conn, WRITTEN)
    token = mint_token(3, settings.jwt_secret)
    head = (f"POST /api/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")  # fmt: skip
    body = b'{"recipient_id": 4, "body": "' + b"x" * 100_000 + b'"}'
    chunks = [
        f"{len(body[i : i + 8192]):x}\r\n".encode() + body[i : i + 8192] + b"\r\n" for i in range(0, len(body), 8192)
    ]
    status, _ = raw_request(api_url, head, [*chunks, b"0\r\n\r\n"])
    assert status == 413
    assert one(conn, WRITTEN) == before


def test_a_stalled_body_is_cut_off_with_a_408(api_url: str, settings: Settings, conn: Connection) -> None:
    token = mint_token(3, settings.jwt_secret)
    head = (f"POST /api/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n")  # fmt: skip
    status, seconds = raw_request(api_url, head, [b'{"recipient_id": 4, '])  # and then nothing
    assert status == 408
    assert seconds < 5  # the body timeout (0.5 s here), not the client, ended it


# --- shutdown -----------------------------------------------------------------------------------


def burst(proc: subprocess.Popen[bytes], rng: random.Random) -> None:
    """Five to thirty SIGTERMs and SIGINTs, a few milliseconds apart or none."""
    for _ in range(rng.randint(5, 30)):
        if proc.poll() is not None:
            return
        proc.send_signal(rng.choice([signal.SIGTERM, signal.SIGINT]))
        time.sleep(rng.choice([0, 0, 0.001, 0.005]))


@pytest.mark.parametrize(
    ("args", "grace_s"),
    [(["refresher"], 20.0), (["api", "--port", "0", "--admin-port", "0"], 15.0), (["reconcile", "--dry-run"], 15.0)],
)
def test_bursts_of_stop_signals_at_random_moments_never_hang_a_service(
    seeded_url: str, settings: Settings, args: list[str], grace_s: float
) -> None:
    """Signals arriving close together, while the loops sleep, fold, refresh or serve: each process
    exits within its grace period (the refresher used to deadlock in its own signal handler)."""
    rng = random.Random(16)
    env = cli_env(DATABASE_URL=seeded_url, REDIS_KEY_PREFIX=settings.redis_key_prefix, REFRESHER_METRICS_PORT="0",
                  REFRESHER_FOLD_MS="20", REFRESHER_INVALIDATE_MS="10", LOG_LEVEL="WARNING")  # fmt: skip
    for _ in range(4):
        proc = subprocess.Popen([*DENORM, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(rng.uniform(0.5, 3.0))  # starting, or in its loops
            burst(proc, rng)
            proc.wait(timeout=grace_s)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# --- a dead or saturated Postgres ---------------------------------------------------------------

REFRESH_STATUS = "/api/admin/refresh-status"
PROBES: list[tuple[Any, ...]] = [
          ("GET", "/api/projects"), ("GET", "/api/projects?sort=newest&limit=5"), ("GET", "/api/leaderboard/projects"),
          ("GET", "/api/leaderboard/users"), ("GET", "/api/chains"), ("GET", "/api/chains/chain-1-postgres"),
          ("GET", "/api/search?q=redis"), ("GET", "/api/search?q=zzqx"), ("GET", "/api/users/dashboard"),
          ("GET", "/api/messages/conversations"),
          ("PUT", "/api/projects/5/upvote"), ("DELETE", "/api/projects/5/upvote"),
          ("POST", "/api/messages", {"recipient_id": 4, "body": "hi"}),
          ("POST", "/api/projects", {"title": "t"}), ("PUT", "/api/chains/chain-1-postgres/membership")]  # fmt: skip


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    cluster = PrivatePostgres()
    try:
        yield cluster
    finally:
        cluster.drop()


def probe(session: requests.Session, base: str, token: str, spec: tuple[Any, ...]) -> tuple[int, float, str | None]:
    method, path, *body = spec
    started = time.monotonic()
    response = session.request(method, base + path, json=body[0] if body else None, timeout=30,
                                headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    return response.status_code, time.monotonic() - started, response.headers.get("retry-after")


def test_a_stopped_postgres_is_a_quick_503_on_every_route_and_every_route_recovers(
    private_postgres: PrivatePostgres, settings: Settings
) -> None:
    from denorm.migrate import ensure_database, migrate
    from denorm.seed import SCALES, seed

    url = private_postgres.url("denorm")
    ensure_database(url)
    migrate(url, echo=lambda _m: None)
    seed(url, SCALES["tiny"], seed=16)
    token = mint_token(3, settings.jwt_secret)
    statuses: list[int] = []
    stop = threading.Event()

    def load(base: str) -> None:  # requests all along, on every route: none may be a 5xx other than 503
        rng = random.Random(1)
        with requests.Session() as own:
            while not stop.is_set():
                statuses.append(probe(own, base, token, rng.choice(PROBES))[0])

    admin_port = free_port()
    with (
        api_process(url, settings, API_ADMIN_PORT=str(admin_port), DB_POOL_TIMEOUT_MS="1000") as base,
        requests.Session() as session,
    ):
        # The public routes, and the operators' on the admin port.
        routes = [(base, spec) for spec in PROBES] + [(f"http://127.0.0.1:{admin_port}", ("GET", REFRESH_STATUS))]
        for at, spec in routes:
            assert probe(session, at, token, spec)[0] < 500, spec
        loader = threading.Thread(target=load, args=(base,))
        try:
            loader.start()
            private_postgres.stop()
            for i, (at, (method, path, *body)) in enumerate(routes):
                # Each search a query of its own: not an answer cached before the stop (by this loop
                # or by the loader, which may have asked the same within the cache's second).
                spec = (method, re.sub(r"q=(\w+)", rf"q=\g<1>{i}", str(path)), *body)
                status, seconds, retry_after = probe(session, at, token, spec)
                assert (status, retry_after) == (503, "1"), spec
                assert seconds < 1.5, (spec, seconds)
            private_postgres.start()
            deadline = time.monotonic() + 15
            pending = list(routes)
            while pending:  # every route recovers by itself
                assert time.monotonic() < deadline, pending
                pending = [(at, spec) for at, spec in pending if probe(session, at, token, spec)[0] >= 500]
                time.sleep(0.2)
            stop.set()
            loader.join()
            assert statuses and {s for s in statuses if s >= 500} <= {503}, sorted(set(statuses))
        finally:
            stop.set()  # the loader stops, whatever failed


def test_an_exhausted_writers_pool_is_a_quick_503_and_leaves_the_searches_answering(
    seeded_url: str, settings: Settings, conn: Connection
) -> None:
    """Both of the writers' pooled connections held by upvotes waiting on a lock: a further write
    answers 503 after DB_POOL_TIMEOUT_MS, not after the pool's default 30 s; a search, which has
    connections of its own even with no replica, still answers."""
    token = mint_token(3, settings.jwt_secret)
    pool_of_two = {"DB_POOL_MIN_SIZE": "2", "DB_POOL_MAX_SIZE": "2", "DB_POOL_TIMEOUT_MS": "1000"}
    with api_process(seeded_url, settings, **pool_of_two) as base, conn.transaction():
        conn.execute("LOCK TABLE project_upvotes IN ACCESS EXCLUSIVE MODE")
        with ThreadPoolExecutor(2) as pool:
            held = [pool.submit(probe, requests.Session(), base, token, ("PUT", f"/api/projects/{p}/upvote"))
                    for p in (5, 6)]  # fmt: skip
            time.sleep(0.3)  # both are waiting for the lock, each on a pooled connection
            for q in ("zzqx", "postgress", "tracker"):  # distinct: the answer cache cannot serve them
                assert probe(requests.Session(), base, token, ("GET", f"/api/search?q={q}"))[0] == 200
            # and the writers' connections were held all along:
            message = ("POST", "/api/messages", {"recipient_id": 4, "body": "hello"})
            status, seconds, retry_after = probe(requests.Session(), base, token, message)
            assert (status, retry_after) == (503, "1")
            assert seconds < 1.5
            assert [f.result()[0] for f in held] == [503, 503]  # the lock wait is bounded too


# --- no busy loop -------------------------------------------------------------------------------


def commits_per_second(conn: Connection, dbname: str, seconds: float) -> float:
    def commits() -> int:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        return int(one(conn, "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", dbname))

    before = commits()
    time.sleep(seconds)
    return (commits() - before) / seconds


REFRESHER_CLIENTS = ("folder", "invalidator", "listener", "refresh")  # a connection each (services/refresher)


def wait_for_refreshers(conn: Connection, dbname: str, count: int) -> None:
    """Until `count` refreshers have each opened all their connections: on a busy machine a
    process's start (its imports) can take longer than a fixed sleep allowed."""
    deadline = time.monotonic() + 60
    while True:
        rows = conn.execute(
            "SELECT application_name, count(*) FROM pg_stat_activity WHERE datname = %s GROUP BY 1", (dbname,)
        ).fetchall()
        opened = {str(name): int(n) for name, n in rows}
        if all(opened.get(f"denorm-refresher-{client}", 0) >= count for client in REFRESHER_CLIENTS):
            return
        assert time.monotonic() < deadline, opened
        time.sleep(0.1)


def test_refreshers_waiting_on_a_claimed_view_do_not_spin(seeded_url: str, settings: Settings) -> None:
    """A due view whose claim another holds: each refresher waits a poll interval between looks, so
    two cost about twice one (they woke every 10 ms: 122 transactions a second became 1,302). The
    bound is three times: each process's periodic work varies within the 4 s window, and two took
    1.8 to 2.65 times one in runs on a 2-core machine; a busy loop is ten times."""
    dbname = psycopg.conninfo.conninfo_to_dict(seeded_url)["dbname"]
    env = cli_env(DATABASE_URL=seeded_url, REDIS_KEY_PREFIX=settings.redis_key_prefix, REFRESHER_METRICS_PORT="0",
                  LOG_LEVEL="ERROR")  # fmt: skip
    rates = []
    with psycopg.connect(seeded_url, autocommit=True) as watcher, psycopg.connect(seeded_url) as holder:
        for count in (1, 2):
            holder.execute(
                "UPDATE mv_refresh_queue SET status = 'pending', next_attempt_at = NULL, "
                "first_requested_at = now() - interval '1 h', last_refreshed_at = now() - interval '1 h'"
            )
            holder.commit()
            holder.execute("SELECT 1 FROM mv_refresh_claims FOR UPDATE")  # held, as by a refresh in progress
            procs = [subprocess.Popen([*DENORM, "refresher"], env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL) for _ in range(count)]  # fmt: skip
            try:
                wait_for_refreshers(watcher, str(dbname), count)
                time.sleep(2)  # past their first looks, and waiting
                rates.append(commits_per_second(watcher, str(dbname), 4))
            finally:
                for proc in procs:
                    proc.terminate()
                for proc in procs:
                    proc.wait(timeout=30)
                holder.rollback()
    one_rate, two_rate = rates
    assert two_rate <= 3 * one_rate, rates
    assert one_rate < 60, rates  # the fold (2 a second), the drain (10), the loop's looks (5), the gauges


# --- the forum is for members; an intro request is asked once ----------------------------------


def test_only_members_write_in_a_chains_forum(seeded_url: str, settings: Settings, conn: Connection) -> None:
    slug = one(conn, "SELECT slug FROM chains ORDER BY id LIMIT 1")
    chain = one(conn, "SELECT id FROM chains WHERE slug = %s", slug)
    outsider = one(conn, "SELECT min(id) FROM users u WHERE NOT EXISTS (SELECT 1 FROM chain_members m "
                         "WHERE m.chain_id = %s AND m.user_id = u.id)", chain)  # fmt: skip
    thread = one(conn, "SELECT min(id) FROM forum_threads WHERE chain_id = %s", chain)
    before = one(conn, WRITTEN)
    me = auth(settings, outsider)
    with in_process(settings) as client:
        assert client.post(f"/api/chains/{slug}/threads", json={"title": "t"}, headers=me).status_code == 403
        assert client.post(f"/api/threads/{thread}/posts", json={"body": "b"}, headers=me).status_code == 403
        assert client.post("/api/chains/no-such-chain/threads", json={"title": "t"}, headers=me).status_code == 404
        assert client.post("/api/threads/999999/posts", json={"body": "b"}, headers=me).status_code == 404
        assert one(conn, WRITTEN) == before
        assert client.put(f"/api/chains/{slug}/membership", headers=me).status_code == 200
        assert client.post(f"/api/chains/{slug}/threads", json={"title": "t"}, headers=me).status_code == 201
        assert client.post(f"/api/threads/{thread}/posts", json={"body": "b"}, headers=me).status_code == 201


def test_a_duplicate_pending_intro_request_is_a_409_that_writes_nothing(
    seeded_url: str, settings: Settings, conn: Connection
) -> None:
    me = auth(settings, 3)
    with in_process(settings) as client:
        for project in (None, 7):
            body = {"target_id": 150, "project_id": project, "message": "hello"}
            first = client.post("/api/intro-requests", json=body, headers=me)
            assert first.status_code == 201, first.text
            before = one(conn, "SELECT count(*) FROM intro_requests")
            again = client.post("/api/intro-requests", json={**body, "message": "hello again"}, headers=me)
            assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
            assert one(conn, "SELECT count(*) FROM intro_requests") == before
        # Answered, it may be asked again.
        intro = first.json()["id"]
        assert client.post(f"/api/intro-requests/{intro}/decline", headers=auth(settings, 150)).status_code == 200
        assert client.post("/api/intro-requests", json=body, headers=me).status_code == 201
    # Plain SQL is held to it too.
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("INSERT INTO intro_requests (requester_id, target_id, project_id) VALUES (3, 150, NULL)")


# --- operators' surface -------------------------------------------------------------------------


def test_the_docs_are_on_the_admin_port_and_on_the_public_one_only_where_a_setting_allows(
    settings: Settings,
) -> None:
    production = settings.model_copy(update={"environment": "production", "jwt_secret": "s" * 40})
    for overrides, public in (({}, False), ({"api_docs": True}, True)):
        with TestClient(create_app(production.model_copy(update=overrides))) as client:
            for path in ("/docs", "/redoc", "/openapi.json"):
                assert (client.get(path).status_code == 200) is public, (overrides, path)
                assert client.get(admin(path)).status_code == 200, (overrides, path)
    with TestClient(create_app(settings)) as client:  # ENVIRONMENT=test: served
        assert client.get("/openapi.json").status_code == 200


def test_operators_routes_answer_on_the_admin_port_only_and_it_answers_nothing_else(settings: Settings) -> None:
    """/metrics and /api/admin/* are a 404 on the public port, like an unknown path; on the admin
    port they answer, and a client's route is the 404. The probes answer on both."""
    with in_process(settings) as client:
        unknown = client.get("/no-such-path")
        for path in ("/metrics", REFRESH_STATUS):
            public = client.get(path)
            assert (public.status_code, public.json()) == (404, unknown.json()), path
            assert client.get(admin(path)).status_code == 200, path
        for path in ("/api/projects", "/api/leaderboard/users", "/api/search?q=redis"):
            assert client.get(path).status_code == 200
            assert client.get(admin(path)).status_code == 404, path
        for path in ("/healthz", "/readyz"):
            assert client.get(path).status_code == client.get(admin(path)).status_code == 200


def test_the_admin_port_is_a_listening_port_of_its_own(seeded_url: str, settings: Settings) -> None:
    """`denorm api --admin-port` listens on both ports, the operators' routes on the second only."""
    admin_port = free_port()
    with api_process(seeded_url, settings, API_ADMIN_PORT=str(admin_port)) as base, requests.Session() as session:
        operators = f"http://127.0.0.1:{admin_port}"
        assert session.get(f"{base}/metrics").status_code == 404
        assert session.get(f"{base}{REFRESH_STATUS}").status_code == 404
        metrics = session.get(f"{operators}/metrics")
        assert metrics.status_code == 200 and "denorm_api_request_duration_seconds" in metrics.text
        assert session.get(f"{operators}{REFRESH_STATUS}").json()["read_models"]
        assert session.get(f"{operators}/api/projects").status_code == 404
        assert session.get(f"{base}/api/projects").status_code == 200


# --- least privilege ----------------------------------------------------------------------------


def test_the_api_serves_as_a_role_that_cannot_change_the_schema(
    seeded_url: str, settings: Settings, admin_conn: Connection, conn: Connection
) -> None:
    """db/roles/service_role.sql, applied with psql as the docs say: the API runs on it (reads,
    upvotes, writes that fire every ledger trigger), and the role can alter nothing."""
    role = f"denorm_api_{uuid.uuid4().hex[:8]}"
    slug = one(conn, "SELECT slug FROM chains ORDER BY id LIMIT 1")
    as_role = make_role(seeded_url, role)
    token = mint_token(3, settings.jwt_secret)
    with api_process(as_role, settings) as base, requests.Session() as session:
        for spec, ok in ((("PUT", "/api/projects/5/upvote"), 200), (("DELETE", "/api/projects/5/upvote"), 200),
                         (("POST", "/api/messages", {"recipient_id": 4, "body": "hi"}), 201),
                         (("POST", "/api/projects", {"title": "t", "tags": ["x"]}), 201),
                         (("PUT", f"/api/chains/{slug}/membership"), 200),
                         (("GET", "/api/projects"), 200), (("GET", "/api/search?q=redis"), 200),
                         (("GET", "/api/users/dashboard"), 200)):  # fmt: skip
            assert probe(session, base, token, spec)[0] == ok, spec
    with psycopg.connect(as_role, autocommit=True) as conn:
        for statement in ("CREATE TABLE intruder (id int)", "ALTER TABLE projects ADD COLUMN z int",
                          "DROP TABLE messages", "TRUNCATE project_upvotes", "DROP FUNCTION upvote_set",
                          "REFRESH MATERIALIZED VIEW mv_leaderboard_projects",
                          "SELECT refresh_materialized_view('mv_leaderboard_projects')"):  # fmt: skip
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement.encode())
    drop_role(seeded_url, admin_conn, role)


def test_the_refresher_and_the_reconciler_run_as_a_maintainer_that_cannot_change_the_schema(
    seeded_url: str, admin_conn: Connection, conn: Connection
) -> None:
    role = f"denorm_maintainer_{uuid.uuid4().hex[:8]}"
    as_role = make_role(seeded_url, role, "-v", "maintains=on")
    env = cli_env(DATABASE_URL=as_role, LOG_LEVEL="ERROR")
    try:
        # Work for every kind of maintenance: a fold, and a refresh of the project leaderboard.
        conn.execute("DELETE FROM project_upvotes WHERE project_id = 7")
        since = one(conn, "SELECT now()")
        assert run_denorm(["refresher", "--once"], env).returncode == 0
        assert one(conn, "SELECT count(*) FROM mv_refresh_log WHERE view_name = 'mv_leaderboard_projects' "
                         "AND status = 'completed' AND refresh_started_at >= %s", since) == 1  # fmt: skip
        assert drifted(conn) == {}
        # Drift, repaired by the reconciler on the same role; the refresher folds the corrections.
        conn.execute("UPDATE project_counters_base SET upvote_count = upvote_count + 2 WHERE project_id = 8")
        conn.execute("UPDATE mv_chain_directory SET member_count = member_count + 1")
        assert run_denorm(["reconcile", "--repair"], env).returncode == 0
        assert run_denorm(["refresher", "--once"], env).returncode == 0
        assert drifted(conn) == {}
        with psycopg.connect(as_role, autocommit=True) as maintainer:
            for statement in ("CREATE TABLE intruder (id int)", "ALTER TABLE projects ADD COLUMN z int",
                              "DROP TABLE messages", "TRUNCATE project_upvotes",
                              "REFRESH MATERIALIZED VIEW mv_leaderboard_projects"):  # fmt: skip
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    maintainer.execute(statement.encode())
            # The owner's function refreshes materialized views, nothing else.
            with pytest.raises(psycopg.errors.UndefinedTable):
                maintainer.execute("SELECT refresh_materialized_view('projects; DROP TABLE users')")
    finally:
        drop_role(seeded_url, admin_conn, role)


# --- rate limits --------------------------------------------------------------------------------

LIMITED = {"API_RATE_WRITES_PER_TOKEN": "5/minute", "API_RATE_WRITES_PER_ADDRESS": "8/minute",
           "API_RATE_SEARCH_MISSES_PER_TOKEN": "1000/second",
           "API_RATE_SEARCH_MISSES_PER_ADDRESS": "6/minute"}  # fmt: skip


def test_a_write_counts_every_limit_in_one_round_trip_and_the_refusals_are_metered(
    seeded_url: str, settings: Settings, private_redis: PrivateRedis
) -> None:
    """Three limits (two per token, one per address), one script call to Redis per write; the 429s
    and the checks counted per process show on /metrics."""
    limited = settings.model_copy(update={
        "database_url": seeded_url, "redis_url": private_redis.url, "api_access_log": False,
        "api_rate_writes_per_token": "3/minute;100/hour", "api_rate_writes_per_address": "1000/minute",
    })  # fmt: skip
    server = redis.Redis.from_url(private_redis.url)
    with TestClient(create_app(limited)) as client:
        me = auth(settings, 7)  # one token: the limits count per token
        statuses = [client.put(f"/api/projects/{p}/upvote", headers=me).status_code for p in (1, 2, 3)]
        server.config_resetstat()
        statuses.append(client.put("/api/projects/4/upvote", headers=me).status_code)
        assert statuses == [200, 200, 200, 429]
        # The refused write did nothing but count its three limits, in one script call.
        calls = {k: v["calls"] for k, v in server.info("commandstats").items() if "resetstat" not in k}
        assert calls == {"cmdstat_evalsha": 1, "cmdstat_incr": 3}
        assert 'denorm_api_rate_limited_total{kind="writes"} 1.0' in client.get(admin("/metrics")).text
        private_redis.stop()
        assert client.put("/api/projects/5/upvote", headers=auth(settings, 8)).status_code == 200
        assert "denorm_api_rate_limit_local_checks_total 1.0" in client.get(admin("/metrics")).text


def test_writes_and_search_misses_past_their_limits_get_429_shared_across_processes_and_without_redis(
    seeded_url: str, settings: Settings, conn: Connection, private_redis: PrivateRedis
) -> None:
    """Two API processes share the limits through Redis; with Redis gone, each still holds them."""
    limited = {**LIMITED, "REDIS_URL": private_redis.url, "REDIS_BREAKER_COOLDOWN_MS": "60000"}
    token, other = mint_token(3, settings.jwt_secret), mint_token(4, settings.jwt_secret)
    message = ("POST", "/api/messages", {"recipient_id": 5, "body": "hi"})
    with contextlib.ExitStack() as stack, requests.Session() as session:
        apis = [stack.enter_context(api_process(seeded_url, settings, **limited)) for _ in range(2)]
        before = one(conn, "SELECT count(*) FROM messages")
        assert [probe(session, apis[0], other, message)[0] for _ in range(3)] == [201] * 3
        answers = [probe(session, apis[i % 2], token, message) for i in range(8)]
        assert [a[0] for a in answers] == [201] * 5 + [429] * 3  # per token, across both processes
        assert all(a[2] == "60" for a in answers[5:])  # Retry-After: the window
        assert one(conn, "SELECT count(*) FROM messages") == before + 8
        # The other token has writes left, but the address has used its 8 (refused ones count).
        assert probe(session, apis[1], other, message)[0] == 429
        # Search misses per address: new queries miss the answer cache; a repeat is a hit.
        misses = [probe(session, apis[i % 2], token, ("GET", f"/api/search?q=redis{i}"))[0] for i in range(8)]
        assert misses == [200] * 6 + [429] * 2
        assert probe(session, apis[0], token, ("GET", "/api/search?q=redis0"))[0] == 200  # cached
        # Redis gone: each process counts on its own, and still refuses past the limit.
        private_redis.stop()
        lone = stack.enter_context(api_process(seeded_url, settings, **limited))
        third = mint_token(6, settings.jwt_secret)
        assert [probe(session, lone, third, ("PUT", f"/api/projects/{p}/upvote"))[0]
                for p in range(10, 18)] == [200] * 5 + [429] * 3  # fmt: skip
