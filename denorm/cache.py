"""The Redis client every service shares, with short timeouts so that a slow Redis cannot stall a request."""

from __future__ import annotations

import redis.asyncio as aioredis


def open_redis(url: str, timeout_seconds: float = 0.05) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        health_check_interval=0,
    )
