"""The test harness: real Postgres and real Redis, each test in its own database and key space.

A migrated template database is built once per session; every test that asks for ``database_url``
gets a fresh copy of it (``CREATE DATABASE ... TEMPLATE``), dropped with ``WITH (FORCE)`` afterwards.
Redis is shared, so each test gets a unique key prefix and its keys are deleted at teardown.

Nothing here is mocked. When Postgres or Redis cannot be reached the whole session stops with an
error: a suite that silently skips its database tests proves nothing.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import TupleRow

from bench.faults import PrivatePostgres, PrivateRedis, PrivateReplica
from denorm.config import Settings
from denorm.maintenance import drain
from denorm.migrate import ensure_database, migrate
from denorm.seed import SCALES, seed
from services.reconciler.redis_sets import glob_escape

# The processes the tests start (the CLI, the API, the refresher) inherit it: the development
# secret is accepted only where ENVIRONMENT says development or test.
os.environ.setdefault("ENVIRONMENT", "test")
# The tests drive many writes and searches from one address and a few tokens, faster than any user:
# the rate limits are out of their way, but for the tests of the limits themselves.
for _limit in ("API_RATE_WRITES_PER_TOKEN", "API_RATE_WRITES_PER_ADDRESS", "API_RATE_SEARCH_MISSES_PER_TOKEN",
               "API_RATE_SEARCH_MISSES_PER_ADDRESS"):  # fmt: skip
    os.environ.setdefault(_limit, "1000000/second")
TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

CONNECT_TIMEOUT_SECONDS = 5

AdminConnection = psycopg.Connection[TupleRow]


def database_url_for(dbname: str, base: str = TEST_DATABASE_URL) -> str:
    """``base`` pointing at another database; a URL stays a URL, a key=value conninfo stays one."""
    parts = urlsplit(base)
    if parts.scheme in ("postgres", "postgresql"):
        return urlunsplit(parts._replace(path=f"/{dbname}"))
    return make_conninfo(base, dbname=dbname)


def unique_name(kind: str) -> str:
    """A database name no other test or session uses: lower case, well under 63 bytes."""
    return f"{kind}_{os.getpid()}_{uuid.uuid4().hex[:12]}"


def create_database(admin: AdminConnection, dbname: str, template: str = "template0") -> None:
    admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(dbname), sql.Identifier(template)))


def drop_database(admin: AdminConnection, dbname: str) -> None:
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))


@contextmanager
def scratch_database(admin: AdminConnection, kind: str, template: str = "template0") -> Iterator[str]:
    """A new database copied from ``template``, for the length of the ``with``; its URL."""
    name = unique_name(kind)
    create_database(admin, name, template=template)
    try:
        yield database_url_for(name)
    finally:
        drop_database(admin, name)


# The fixtures that start a Postgres cluster of the test's own: a test that uses one is marked
# `cluster`, which `make quick` leaves out.
PRIVATE_CLUSTER_FIXTURES = {"replicated", "private_postgres"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if PRIVATE_CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def services_available() -> None:
    """Stop the whole run, loudly, when Postgres or Redis cannot be reached: never skip."""
    try:
        psycopg.connect(TEST_DATABASE_URL, connect_timeout=CONNECT_TIMEOUT_SECONDS).close()
    except psycopg.OperationalError as exc:
        pytest.exit(f"Postgres is not reachable at TEST_DATABASE_URL={TEST_DATABASE_URL!r}: {exc}", 1)
    client = redis.Redis.from_url(TEST_REDIS_URL, socket_connect_timeout=CONNECT_TIMEOUT_SECONDS)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.exit(f"Redis is not reachable at TEST_REDIS_URL={TEST_REDIS_URL!r}: {exc}", 1)
    finally:
        client.close()


@pytest.fixture(scope="session")
def admin_conn(services_available: None) -> Iterator[AdminConnection]:
    """An autocommit connection to the maintenance database; creates and drops the test databases."""
    with psycopg.connect(TEST_DATABASE_URL, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="session")
def template_database(admin_conn: AdminConnection) -> Iterator[str]:
    """The name of a database migrated once per session, the template every test database copies."""
    name = unique_name("denorm_tpl")
    create_database(admin_conn, name)
    try:
        migrate(database_url_for(name), echo=lambda _message: None)
        # Nobody may connect to it any more: a stray session would make every CREATE ... TEMPLATE fail.
        admin_conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(name)))
        yield name
    finally:
        drop_database(admin_conn, name)


@pytest.fixture
def database_url(admin_conn: AdminConnection, template_database: str) -> Iterator[str]:
    """A fresh, fully migrated database for this test only."""
    with scratch_database(admin_conn, "test", template_database) as url:
        yield url


@pytest.fixture
def empty_database_url(admin_conn: AdminConnection) -> Iterator[str]:
    """A fresh database with nothing in it, not even schema_migrations."""
    with scratch_database(admin_conn, "test") as url:
        yield url


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[TupleRow]]:
    """An autocommit connection to this test's migrated database."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection


