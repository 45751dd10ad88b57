"""The synchronous Redis client the refresher and the reconciler share, with short timeouts so that a
slow Redis cannot stall their loops. The API's asyncio client is its own (services/api/redis_client.py)."""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError
from redis.retry import Retry

# One immediate retry, on a fresh connection, of a command whose connection was found dead (a
# pooled connection to a Redis that restarted). Not on a timeout: a slow Redis counts as down, and
# the breaker, not a retry, answers that. (redis-py's default is ten retries with backoff, on
# timeouts too: seconds per call against a stalled Redis.)
RETRIES = 1
RETRY_ON = (ConnectionError,)


def open_sync_redis(url: str, timeout_seconds: float) -> redis.Redis:
    """The synchronous client (the refresher's drain of the upvote-set marks, the reconciler's check of the sets),
    with one retry of a command whose pooled connection was found dead."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        retry=Retry(NoBackoff(), RETRIES, supported_errors=RETRY_ON),
    )
