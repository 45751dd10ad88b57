"""What the simulated users know about the data: ids and slugs learnt from the API, never from the database.

One catalog per Locust process, shared by its users (gevent greenlets, one thread: no locks needed
except around the first fill). Project ids come from the feed pages users load; chain slugs from
the chain directory; the signed-in users' own ids from LOADTEST_USER_IDS (the seeded range, which
the runner knows) or, without it, from the user leaderboard.
"""

from __future__ import annotations

import random
from collections import Counter, deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from gevent.lock import Semaphore

# Searches as people type them: about half misspelt, so that the typo correction is exercised.
SEARCHES = (
    "postgress", "reddis cache", "kubernetis", "pyhton scheduler", "graphql gatway", "elasticsearh",
    "terrafrom", "rust cli", "react dashbord", "kafka pipline", "docker", "fastapi toolkit",
    "grace hopper", "linus torvals", "knuth", "serverless", "search engine", "webassembly editor",
    "prometheus monitr", "golang proxy", "typescrpit", "builders guild", "sqlite notebook",
    "realtime feed", "distributed queue", "open source maintainers", "data enginers", "django",
)  # fmt: skip
# The search's type, as the suite asks for it (weights): mostly everything at once.
SEARCH_TYPES = {"all": 70, "projects": 20, "users": 5, "chains": 5}


def search_query() -> str:
    """A search as the suite's users ask it, as a query string: one of SEARCHES, a type drawn with
    SEARCH_TYPES' weights, twenty results."""
    kind = random.choices(list(SEARCH_TYPES), weights=list(SEARCH_TYPES.values()))[0]
    return urlencode({"q": random.choice(SEARCHES), "type": kind, "limit": "20"})


def parse_id_ranges(text: str) -> list[range]:
    """Ranges of ids from text such as "1-5000,7000-7100,42" (bounds inclusive)."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        first, last = int(lo), int(hi or lo)
        if not 0 < first <= last:
            raise ValueError(f"bad id range {part!r}")
        out.append(range(first, last + 1))
    if not out:
        raise ValueError("no user ids")
    return out


# get(path, name) -> the decoded JSON answer, or None when the request failed (already recorded).
Fetch = Callable[[str, str], Any]


class Catalog:
    def __init__(self, user_ids: str | None, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()
        self.user_ranges = parse_id_ranges(user_ids) if user_ids else []
        self.projects: deque[int] = deque(maxlen=5000)
        self.slugs: list[str] = []
        self.filled = False
        self._filling = Semaphore()
        # Members online in this process: one asks such a member for an intro, so that it is read
        # in their inbox (GET /api/intro-requests) and answered while the load lasts.
        self.online: Counter[int] = Counter()

    def fill(self, get: Fetch) -> None:
        """Learn chain slugs, some project ids and, when not configured, user ids: once per process."""
        with self._filling:
            if self.filled:
                return
            chains = get("/api/chains?limit=100", "/api/chains?limit=100 (catalog)")
            self.slugs = [c["slug"] for c in (chains or {}).get("items", [])]
            feed = get("/api/projects?sort=newest&limit=100", "/api/projects?sort=newest&limit=100 (catalog)")
            self.see_projects(item["id"] for item in (feed or {}).get("items", []))
            if not self.user_ranges:
                ids: list[int] = []
                for offset in range(0, 500, 100):
                    board = get(f"/api/leaderboard/users?limit=100&offset={offset}", "/api/leaderboard/users (catalog)")
                    ids += [u["user_id"] for u in (board or {}).get("items", [])]
                self.user_ranges = [range(i, i + 1) for i in sorted(set(ids))]
            if not self.slugs or not self.projects or not self.user_ranges:
                raise RuntimeError("the API gave no chains, projects or users: is the dataset seeded?")
            self.filled = True

    def see_projects(self, ids: Any) -> None:
        self.projects.extend(int(i) for i in ids)

    def project(self) -> int:
        return self.rng.choice(self.projects)

    def slug(self) -> str:
        return self.rng.choice(self.slugs)

    def user(self) -> int:
        # Weighted by range length, so "1-100000" is uniform over the seeded users.
        ranges = self.user_ranges
        chosen = self.rng.choices(ranges, weights=[len(r) for r in ranges])[0]
        return chosen[self.rng.randrange(len(chosen))]

    def come_online(self, user_id: int) -> None:
        self.online[user_id] += 1

    def go_offline(self, user_id: int) -> None:
        self.online[user_id] -= 1
        if self.online[user_id] <= 0:
            del self.online[user_id]

    def online_peer(self, me: int) -> int | None:
        peers = [u for u in self.online if u != me]
        return self.rng.choice(peers) if peers else None
