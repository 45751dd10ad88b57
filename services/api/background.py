"""Work a request leaves to finish after its answer: held until done, awaited at shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from denorm.logs import get_logger

log = get_logger("denorm.api")


class Background:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("background work failed", error=repr(exc))

    async def wait(self) -> None:
        """Until everything started has finished (the lifespan's end, before the pools close)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
