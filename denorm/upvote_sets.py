"""Per-user upvote sets in Redis (the seed's RedisUserCache), never needed for a right answer: their
keys, and the drop every writer's change ends in. The API's reads and writes of the sets are
services/api/usercache.py; the refresher drains the marks (services/refresher/invalidator.py), the
reconciler checks the sets (services/reconciler/redis_sets.py).

A user's set is loaded lazily from Postgres, checked for a whole feed page in one SMISMEMBER, and
written through after each Postgres commit. Every answer has a Postgres fallback: when Redis is
down, slow or empty, callers get None and ask Postgres, and a circuit breaker keeps a dead Redis
from costing every request its timeout.

Why a set is never wrong for long (db/readmodels/upvote_sets.sql has the Postgres side):
- Every change to project_upvotes, whoever makes it, leaves a mark in Postgres
  (upvote_set_changes, by a statement trigger). The refresher drains the marks: drop_sets() bumps
  each marked user's generation and deletes the set, unless Redis recorded that very change as
  applied; the next read loads a dropped set again.
- The API's own change is written through (INCR gen; SADD/SREM if the set exists; its mark's id
  recorded as applied, all in one script) while the writer still holds the Postgres advisory lock
  of that (user, project), so write-throughs for one upvote apply in commit order. A write-through
  that failed, or never reached Redis, leaves its mark unrecorded, and the drain drops the set.
- A lazy load reads the generation (the user's and the global epoch a TRUNCATE bumps), then
  Postgres, then installs the set only if neither has moved (a Lua script). If a change committed
  after the load's read, either the load is refused, or the write-through or the drain lands after
  it and corrects it.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

LOADED = b"-"  # member that marks a set as loaded (an empty set does not exist in Redis)


def set_key(prefix: str, user_id: int) -> str:
    """The Redis key of a user's upvote set (the reconciler scans them: `{prefix}upvotes:*`)."""
    return f"{prefix}upvotes:{user_id}"


def generation_key(prefix: str, user_id: int) -> str:
    return f"{prefix}upvotes-gen:{user_id}"


def applied_key(prefix: str, user_id: int) -> str:
    """The ids of the user's marks whose change a write-through applied (the drain skips those)."""
    return f"{prefix}upvotes-applied:{user_id}"


def epoch_key(prefix: str) -> str:
    """Bumped when every set goes at once (a TRUNCATE): a load that read it before is refused."""
    return f"{prefix}upvotes-epoch"


# KEYS: set1, gen1, applied1, set2, ...; ARGV: ttl, then each mark's id ('' for a mark of no single
# change). The generation first, so that a load in flight is refused. Returns the sets dropped.
_DROP = """
local dropped = 0
for i = 1, #KEYS, 3 do
  local id = ARGV[(i - 1) / 3 + 2]
  if id == '' or redis.call('SREM', KEYS[i + 2], id) == 0 then
    redis.call('INCR', KEYS[i + 1])
    redis.call('EXPIRE', KEYS[i + 1], ARGV[1])
    redis.call('DEL', KEYS[i])
    dropped = dropped + 1
  end
end
return dropped
"""


def drop_sets(
    client: redis.Redis, prefix: str, marks: Sequence[tuple[int, int | None]], everyone: bool, ttl_seconds: int
) -> int:
    """Act on these marks, (user, id of the mark when it is one API change, else None): drop each
    user's set unless Redis recorded that change as applied; with `everyone`, every set. Returns
    the users' sets dropped. Raises RedisError when Redis did not confirm: the caller keeps its
    marks and tries again."""
    if everyone:
        client.incr(epoch_key(prefix))
        batch: list[bytes] = []
        for key in client.scan_iter(match=set_key(prefix, 0)[:-1] + "*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                client.delete(*batch)
                batch = []
        if batch:
            client.delete(*batch)
    if not marks:
        return 0
    keys = [k for u, _ in marks for k in (set_key(prefix, u), generation_key(prefix, u), applied_key(prefix, u))]
    ids = ["" if mark is None else str(mark) for _, mark in marks]
    return int(client.eval(_DROP, len(keys), *keys, ttl_seconds, *ids))
