"""The API's Redis client, and the batcher that pipelines concurrent requests' commands."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from denorm.cache import RETRIES, RETRY_ON


def open_redis(url: str, timeout_seconds: float = 0.05) -> aioredis.Redis:
    """The asyncio client (the API).

    redis-py bounds each socket wait on its own (the send under asyncio.wait_for, a task of its
    own: two more turns of the event loop per command). A timeout scope around the whole command
    instead was tried and measured worse: it also counted the wait for a pooled connection and
    the loop's lag over several turns against Redis, and at 5000 users a run's timeouts went from
    none to 964-994 (docs/performance.md, "Fewer turns of the event loop")."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        health_check_interval=0,
        retry=AsyncRetry(NoBackoff(), RETRIES, supported_errors=RETRY_ON),
    )


class Batcher:
    """Redis commands from concurrent requests, sent together as one pipeline.

    Why: a command on its own costs redis-py a connection checkout, a socket write and a read
    (49 µs of CPU, against 27 µs a command in a pipeline: `python -m bench.read_transport`).
    The commands queued in one turn of the event loop form a batch; while it is out, new ones
    queue, and go as the next batch when its replies are in. A batch of one goes as a plain
    command. Each caller gets its own reply or its own error; a batch that fails as a whole (a
    timeout, a dead server) fails each of its callers.
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._queue: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._running: asyncio.Task[None] | None = None  # the batch that is out
        self.batches = 0
        self.commands = 0

    def execute(self, *args: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((args, future))
        if len(self._queue) == 1 and self._running is None:
            loop.call_soon(self._flush)  # after the other requests of this turn have queued theirs
        return future

    def _flush(self) -> None:
        if not self._queue:
            return
        batch, self._queue = self._queue, []
        self._running = asyncio.get_running_loop().create_task(self._run(batch))
        self._running.add_done_callback(self._done)

    def _done(self, _task: asyncio.Task[None]) -> None:
        self._running = None
        self._flush()  # what queued while this batch was out goes next, as one batch

    async def _run(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        self.batches += 1
        self.commands += len(batch)
        try:
            if len(batch) == 1:
                replies: list[Any] = [await self.client.execute_command(*batch[0][0])]  # type: ignore[no-untyped-call]
            else:
                pipe = self.client.pipeline(transaction=False)
                for args, _ in batch:
                    pipe.execute_command(*args)
                replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else RedisError(repr(exc)))
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)
