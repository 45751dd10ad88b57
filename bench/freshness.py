"""Freshness of every read model under a steady mixed write load: the time from a write's commit until
the read model shows it, at the read model and through the API as a user sees it.

For each dataset size (--factors times --scale), on a scratch database seeded at that size, the
refresher and one API process run as in production. Writer connections send a steady mix of
plain-SQL writes, --write-rate in total: upvote toggles, comments, project renames, chain joins and
leaves, new threads and new posts, on random rows. One prober per read model (all at once, each on
rows the writers leave alone) makes a write of its own every so often, notes when it committed,
and polls until the read model shows it (a query on its table or view, every 20 ms) and until the
API route a user would load shows it (the same request, every 50 ms, so the API's answer caches
count). Then the WAL: bytes per minute under the load with the refresher running, and with it
paused (SIGSTOP); the difference is what maintenance writes.

    python -m bench.freshness [--scale standard] [--factors 1 2 4] [--write-rate 300] [--probes 12]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import string
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from bench.scratch import add_sizes_arguments, sized_database, warm
from bench.system import running_system
from denorm.auth import mint_token
from denorm.config import DEV_JWT_SECRET
from denorm.logs import configure_logging
from denorm.maintenance import drain, wal_position
from denorm.seed import SCALES

Conn = psycopg.Connection[Any]
TIMEOUT_S = 180.0
RESERVED = 60  # rows of each kind at the top of their id range, for the probes only


def word(rng: random.Random) -> str:
    """A word no dataset has."""
    return "zq" + "".join(rng.choice(string.ascii_lowercase) for _ in range(9))


@dataclass
class Ids:
    """The id ranges of the seeded rows; the writers stay below the reserved tops, and off the
    projects a probe took."""

    users: int
    projects: int
    chains: int
    threads: int
    probed_projects: set[int] = field(default_factory=set)

    def writer_user(self, rng: random.Random) -> int:
        return rng.randint(1, self.users - RESERVED)

    def writer_project(self, rng: random.Random) -> int:
        while (p := rng.randint(1, self.projects - RESERVED)) in self.probed_projects:
            pass
        return p

    def writer_chain(self, rng: random.Random) -> int:
        return rng.randint(1, self.chains - RESERVED)

    def probe_users(self) -> list[int]:
        return list(range(self.users - RESERVED + 1, self.users + 1))

    def probe_projects(self) -> list[int]:
        return list(range(self.projects - RESERVED + 1, self.projects + 1))


# --- the write load ------------------------------------------------------------------------------

WRITES: list[tuple[str, int]] = [  # (statement, weight)
    ("WITH gone AS (DELETE FROM project_upvotes WHERE user_id = %(u)s AND project_id = %(p)s RETURNING 1) "
     "INSERT INTO project_upvotes (user_id, project_id) SELECT %(u)s, %(p)s WHERE NOT EXISTS (SELECT 1 FROM gone)", 50),
    ("INSERT INTO project_comments (project_id, author_id, body) VALUES (%(p)s, %(u)s, 'load')", 15),
    ("UPDATE projects SET title = 'Renamed ' || %(w)s, updated_at = now() WHERE id = %(p)s", 10),
    ("WITH gone AS (DELETE FROM chain_members WHERE chain_id = %(c)s AND user_id = %(u)s RETURNING 1) "
     "INSERT INTO chain_members (chain_id, user_id) SELECT %(c)s, %(u)s WHERE NOT EXISTS (SELECT 1 FROM gone)", 10),
    ("INSERT INTO forum_threads (chain_id, author_id, title) VALUES (%(c)s, %(u)s, 'Load ' || %(w)s)", 5),
    ("INSERT INTO forum_posts (thread_id, author_id, body) "
     "SELECT id, %(u)s, 'load' FROM forum_threads WHERE chain_id = %(c)s ORDER BY id DESC LIMIT 1", 10),
]  # fmt: skip


def writer(url: str, ids: Ids, rate: float, seed_: int, stop: threading.Event, done: list[int]) -> None:
    rng = random.Random(seed_)
    statements = [s for s, weight in WRITES for _ in range(weight)]
    interval = 1 / rate
    with psycopg.connect(url, autocommit=True) as conn:
        next_at = time.perf_counter()
        while not stop.is_set():
            params = {"u": ids.writer_user(rng), "p": ids.writer_project(rng), "c": ids.writer_chain(rng),
                      "w": word(rng)}  # fmt: skip
            try:
                conn.execute(rng.choice(statements).encode(), params)
                done[0] += 1
            except psycopg.errors.IntegrityError:
                pass
            next_at += interval
            delay = next_at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)


# --- the probes ----------------------------------------------------------------------------------


@dataclass
class Probe:
    """One read model: a write of its own, how to see it at the read model, and through the API."""

    model: str
    write: Callable[[Conn, int], Any]  # (conn, n) -> what to look for
    at_model: Callable[[Conn, Any], bool]
    route: str | None = None  # the API route that shows it
    via_api: Callable[[Callable[[str, int | None], Any], Any], bool] | None = None
    lags: dict[str, list[float]] = field(default_factory=lambda: {"model": [], "api": []})


def one(conn: Conn, query: str, *args: Any) -> Any:
    row = conn.execute(query.encode(), args).fetchone()
    return None if row is None else row[0]


def probes(conn: Conn, ids: Ids, rng: random.Random) -> list[Probe]:
    """The probes, each on rows of its own: reserved users and projects, and chains made here."""
    users, projects = ids.probe_users(), ids.probe_projects()
    pick_users = iter(users)
    pick_projects = iter(projects)

    def chain(slug: str) -> tuple[int, str]:
        owner = next(pick_users)
        cid = one(conn, "INSERT INTO chains (slug, name, owner_id) VALUES (%s, %s, %s) RETURNING id", slug, slug, owner)
        return int(cid), slug

    # Counters, the dashboard, intro stats and conversations: exact at every commit.
    counted = next(pick_projects)

    def comment(c: Conn, n: int) -> int:
        before = int(one(c, "SELECT comment_count FROM project_counters WHERE project_id = %s", counted))
        c.execute("INSERT INTO project_comments (project_id, author_id, body) VALUES (%s, 1, 'probe')", (counted,))
        return before + 1

    reader, sender = next(pick_users), next(pick_users)

    def unread(c: Conn, n: int) -> int:
        before = int(one(c, "SELECT unread_messages FROM user_dashboard_stats WHERE user_id = %s", reader))
        c.execute("INSERT INTO messages (sender_id, recipient_id, body) VALUES (%s, %s, 'probe')", (sender, reader))
        return before + 1

    target, asker = next(pick_users), next(pick_users)

    def intro(c: Conn, n: int) -> int:
        before = int(one(c, "SELECT received_pending FROM intro_request_stats WHERE user_id = %s", target))
        c.execute("INSERT INTO intro_requests (requester_id, target_id) VALUES (%s, %s)", (asker, target))
        return before + 1

    talker, listener = next(pick_users), next(pick_users)

    def message(c: Conn, n: int) -> str:
        body = f"probe {n} {word(rng)}"
        c.execute("INSERT INTO messages (sender_id, recipient_id, body) VALUES (%s, %s, %s)", (talker, listener, body))
        return body

    # The feed: a new project. Each chain's projects: a new project added to a chain of its own.
    def new_project(c: Conn, n: int) -> tuple[int, str]:
        title = f"Probe {word(rng)}"
        pid = one(c, "INSERT INTO projects (owner_id, title) VALUES (%s, %s) RETURNING id", users[0], title)
        return int(pid), title

    curated_id, curated_slug = chain(f"probe-curated-{word(rng)}")

    def add_to_chain(c: Conn, n: int) -> tuple[int, str]:
        pid, title = new_project(c, n)
        c.execute("INSERT INTO chain_projects (chain_id, project_id) VALUES (%s, %s)", (curated_id, pid))
        return pid, title

    # The leaderboards: a project and a user near the top, renamed.
    top_project = one(conn, "SELECT project_id FROM mv_leaderboard_projects WHERE project_id <= %s ORDER BY rank "
                            "LIMIT 1", ids.projects - RESERVED)  # fmt: skip
    top_user = one(conn, "SELECT user_id FROM mv_leaderboard_users WHERE user_id <= %s "
                         "ORDER BY upvotes_received DESC LIMIT 1", ids.users - RESERVED)  # fmt: skip
    ids.probed_projects.add(int(top_project))

    def rename_top_project(c: Conn, n: int) -> str:
        title = f"Leader {word(rng)}"
        c.execute("UPDATE projects SET title = %s WHERE id = %s", (title, top_project))
        return title

    def rename_top_user(c: Conn, n: int) -> str:
        name = f"Leader {word(rng)}"
        c.execute("UPDATE users SET display_name = %s WHERE id = %s", (name, top_user))
        return name

    # The chain directory: a new member of a chain of its own; its forum: a new thread.
    joined_id, joined_slug = chain(f"probe-joined-{word(rng)}")
    forum_id, forum_slug = chain(f"probe-forum-{word(rng)}")

    def join(c: Conn, n: int) -> int:
        before = int(one(c, "SELECT count(*) FROM chain_members WHERE chain_id = %s", joined_id))
        c.execute("INSERT INTO chain_members (chain_id, user_id) VALUES (%s, %s)", (joined_id, users[n % len(users)]))
        return before + 1

    def thread(c: Conn, n: int) -> str:
        title = f"Thread {word(rng)}"
        c.execute("INSERT INTO forum_threads (chain_id, author_id, title) VALUES (%s, %s, %s)",
                  (forum_id, users[1], title))  # fmt: skip
        return title

    # Search: a project renamed to a word no one has; the vocabulary: another.
    searched, worded = next(pick_projects), next(pick_projects)

    def rename_for_search(c: Conn, n: int) -> str:
        w = word(rng)
        c.execute("UPDATE projects SET title = %s WHERE id = %s", (f"Searched {w}", searched))
        return w

    def rename_for_words(c: Conn, n: int) -> str:
        w = word(rng)
        c.execute("UPDATE projects SET title = %s WHERE id = %s", (f"Worded {w}", worded))
        return w

    def items(doc: Any, key: str) -> list[Any]:
        return list(doc.get(key) or [])

    return [
        Probe("project_counters", comment,
              lambda c, want: (one(c, "SELECT comment_count FROM project_counters WHERE project_id = %s",
                                   counted) or 0) >= want),
        Probe("user_dashboard_stats", unread,
              lambda c, want: (one(c, "SELECT unread_messages FROM user_dashboard_stats WHERE user_id = %s",
                                   reader) or 0) >= want,
              "/api/users/dashboard", lambda get, want: get("/api/users/dashboard", reader)["unread_messages"] >= want),
        Probe("intro_request_stats", intro,
              lambda c, want: (one(c, "SELECT received_pending FROM intro_request_stats WHERE user_id = %s",
                                   target) or 0) >= want,
              "/api/users/dashboard",
              lambda get, want: get("/api/users/dashboard", target)["intro_stats"]["received_pending"] >= want),
        Probe("message_conversations_denorm", message,
              lambda c, body: one(c, "SELECT last_message_preview FROM message_conversations_denorm "
                                     "WHERE user_id = %s AND other_user_id = %s", listener, talker) == body[:120],
              "/api/messages/conversations",
              lambda get, body: any(i["last_message_preview"] == body[:120]
                                    for i in items(get("/api/messages/conversations", listener), "items"))),
        Probe("mv_feed_projects", new_project,
              lambda c, p: one(c, "SELECT title FROM mv_feed_projects WHERE id = %s", p[0]) == p[1],
              "/api/projects?sort=newest",
              lambda get, p: any(i["id"] == p[0] for i in items(get("/api/projects?sort=newest", None), "items"))),
        Probe("mv_chain_projects", add_to_chain,
              lambda c, p: one(c, "SELECT title FROM mv_chain_projects WHERE chain_id = %s AND project_id = %s",
                               curated_id, p[0]) == p[1],
              "/api/chains/{slug}",
              lambda get, p: any(i["project_id"] == p[0] for i in items(get(f"/api/chains/{curated_slug}", None),
                                                                         "projects"))),
        Probe("mv_leaderboard_projects", rename_top_project,
              lambda c, t: one(c, "SELECT title FROM mv_leaderboard_projects WHERE project_id = %s", top_project) == t,
              "/api/leaderboard/projects",
              lambda get, t: any(i["title"] == t for i in items(get("/api/leaderboard/projects?limit=100", None),
                                                                 "items"))),
        Probe("mv_leaderboard_users", rename_top_user,
              lambda c, t: one(c, "SELECT display_name FROM mv_leaderboard_users WHERE user_id = %s", top_user) == t,
              "/api/leaderboard/users",
              lambda get, t: any(i["display_name"] == t for i in items(get("/api/leaderboard/users?limit=100", None),
                                                                        "items"))),
        Probe("mv_chain_directory", join,
              lambda c, want: one(c, "SELECT member_count FROM mv_chain_directory WHERE chain_id = %s",
                                  joined_id) == want,
              "/api/chains/{slug}",
              lambda get, want: get(f"/api/chains/{joined_slug}", None)["chain"]["member_count"] == want),
        Probe("mv_forum_threads", thread,
              lambda c, t: one(c, "SELECT count(*) FROM mv_forum_threads WHERE chain_id = %s AND title = %s",
                               forum_id, t) == 1,
              "/api/chains/{slug}",
              lambda get, t: any(i["title"] == t for i in items(get(f"/api/chains/{forum_slug}", None), "threads"))),
        Probe("mv_search_documents", rename_for_search,
              lambda c, w: one(c, "SELECT title FROM mv_search_documents WHERE doc_type = 'project' AND doc_id = %s",
                               searched) == f"Searched {w}",
              "/api/search",
              lambda get, w: any(i["id"] == searched for i in items(get(f"/api/search?q={w}&type=projects", None),
                                                                     "items"))),
        Probe("mv_search_words", rename_for_words,
              lambda c, w: one(c, "SELECT count(*) FROM mv_search_words WHERE word = %s", w) == 1),
    ]  # fmt: skip


def run_probe(url: str, base: str, probe: Probe, count: int, seed_: int, stop: threading.Event) -> None:
    rng = random.Random(seed_)
    tokens: dict[int, str] = {}

    def get(path: str, user: int | None) -> Any:
        request = urllib.request.Request(base + urllib.parse.quote(path, safe="/?=&"))
        if user is not None:
            token = tokens.setdefault(user, mint_token(user, DEV_JWT_SECRET, ttl_seconds=3600))
            request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=10) as r:
            return json.loads(r.read())

    with psycopg.connect(url, autocommit=True) as conn:
        for n in range(count):
            if stop.is_set():
                return
            want = probe.write(conn, n)
            written = time.perf_counter()
            seen_model = seen_api = None
            while seen_model is None or (probe.via_api is not None and seen_api is None):
                elapsed = time.perf_counter() - written
                if elapsed > TIMEOUT_S:
                    break
                if seen_model is None and probe.at_model(conn, want):
                    seen_model = elapsed
                if probe.via_api is not None and seen_api is None and probe.via_api(get, want):
                    seen_api = time.perf_counter() - written
                time.sleep(0.02 if seen_model is None else 0.05)
            probe.lags["model"].append(seen_model if seen_model is not None else float("inf"))
            if probe.via_api is not None:
                probe.lags["api"].append(seen_api if seen_api is not None else float("inf"))
            time.sleep(rng.uniform(0.2, 1.0))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(lags: list[float]) -> str:
    if not lags:
        return f"{'-':>24}"
    cells = [statistics.median(lags), percentile(lags, 0.99), max(lags)]
    return "".join(f"{v:>8.2f}" if v != float("inf") else f"{'>' + str(int(TIMEOUT_S)):>8}" for v in cells)


def measure(url: str, factor: float, scale_name: str, rate: float, writers: int, count: int) -> None:
    scale = SCALES[scale_name].times(factor)
    rng = random.Random(time.time_ns())  # new probe words each run: a database may be measured again
    with psycopg.connect(url, autocommit=True) as conn:
        drain(conn, worker="bench")
        conn.execute("VACUUM ANALYZE")
        warm(conn)
        ids = Ids(scale.users, scale.projects, scale.chains, scale.threads)
        probe_list = probes(conn, ids, rng)
        drain(conn, worker="bench")
    with running_system(url) as system:
        refresher_pid = system.refresher.pid
        stop = threading.Event()
        counts = [[0] for _ in range(writers)]
        threads = [threading.Thread(target=writer, args=(url, ids, rate / writers, i, stop, counts[i]), daemon=True)
                   for i in range(writers)]  # fmt: skip
        for t in threads:
            t.start()
        time.sleep(5)  # let the load and the maintenance settle into their rhythm
        with psycopg.connect(url, autocommit=True) as conn:
            started, lsn = time.perf_counter(), wal_position(conn)
            written = sum(c[0] for c in counts)
            probers = [threading.Thread(target=run_probe, args=(url, system.base, p, count, i, stop), daemon=True)
                       for i, p in enumerate(probe_list)]  # fmt: skip
            for t in probers:
                t.start()
            for t in probers:
                t.join()
            minutes = (time.perf_counter() - started) / 60
            wal_running = (wal_position(conn) - lsn) / minutes
            writes = (sum(c[0] for c in counts) - written) / (minutes * 60)
            os.kill(refresher_pid, signal.SIGSTOP)
            try:
                paused, lsn = time.perf_counter(), wal_position(conn)
                time.sleep(30)
                wal_paused = (wal_position(conn) - lsn) / ((time.perf_counter() - paused) / 60)
            finally:
                os.kill(refresher_pid, signal.SIGCONT)
        stop.set()
        for t in threads:
            t.join(timeout=10)
    print(f"\ndataset={scale_name} x{factor:g} ({scale.projects:,} projects, {scale.upvotes:,} upvotes, "
          f"{scale.users:,} users); write load {writes:,.0f}/s (plain SQL, {writers} connections); "
          f"{count} probes per read model; seconds from commit to visible")  # fmt: skip
    print(f"{'read model':<30}{'at the read model':>24}{'through the API':>24}  route")
    print(f"{'':<30}{'p50     p99     max':>24}{'p50     p99     max':>24}")
    for p in probe_list:
        print(f"{p.model:<30}{summary(p.lags['model'])}{summary(p.lags['api'])}  {p.route or ''}")
    print(f"WAL: {wal_running / 2**20:,.1f} MiB/min under the load with the refresher running, "
          f"{wal_paused / 2**20:,.1f} MiB/min with it paused: maintenance {(wal_running - wal_paused) / 2**20:,.1f} "
          "MiB/min")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sizes_arguments(parser)
    parser.add_argument("--write-rate", type=float, default=300.0, help="plain-SQL writes per second, in total")
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--probes", type=int, default=12, help="probes per read model")
    args = parser.parse_args()
    configure_logging("WARNING")
    for i, factor in enumerate(args.factors):
        with sized_database(args, i, "bench_fresh") as url:
            measure(url, factor, args.scale, args.write_rate, args.writers, args.probes)


if __name__ == "__main__":
    main()