def delete_keys_with_prefix(client: redis.Redis, prefix: str) -> int:
    """SCAN + DEL every key that starts with ``prefix``; how many were deleted."""
    deleted = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{glob_escape(prefix)}*", count=500):
        batch.append(key)
        if len(batch) >= 500:
            deleted += client.delete(*batch)
            batch.clear()
    if batch:
        deleted += client.delete(*batch)
    return deleted


@pytest.fixture
def redis_prefix(services_available: None) -> Iterator[str]:
    """A key prefix no other test uses; every key under it is deleted when the test ends."""
    prefix = f"test:{uuid.uuid4().hex}:"
    yield prefix
    client = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        delete_keys_with_prefix(client, prefix)
    finally:
        client.close()


@pytest.fixture
def redis_client(redis_prefix: str) -> Iterator[redis.Redis]:
    """A synchronous client on the test Redis; use keys that start with ``redis_prefix``."""
    client = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def settings(database_url: str, redis_prefix: str) -> Settings:
    """Settings for this test's database and Redis key space, whatever the environment says."""
    return Settings(
        database_url=database_url,
        database_read_url=None,
        redis_url=TEST_REDIS_URL,
        redis_key_prefix=redis_prefix,
        environment="test",
    )


@pytest.fixture(scope="session")
def small_dataset_url(admin_conn: AdminConnection, template_database: str) -> Iterator[str]:
    """The `small` dataset, seeded and with every view refreshed, once per session. Read only."""
    from denorm.seed import SCALES, seed
    from tests.support import settle

    with scratch_database(admin_conn, "small", template_database) as url:
        seed(url, SCALES["small"], seed=8)
        with psycopg.connect(url, autocommit=True) as conn:
            settle(conn)
        yield url


@pytest.fixture
def seeded_url(database_url: str, conn: psycopg.Connection[TupleRow]) -> str:
    """This test's database with the `tiny` dataset and every view refreshed."""
    from denorm.seed import SCALES, seed
    from tests.support import settle

    seed(database_url, SCALES["tiny"], seed=21)
    settle(conn)
    return database_url


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of this test's own (bench/faults.py), stopped when the test ends."""
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


REPLICA_DELAY_MS = 500


@pytest.fixture(scope="session")
def replicated() -> Iterator[tuple[str, str]]:
    """(primary URL, replica URL) of a seeded database; the replica 500 ms behind."""
    primary = PrivatePostgres(replicable=True)
    replica: PrivateReplica | None = None
    try:
        url = primary.url("denorm")
        ensure_database(url)
        migrate(url, echo=lambda _m: None)
        seed(url, SCALES["tiny"], seed=19)
        with psycopg.connect(url, autocommit=True) as conn:
            drain(conn, worker="test")
        replica = PrivateReplica(primary, apply_delay_ms=REPLICA_DELAY_MS)
        read_url = replica.url("denorm")
        deadline = time.monotonic() + 60
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("UPDATE users SET bio = 'replicated' WHERE id = 1")  # a commit for it to replay
        while True:  # until the replica accepts connections and has replayed a commit
            try:
                with psycopg.connect(read_url, connect_timeout=2) as conn:
                    if conn.execute("SELECT pg_last_xact_replay_timestamp() IS NOT NULL").fetchone() == (True,):
                        break
            except psycopg.OperationalError:
                pass
            assert time.monotonic() < deadline, "the replica did not come up"
            time.sleep(0.2)
        yield url, read_url
    finally:
        if replica is not None:
            replica.drop()
        primary.drop()
