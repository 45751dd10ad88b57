"""Schemathesis against the running API, with a valid token and without one: no 5xx, no answer that
breaks the schema."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

from denorm.auth import mint_token
from denorm.config import DEV_JWT_SECRET
from denorm.seed import SCALES, seed
from loadtest.localproc import free_port, wait_ready
from tests.conftest import TEST_REDIS_URL, AdminConnection, scratch_database
from tests.support import DENORM, cli_env, settle

USER = 3


@pytest.fixture(scope="module")
def api_url(admin_conn: AdminConnection, template_database: str) -> Iterator[str]:
    with scratch_database(admin_conn, "fuzz", template_database) as url:
        seed(url, SCALES["tiny"], seed=13)
        with psycopg.connect(url, autocommit=True) as conn:
            settle(conn)
        port = free_port()
        prefix = f"fuzz-{port}:"
        env = cli_env(DATABASE_URL=url, JWT_SECRET=DEV_JWT_SECRET, API_ACCESS_LOG="false", REDIS_KEY_PREFIX=prefix)
        proc = subprocess.Popen([*DENORM, "api", "--port", str(port), "--admin-port", "0"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base, proc)
            yield base
        finally:
            proc.terminate()
            proc.wait(timeout=20)
            client = redis.Redis.from_url(TEST_REDIS_URL)
            for key in client.scan_iter(match=f"{prefix}*"):
                client.delete(key)
            client.close()


def fuzzer(operation: Any, api_url: str, headers: dict[str, str]) -> Any:
    """A hypothesis test of one operation, its requests sent with these headers."""

    @given(case=operation.as_strategy())
    @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def fuzz(case: Any) -> None:
        case.call_and_validate(
            base_url=api_url,
            headers=headers,
            checks=[checks.not_a_server_error, checks.response_schema_conformance, checks.content_type_conformance],
        )

    return fuzz


def test_no_server_error_and_no_answer_outside_the_schema(api_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    token = mint_token(USER, DEV_JWT_SECRET)
    tested = []
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # an invalid operation raises here, failing the test

        # With a valid token, and without one (a 401 where the route needs it, documented as such).
        for headers in ({"Authorization": f"Bearer {token}"}, {}):
            fuzzer(operation, api_url, headers)()
        tested.append(operation.label)
    assert len(tested) >= 29, tested  # every route of the contract, operations included
