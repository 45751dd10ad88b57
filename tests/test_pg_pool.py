"""The API's connection pool (services/api/pools.py GatedPool) on a real Postgres: width, timeouts, resets."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from psycopg_pool import PoolTimeout

from services.api.pools import GatedPool, open_pool


def test_more_requests_than_connections_all_finish_and_never_exceed_the_pool(database_url: str) -> None:
    async def scenario() -> None:
        pool = await open_pool(database_url, "test", 1, 3)
        in_use = peak = 0

        async def request(i: int) -> int:
            nonlocal in_use, peak
            async with pool.connection() as conn:
                in_use += 1
                peak = max(peak, in_use)
                row = await (await conn.execute("SELECT %s::int FROM pg_sleep(0.01)", (i,))).fetchone()
                in_use -= 1
                assert row is not None
                return int(row[0])

        try:
            assert await asyncio.gather(*(request(i) for i in range(40))) == list(range(40))
            assert peak == 3
            assert isinstance(pool, GatedPool) and pool._gate._value == 3  # every permit back
        finally:
            await pool.close()

    asyncio.run(scenario())


def test_a_request_waits_no_longer_than_the_timeout(database_url: str) -> None:
    async def scenario() -> None:
        pool = await open_pool(database_url, "test", 1, 1)
        try:
            async with pool.connection():
                with pytest.raises(PoolTimeout):
                    async with pool.connection(timeout=0.2):
                        pass
            async with pool.connection(timeout=0.2) as conn:  # the permit of the waiter came back
                await conn.execute("SELECT 1")
        finally:
            await pool.close()

    asyncio.run(scenario())


def test_a_cancelled_waiter_gives_its_place_back(database_url: str) -> None:
    async def scenario() -> None:
        pool = await open_pool(database_url, "test", 1, 1)
        try:
            async with pool.connection():
                waiter = asyncio.ensure_future(pool.connection().__aenter__())
                await asyncio.sleep(0.05)
                waiter.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await waiter
            async with pool.connection(timeout=1) as conn:
                await conn.execute("SELECT 1")
            assert isinstance(pool, GatedPool) and pool._gate._value == 1
        finally:
            await pool.close()

    asyncio.run(scenario())


def test_a_connection_left_in_a_transaction_is_rolled_back_and_a_dead_one_replaced(
    database_url: str,
) -> None:
    async def scenario() -> None:
        pool = await open_pool(database_url, "test", 1, 1)
        try:
            async with pool.connection() as conn:
                await conn.execute("BEGIN")
                await conn.execute("CREATE TEMP TABLE left_behind (x int)")
            async with pool.connection() as conn:
                row = await (await conn.execute("SELECT to_regclass('pg_temp.left_behind')")).fetchone()
                assert row == (None,)  # rolled back, not committed
                pid = conn.info.backend_pid
            with psycopg.connect(database_url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
            # The server closed it while it sat idle: the pool sees so as it hands it out (services/api/pools.py
            # gone), and the request gets a fresh connection in its place instead of an error.
            async with pool.connection(timeout=5) as conn:
                assert conn.info.backend_pid != pid
                await conn.execute("SELECT 1")
        finally:
            await pool.close()

    asyncio.run(scenario())
