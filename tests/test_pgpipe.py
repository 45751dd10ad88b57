"""The pipelined reads (services/api/pgpipe.py) on a real Postgres: answers reach their own callers, an
error fails only its read, and a lane that loses its connection comes back by itself."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import errors

from loadtest.localproc import free_port
from services.api.pgpipe import Behind, PipelinedReads, Statement, encode
from services.api.pools import open_pipeline

QUERIES = {
    "echo": b"SELECT %(a)s::bigint * 2, %(b)s::text || '!', %(a)s::bigint",
    "upto": b"SELECT g FROM generate_series(1, %(n)s::int) g WHERE g > %(skip)s::int LIMIT 1",
    "divide": b"SELECT (100 / %(d)s::int)::text",
    "sleep": b"SELECT pg_sleep(%(s)s::float8)::text",
    "percent": b"SELECT 'a%%b', %(x)s::text",
}


def run(
    url: str, scenario: Callable[[PipelinedReads], Awaitable[None]], lanes: int = 2, timeout_ms: int = 5000
) -> None:
    async def main() -> None:
        pipe = await open_pipeline(url, "test", QUERIES, lanes, timeout_ms)
        try:
            await scenario(pipe)
        finally:
            await pipe.close()

    asyncio.run(main())


def test_placeholders_become_numbered_slots_in_first_use_order() -> None:
    st_ = Statement.compile("echo", QUERIES["echo"])
    assert st_.sql == b"SELECT $1::bigint * 2, $2::text || '!', $1::bigint"
    assert st_.params == ("a", "b")
    assert Statement.compile("percent", QUERIES["percent"]).sql == b"SELECT 'a%b', $1::text"


def test_parameters_in_text_form() -> None:
    assert encode(None) is None
    assert encode(True) == b"t" and encode(False) == b"f"
    assert encode(-12) == b"-12"
    assert encode(math.inf) == b"inf" and encode(0.5) == b"0.5"
    assert encode(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == b"2026-01-02T03:04:05+00:00"
    with pytest.raises(psycopg.DataError):
        encode("a\x00b")
    with pytest.raises(TypeError):
        encode([1, 2])


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(calls=st.lists(st.tuples(st.integers(-(2**40), 2**40), st.text(max_size=30).filter(lambda s: "\x00" not in s)),
                      min_size=1, max_size=120))  # fmt: skip
def test_concurrent_reads_each_get_their_own_answer(database_url: str, calls: list[tuple[int, str]]) -> None:
    async def scenario(pipe: PipelinedReads) -> None:
        rows = await asyncio.gather(*(pipe.fetch("echo", {"a": a, "b": b}) for a, b in calls))
        assert rows == [(str(a * 2).encode(), (b + "!").encode(), str(a).encode()) for a, b in calls]
        assert pipe.stats.writes <= pipe.stats.reads  # several reads per write when they come together

    run(database_url, scenario)


def test_no_row_is_none_and_null_is_none(database_url: str) -> None:
    async def scenario(pipe: PipelinedReads) -> None:
        assert await pipe.fetch("upto", {"n": 3, "skip": 5}) is None
        assert await pipe.fetch("upto", {"n": 3, "skip": 1}) == (b"2",)
        assert await pipe.fetch("echo", {"a": None, "b": None}) == (None, None, None)

    run(database_url, scenario)


def test_an_error_fails_its_own_read_and_no_other(database_url: str) -> None:
    """Reads that arrive together share a batch; the ones after a failed read are sent again."""

    async def scenario(pipe: PipelinedReads) -> None:
        divisors = [(i % 7) - 3 for i in range(200)]  # a zero every seventh read
        results = await asyncio.gather(*(pipe.fetch("divide", {"d": d}) for d in divisors), return_exceptions=True)
        for d, result in zip(divisors, results, strict=True):
            if d == 0:
                assert isinstance(result, errors.DivisionByZero)
            else:
                assert result == (str(math.trunc(100 / d)).encode(),)  # Postgres truncates toward zero
        assert await pipe.fetch("echo", {"a": 1, "b": "x"}) == (b"2", b"x!", b"1")

    run(database_url, scenario)


def test_a_read_past_the_statement_timeout_is_cancelled_and_the_lane_goes_on(database_url: str) -> None:
    async def scenario(pipe: PipelinedReads) -> None:
        slow = asyncio.ensure_future(pipe.fetch("sleep", {"s": 2}))
        quick = [pipe.fetch("echo", {"a": i, "b": ""}) for i in range(5)]
        with pytest.raises(errors.QueryCanceled):
            await slow
        assert [r[0] for r in await asyncio.gather(*quick) if r] == [str(i * 2).encode() for i in range(5)]

    run(database_url, scenario, lanes=1, timeout_ms=200)


def _backends(url: str) -> list[int]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = 'denorm-test'").fetchall()
    return [int(r[0]) for r in rows]


def test_a_lane_whose_connection_dies_fails_its_reads_and_reconnects(database_url: str) -> None:
    async def scenario(pipe: PipelinedReads) -> None:
        assert pipe.up == 2
        in_flight = [asyncio.ensure_future(pipe.fetch("sleep", {"s": 1})) for _ in range(2)]
        await asyncio.sleep(0.2)
        with psycopg.connect(database_url, autocommit=True) as conn:
            for pid in _backends(database_url):
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        for read in in_flight:
            with pytest.raises(psycopg.OperationalError):
                await read
        for _ in range(100):  # back within a few backoff steps
            if pipe.up == 2:
                break
            await asyncio.sleep(0.1)
        assert pipe.up == 2 and pipe.stats.reconnects >= 2
        assert await pipe.fetch("echo", {"a": 4, "b": "y"}) == (b"8", b"y!", b"4")

    run(database_url, scenario)


def test_an_unanswered_lane_is_failed_by_the_watchdog(database_url: str) -> None:
    """No statement_timeout on this pipe: the watchdog alone bounds the wait (a hung server)."""

    async def scenario() -> None:
        pipe = PipelinedReads(database_url, QUERIES, lanes_wanted=1, timeout=0.2)
        await pipe.open()
        try:
            with pytest.raises(psycopg.OperationalError, match="no answer"):
                await pipe.fetch("sleep", {"s": 5})
        finally:
            await pipe.close()

    asyncio.run(scenario())


def test_a_request_that_goes_away_does_not_disturb_the_others(database_url: str) -> None:
    async def scenario(pipe: PipelinedReads) -> None:
        gone = asyncio.ensure_future(pipe.fetch("sleep", {"s": 0.2}))
        after = asyncio.ensure_future(pipe.fetch("echo", {"a": 5, "b": "z"}))
        await asyncio.sleep(0.05)
        gone.cancel()
        assert await after == (b"10", b"z!", b"5")

    run(database_url, scenario, lanes=1)


def test_without_postgres_a_read_fails_at_once() -> None:
    async def scenario() -> None:
        url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
        pipe = PipelinedReads(url + "?connect_timeout=1", QUERIES, lanes_wanted=2)
        await pipe.open()
        try:
            assert pipe.up == 0
            with pytest.raises(psycopg.OperationalError, match="no connection"):
                await asyncio.wait_for(pipe.fetch("echo", {"a": 1, "b": ""}), 1)
        finally:
            await pipe.close()

    asyncio.run(scenario())


def test_before_its_tables_exist_the_pipe_waits_and_then_comes_up_by_itself(database_url: str) -> None:
    """An API started before the migrations: its statements cannot be prepared yet."""

    async def scenario() -> None:
        pipe = await open_pipeline(database_url, "test", {"late": b"SELECT count(*)::text FROM later_table"}, 1, 5000)
        try:
            assert pipe.up == 0
            with pytest.raises(psycopg.OperationalError, match="no connection"):
                await pipe.fetch("late", {})
            with psycopg.connect(database_url, autocommit=True) as conn:
                conn.execute("CREATE TABLE later_table (id int)")
            for _ in range(100):
                if pipe.up:
                    break
                await asyncio.sleep(0.1)
            assert await pipe.fetch("late", {}) == (b"0",)
        finally:
            await pipe.close()

    asyncio.run(scenario())


def test_a_read_that_needs_a_replay_position_goes_only_to_a_lane_past_it(database_url: str) -> None:
    """Read-your-writes on replicas (services/api/replica.py): each lane knows how far its own
    server had replayed; a read that needs more goes to no other lane, and says Behind."""

    async def scenario(pipe: PipelinedReads) -> None:
        pipe.lanes[0].replay_lsn, pipe.lanes[1].replay_lsn = -1, 50  # lane 0 never asked yet
        sent: list[int] = []
        for lane in pipe.lanes:

            def recorded(read: Any, lane: Any = lane, submit: Any = lane.submit) -> None:
                sent.append(lane.index)
                submit(read)

            lane.submit = recorded  # type: ignore[method-assign]
        assert await pipe.fetch("echo", {"a": 1, "b": "x"}, min_replay_lsn=40) == (b"2", b"x!", b"1")
        assert sent == [1]
        with pytest.raises(Behind):
            await pipe.fetch("echo", {"a": 1, "b": "x"}, min_replay_lsn=80)
        assert sent == [1]  # nothing was sent for it
        assert await pipe.fetch("echo", {"a": 2, "b": "y"}) == (b"4", b"y!", b"2")  # no need: any lane

    run(database_url, scenario)
