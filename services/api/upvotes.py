"""Upvotes: race-free toggles written through to Redis, and "which of these did I upvote"."""

from __future__ import annotations

from collections.abc import Sequence

import psycopg

from services.api.db import as_api_error, fetch_all, queries
from services.api.deps import Services
from services.api.errors import ApiError

# Each returns (upvoted, changed) for (user u, project p).
_TOGGLE = b"""
WITH gone AS (DELETE FROM project_upvotes WHERE user_id = %(u)s AND project_id = %(p)s RETURNING 1),
     added AS (INSERT INTO project_upvotes (user_id, project_id) SELECT %(u)s, %(p)s
               WHERE NOT EXISTS (SELECT 1 FROM gone) RETURNING 1)
SELECT EXISTS (SELECT 1 FROM added), true
"""
_SET = b"""
WITH added AS (INSERT INTO project_upvotes (user_id, project_id) VALUES (%(u)s, %(p)s)
               ON CONFLICT DO NOTHING RETURNING 1)
SELECT true, EXISTS (SELECT 1 FROM added)
"""
_CLEAR = b"""
WITH gone AS (DELETE FROM project_upvotes WHERE user_id = %(u)s AND project_id = %(p)s RETURNING 1)
SELECT false, EXISTS (SELECT 1 FROM gone)
"""
_LOCK = b"SELECT pg_advisory_lock(hashtextextended(%(k)s, 0))"
_COUNT_AND_UNLOCK = b"""
SELECT (SELECT upvote_count FROM project_counters WHERE project_id = %(p)s),
       pg_advisory_unlock(hashtextextended(%(k)s, 0))
"""
_UNLOCK = b"SELECT pg_advisory_unlock(hashtextextended(%(k)s, 0))"


async def set_upvote(svc: Services, user: int, project: int, want: bool | None) -> tuple[bool, int]:
    """Toggle (want None), set or clear the upvote; returns (upvoted, exact upvote count).

    One (user, project) at a time: the advisory lock is held from before the change until after
    its write-through, so Redis receives the changes of one upvote in the order Postgres made them.
    """
    params = {"u": user, "p": project, "k": f"upvote:{user}:{project}"}
    statement = _TOGGLE if want is None else _SET if want else _CLEAR
    async with svc.write_pool.connection() as conn:
        await conn.execute(_LOCK, params)
        unlocked = False
        try:
            try:
                cur = await conn.execute(statement, params)
            except psycopg.Error as exc:
                # Typically a foreign key: no such project (or user). Nothing changed.
                await conn.execute(_UNLOCK, params)
                unlocked = True
                mapped = as_api_error(exc)
                if mapped is None:
                    raise
                raise mapped from exc
            row = await cur.fetchone()
            assert row is not None
            upvoted, changed = bool(row[0]), bool(row[1])
            if changed:
                await svc.cache.write_through(user, project, upvoted)
            cur = await conn.execute(_COUNT_AND_UNLOCK, params)
            unlocked = True
            counted = await cur.fetchone()
        finally:
            if not unlocked and not conn.broken:
                await conn.execute(_UNLOCK, params)
    if counted is None or counted[0] is None:
        raise ApiError(404, "not_found", "no such project")
    return upvoted, int(counted[0])


async def upvoted_among(svc: Services, user: int, project_ids: Sequence[int]) -> set[int]:
    """The subset of project_ids the user upvoted: Redis in one round trip, else Postgres."""
    mine = await svc.cache.upvoted_among(user, project_ids)
    if mine is not None:
        return mine
    generation = await svc.cache.generation(user)
    if generation is None:  # Redis unusable: answer this page from Postgres alone
        rows = await fetch_all(
            svc.read_pool, queries()["upvoted_among"], {"user_id": user, "project_ids": list(project_ids)}
        )
        return {int(r[0]) for r in rows}
    # Load the whole set lazily, from the primary: a lagging replica could install a stale set.
    rows = await fetch_all(svc.write_pool, queries()["user_upvotes"], {"user_id": user})
    everything = {int(r[0]) for r in rows}
    await svc.cache.load(user, generation, everything)
    return everything.intersection(project_ids)
