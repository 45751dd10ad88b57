"""Upvotes: race-free toggles written through to Redis, and "which of these did I upvote"."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

import psycopg
from prometheus_client import Histogram
from psycopg import AsyncConnection

from denorm.logs import get_logger
from denorm.sql import query
from services.api.db import connection, fetch_all, raise_mapped
from services.api.deps import Services
from services.api.errors import ApiError
from services.api.front import LIMIT_COUNTED, STARTED

log = get_logger("denorm.api")


async def set_upvote(svc: Services, user: int, project: int, want: bool | None) -> tuple[bool, int]:
    """Toggle (want None), set or clear the upvote; returns (upvoted, exact upvote count).

    One (user, project) at a time: the advisory lock is held from before the change until after
    its write-through, so Redis receives the changes of one upvote in the order Postgres made them.
    upvote_apply() (db/readmodels/upvote_sets.sql) takes the lock, makes the change, commits it and
    reads the count after the commit (so it includes every change committed before it), in one
    round trip; when nothing changed it also releases the lock. After a change the write-through
    follows, and the lock is released once Redis has the change: after the answer, by work the
    request leaves behind (svc.background), so the answer waits for two round trips, not three.
    The write-through records the change's mark (upvote_set_changes) as applied; one that does not
    reach Redis leaves it unrecorded, and the refresher's drain drops the user's set.
    """
    params = {"u": user, "p": project, "want": want, "durable": svc.settings.api_upvote_durable}
    lap = Laps(svc.upvote_phases)
    if (counted := LIMIT_COUNTED.get()) is not None:
        lap("rate_limit", counted)
    lap("front")
    async with contextlib.AsyncExitStack() as lease:
        conn = await lease.enter_async_context(connection(svc.write_pool))
        lap("connection")
        try:
            row = await (await conn.execute(query("upvote_change"), params)).fetchone()
            lap("change")
        except psycopg.Error as exc:
            # Typically a foreign key: no such user. Nothing changed; the lock may be held.
            if not conn.broken:
                await conn.execute(query("upvote_unlock"), params)
            raise_mapped(exc)
        assert row is not None
        present, upvoted, changed, count, change = bool(row[0]), bool(row[1]), bool(row[2]), row[3], row[4]
        if not present:
            raise ApiError(404, "not_found", "no such project")
        if changed:
            try:
                await svc.cache.write_through(user, project, upvoted, change)
                lap("write_through")
            except BaseException:
                if not conn.broken:
                    await conn.execute(query("upvote_unlock"), params)
                raise
            svc.background.start(_unlock(conn, params, lease.pop_all()))
    if count is None:
        raise ApiError(404, "not_found", "no such project")
    return upvoted, int(count)


async def _unlock(conn: AsyncConnection[Any], params: dict[str, Any], lease: contextlib.AsyncExitStack) -> None:
    """Release an upvote's lock after its answer, then return the connection to the pool. If the
    release fails, the connection is closed instead: its session ends, and the lock with it. That
    is what happens when Postgres went away meanwhile, an expected event: a warning, not an error."""
    async with lease:
        try:
            await conn.execute(query("upvote_unlock"), params)
        except psycopg.OperationalError as exc:
            await conn.close()
            log.warning(
                "upvote lock not released: the connection is gone, and the lock went with its session",
                user=params["u"], project=params["p"], error=str(exc).strip().splitlines()[0] if str(exc) else "",
            )  # fmt: skip
        except BaseException:
            await conn.close()
            raise


class Laps:
    """Where an upvote's server time goes, phase by phase (denorm_api_upvote_phase_seconds): the
    rate limit (from the request's arrival until its counters in Redis answered), the front door
    (then the body, the token, routing), the wait for a pooled connection, the change with its commit
    and the count after it, the write-through to Redis. The 5 ms gate is judged on the whole; this
    says which part missed it."""

    def __init__(self, histogram: Histogram | None) -> None:
        self.histogram = histogram
        self.at = STARTED.get() or time.perf_counter()

    def __call__(self, phase: str, at: float | None = None) -> None:
        """The time since the last lap, as `phase`: until now, or until `at` (a moment already past)."""
        if self.histogram is not None:
            now = time.perf_counter() if at is None else at
            self.histogram.labels(phase).observe(now - self.at)
            self.at = now


async def upvoted_among(svc: Services, user: int, project_ids: Sequence[int]) -> set[int]:
    """The subset of project_ids the user upvoted: Redis in one round trip, else Postgres."""
    mine = await svc.cache.upvoted_among(user, project_ids)
    if mine is not None:
        return mine
    generation = await svc.cache.generation(user)
    if generation is None:  # Redis unusable: answer this page from Postgres alone
        rows = await fetch_all(
            svc.read_pool, "upvoted_among", {"user_id": user, "project_ids": list(project_ids)}, read=True
        )
        return {int(r[0]) for r in rows}
    # Load the whole set lazily, from the primary: a lagging replica could install a stale set.
    rows = await fetch_all(svc.write_pool, "user_upvotes", {"user_id": user}, read=True)
    everything = {int(r[0]) for r in rows}
    await svc.cache.load(user, generation, everything)
    return everything.intersection(project_ids)
