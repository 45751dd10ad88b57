"""The system behind PgBouncer (Debian's, 1.18) in session mode (issue 19): the API on its own role,
the refresher and the reconciler on the maintainers', migrations as the owner, each through a
PgBouncer of the test's own. The API's session settings reach its sessions from the role, since a
PgBouncer drops the connection options the API sends (docs/deploy.md, "A pooler")."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import sql

from bench.faults import PrivatePgBouncer
from denorm.config import Settings
from services.api.app import create_app
from services.api.pools import OLTP_SETTINGS
from tests.conftest import TEST_REDIS_URL, AdminConnection
from tests.support import cli_env, drifted, drop_role, make_role, run_denorm
from tests.test_api import auth

Connection = psycopg.Connection[Any]


@pytest.fixture
def roles(seeded_url: str, admin_conn: AdminConnection) -> Iterator[tuple[str, str]]:
    """(the API's role, the maintainers' role), made by db/roles/service_role.sql as the docs say."""
    suffix = uuid.uuid4().hex[:8]
    api, maintainer = f"denorm_api_{suffix}", f"denorm_maintainer_{suffix}"
    try:
        make_role(seeded_url, api)
        make_role(seeded_url, maintainer, "-v", "maintains=on")
        yield api, maintainer
    finally:
        for role in (api, maintainer):
            drop_role(seeded_url, admin_conn, role)


def test_the_api_role_carries_the_api_session_settings(roles: tuple[str, str], conn: Connection) -> None:
    """One definition of the settings (services/api/pools.py); the role file must say the same."""
    api, maintainer = roles
    rows = conn.execute("SELECT r.rolname, s.setconfig FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole "
                        "WHERE r.rolname = ANY (%s)", ([api, maintainer],)).fetchall()  # fmt: skip
    found = {name: dict(item.split("=", 1) for item in config) for name, config in rows}
    assert found == {api: OLTP_SETTINGS}  # the maintainers' sessions keep the server's defaults


def test_every_service_works_through_pgbouncer_in_session_mode(
    seeded_url: str, roles: tuple[str, str], redis_prefix: str, conn: Connection
) -> None:
    api, maintainer = roles
    bouncers = [PrivatePgBouncer(seeded_url, role) for role in (api, maintainer, "postgres")]
    try:
        api_url, maintainer_url, owner_url = (b.url() for b in bouncers)
        with psycopg.connect(api_url) as through:  # the API's settings, from its role, past the pooler
            for name, value in OLTP_SETTINGS.items():
                assert through.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone() == (value,), name
        settings = Settings(database_url=api_url, redis_url=TEST_REDIS_URL, redis_key_prefix=redis_prefix,
                            environment="test", api_access_log=False)  # fmt: skip
        me = auth(settings, 3)
        with TestClient(create_app(settings)) as client:
            assert client.get("/readyz").json()["status"] == "ready"
            page = client.get("/api/projects", headers=me).json()["items"]  # pipelined, prepared statements
            item = next(p for p in page if not p["user_has_upvoted"])
            assert client.put(f"/api/projects/{item['id']}/upvote", headers=me).json()["upvoted"] is True
            made = client.post(f"/api/projects/{item['id']}/comments", json={"body": "pooled"}, headers=me).json()
            assert (
                client.get(f"/api/projects/{item['id']}", headers=me).json()["comments"]["items"][0]["id"] == made["id"]
            )
            assert client.get("/api/search", params={"q": "redis"}).status_code == 200  # the pool's path
            assert client.get("/api/users/dashboard", headers=me).status_code == 200
        assert run_denorm(["migrate"], cli_env(DATABASE_URL=owner_url)).returncode == 0
        folded = run_denorm(["refresher", "--once"], cli_env(DATABASE_URL=maintainer_url, LOG_LEVEL="ERROR"))
        assert folded.returncode == 0, folded.stderr[-2000:]
        env = cli_env(DATABASE_URL=maintainer_url, REDIS_KEY_PREFIX=redis_prefix, LOG_LEVEL="ERROR")
        checked = run_denorm(["reconcile", "--dry-run"], env)
        assert checked.returncode == 0, checked.stderr[-2000:]
        assert json.loads(checked.stdout.strip().splitlines()[-1])["drift_rows"] == 0
        assert drifted(conn) == {}
    finally:
        for bouncer in bouncers:
            bouncer.stop()


def test_transaction_mode_of_this_pgbouncer_cannot_carry_the_prepared_reads(
    seeded_url: str, roles: tuple[str, str], redis_prefix: str
) -> None:
    """Why the docs ask for session mode with PgBouncer before 1.21: the short reads are prepared
    once per connection (services/api/pgpipe.py, psycopg's prepare_threshold=0), and in transaction mode
    the next transaction may run on another server connection, which never saw them."""
    version = subprocess.run(["pgbouncer", "--version"], capture_output=True, text=True, check=True).stdout
    major, minor = (int(x) for x in version.split()[1].split(".")[:2])
    assert (major, minor) < (1, 21), "a PgBouncer that carries prepared statements: test transaction mode instead"
    api, _ = roles
    # Server connections taken in turn (not the most recent first), several kept open: each
    # transaction of a lane lands on another one, as under a busy pooler.
    bouncer = PrivatePgBouncer(seeded_url, api, pool_mode="transaction", server_round_robin="1", min_pool_size="6")
    try:
        settings = Settings(database_url=bouncer.url(), redis_url=TEST_REDIS_URL, redis_key_prefix=redis_prefix,
                            environment="test", api_access_log=False, api_read_lanes=2)  # fmt: skip
        with TestClient(create_app(settings)) as client, ThreadPoolExecutor(8) as pool:
            # Many at once, so that the pooler hands the lanes' transactions to other server connections.
            answers = list(pool.map(lambda _: client.get("/api/leaderboard/projects").status_code, range(200)))
        # Honest about it: some answers are 503, none a 500.
        assert 503 in answers and 500 not in answers, sorted(set(answers))
    finally:
        bouncer.stop()
