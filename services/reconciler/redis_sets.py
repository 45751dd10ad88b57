"""The Redis upvote sets against project_upvotes.

Every loaded set (`{prefix}upvotes:{user}`) is compared with the user's rows in Postgres, a batch of
users at a time. A write-through lands in Redis just after its Postgres commit, so a set can differ
for a moment: a set that differs is read again (both sides) after `RECONCILER_REDIS_GRACE_MS`, and
only a difference that is still there is drift.

Each differing member counts: "missing" (upvoted in Postgres, absent from the set) or "extra" (in
the set, not in Postgres); "different" counts the sets. The repair deletes the set: the next read
loads it again from Postgres, and deleting a cache entry can never make it wrong.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
import redis

from denorm.config import Settings
from denorm.sql import query
from denorm.upvote_sets import LOADED, set_key
from services.reconciler.drift import Finding


def glob_escape(text: str) -> str:
    """`text` matched literally in a Redis SCAN pattern."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def _user_of(key: bytes, prefix: bytes) -> int | None:
    rest = key[len(prefix) :]
    return int(rest) if rest.isdigit() else None


def _read(
    conn: psycopg.Connection[Any], client: redis.Redis, settings: Settings, users: list[int]
) -> tuple[dict[int, set[int]], dict[int, set[int]]]:
    """(Redis members, Postgres upvotes) for these users; a set absent from Redis is left out."""
    pipe = client.pipeline(transaction=False)
    for user in users:
        pipe.smembers(set_key(settings.redis_key_prefix, user))
    cached: dict[int, set[int]] = {}
    for user, members in zip(users, pipe.execute(), strict=True):
        if members:  # an expired or deleted set is not drift
            cached[user] = {int(m) for m in members if m != LOADED and m.isdigit()}
    truth: dict[int, set[int]] = {u: set() for u in users}
    for user, projects in conn.execute(query("upvote_sets"), {"users": users}).fetchall():
        truth[int(user)] = {int(p) for p in projects}
    return cached, truth


def _differing(cached: dict[int, set[int]], truth: dict[int, set[int]]) -> list[int]:
    return [u for u, members in cached.items() if members != truth.get(u, set())]


def check_upvote_sets(
    conn: psycopg.Connection[Any],
    client: redis.Redis,
    settings: Settings,
    finding: Finding,
    repair: bool,
) -> None:
    prefix = set_key(settings.redis_key_prefix, 0)[:-1].encode()  # "{prefix}upvotes:"
    batch: list[int] = []

    def flush() -> None:
        cached, truth = _read(conn, client, settings, batch)
        finding.checked += len(cached)
        suspects = _differing(cached, truth)
        if suspects:
            time.sleep(settings.reconciler_redis_grace_ms / 1000)
            cached, truth = _read(conn, client, settings, suspects)
            for user in _differing(cached, truth):
                finding.add("different", user)
                for project in sorted(truth[user] - cached[user]):
                    finding.add("missing", [user, project])
                for project in sorted(cached[user] - truth[user]):
                    finding.add("extra", [user, project])
                if repair:
                    client.delete(set_key(settings.redis_key_prefix, user))
                    finding.repaired += 1
        batch.clear()

    for key in client.scan_iter(match=glob_escape(prefix.decode()) + "*", count=1000):
        user = _user_of(key, prefix)
        if user is not None:
            batch.append(user)
        if len(batch) >= settings.reconciler_redis_batch:
            flush()
    if batch:
        flush()
