"""The drain of the upvote-set marks: Postgres tells Redis of every change to project_upvotes.

Each statement that changed a user's upvotes left a mark in upvote_set_changes
(db/readmodels/upvote_sets.sql), whoever wrote it: plain SQL, a bulk statement, a cascade, a
TRUNCATE, or the API. One drain claims a batch of marks (FOR UPDATE SKIP LOCKED: several
refreshers share the work), drops those users' sets in Redis (denorm.upvote_sets.drop_sets: the
generation bumped, then the set deleted, so a lazy load in flight is refused and the next read
loads the set again) unless Redis recorded that very change as applied by the API's
write-through, and deletes the marks in the same transaction. If Redis does not confirm, the
transaction rolls back: the marks stay, and the next drain tries again. A mark whose (user,
project) advisory lock an API process holds is left for the next drain: its write-through is in
flight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
import redis
from redis.exceptions import RedisError

from denorm.cache import open_sync_redis
from denorm.config import Settings
from denorm.logs import get_logger
from denorm.sql import query
from denorm.upvote_sets import drop_sets

log = get_logger("denorm.refresher.invalidator")


@dataclass
class Drained:
    marks: int  # marks deleted
    users: int  # users' sets dropped (a mark whose change Redis recorded as applied drops none)
    everyone: bool  # every set dropped (a TRUNCATE or a rebuild)


class Invalidator:
    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.client = client or open_sync_redis(settings.redis_url, settings.refresher_redis_timeout_ms / 1000)
        self.failing = False  # Redis refused the last drain: logged once per episode

    def drain_once(self, conn: psycopg.Connection[Any]) -> Drained | None:
        """One batch; None when Redis did not confirm it (its marks stay for the next drain)."""
        s = self.settings
        try:
            with conn.transaction():
                rows = conn.execute(query("upvote_changes_claim"), {"limit": s.refresher_invalidate_batch}).fetchall()
                if not rows:
                    return Drained(0, 0, False)
                marks = [(int(r[1]), int(r[0]) if r[2] is not None else None) for r in rows if r[1] is not None]
                everyone = any(r[1] is None for r in rows)
                dropped = drop_sets(self.client, s.redis_key_prefix, marks, everyone, s.redis_set_ttl_seconds)
                conn.execute(query("upvote_changes_done"), {"ids": [int(r[0]) for r in rows]})
        except RedisError as exc:
            if not self.failing:
                log.warning("redis refused the drain of the upvote-set marks; retrying", error=repr(exc))
            self.failing = True
            return None
        if self.failing:
            log.info("redis back; the upvote-set marks drain again")
        self.failing = False
        return Drained(len(rows), dropped, everyone)

    def close(self) -> None:
        self.client.close()
