"""The fixtures themselves: isolation between tests is what every other test relies on."""

from __future__ import annotations

import psycopg
import redis

from denorm.config import Settings
from tests.conftest import TEST_REDIS_URL, delete_keys_with_prefix
from tests.support import Connection, applied_versions, table_exists


def test_database_url_is_a_private_migrated_copy(database_url: str, conn: Connection) -> None:
    assert applied_versions(conn) != []
    row = conn.execute("SELECT current_database(), count(*) FROM users").fetchone()
    assert row is not None
    assert row[0].startswith("test_")
    assert row[1] == 0
    with psycopg.connect(database_url) as other:
        other_db = other.execute("SELECT current_database()").fetchone()
    assert other_db is not None and other_db[0] == row[0]


def test_writes_do_not_leak_into_the_next_test_part_1(conn: Connection) -> None:
    conn.execute("INSERT INTO users (username, display_name) VALUES ('leak', 'Leak')")


def test_writes_do_not_leak_into_the_next_test_part_2(conn: Connection) -> None:
    row = conn.execute("SELECT count(*) FROM users WHERE username = 'leak'").fetchone()
    assert row is not None and row[0] == 0


def test_empty_database_has_nothing(empty_database_url: str) -> None:
    with psycopg.connect(empty_database_url) as conn:
        assert not table_exists(conn, "schema_migrations")
        assert not table_exists(conn, "users")


def test_settings_point_at_this_tests_services(settings: Settings, database_url: str, redis_prefix: str) -> None:
    assert settings.database_url == database_url
    assert settings.read_url == database_url
    assert settings.redis_url == TEST_REDIS_URL
    assert settings.redis_key_prefix == redis_prefix
    assert settings.environment == "test"
    settings.check_production_safety()


def test_redis_cleanup_deletes_only_the_prefix(redis_client: redis.Redis, redis_prefix: str) -> None:
    neighbour = f"{redis_prefix[:-1]}-neighbour:"  # shares all but the last character
    redis_client.mset({f"{redis_prefix}{i}": i for i in range(1200)})
    redis_client.set(f"{neighbour}kept", 1)
    try:
        assert delete_keys_with_prefix(redis_client, redis_prefix) == 1200
        assert list(redis_client.scan_iter(match=f"{redis_prefix}*")) == []
        assert redis_client.get(f"{neighbour}kept") == b"1"
    finally:
        redis_client.delete(f"{neighbour}kept")
