"""The Locust suite: anonymous readers and signed-in members using the denorm API as the product's users do.

    locust -f loadtest/locustfile.py --host=http://127.0.0.1:8000     (or `denorm loadtest`, which
    starts the system, a master and its workers, and writes the results; see docs/performance.md)

The suite talks to the system under test only: ids and slugs come from the API's own answers
(loadtest/catalog.py), and tokens are minted here for seeded user ids, signed like the API's.

Environment:
    JWT_SECRET              the API's signing secret (the development default otherwise)
    LOADTEST_USER_IDS       the seeded user ids to sign in as, "1-100000"; default: from the leaderboard
    LOADTEST_THINK_SCALE    multiplies every think time (1); a test shortens them to make more requests
    LOADTEST_TARGETS        the targets file (loadtest/targets.toml)
    LOADTEST_GATES_JSON     also write the gates' verdicts to this file
    LOADTEST_API_PROCESSES  API processes behind --host, for the server-side histogram (1)
    LOADTEST_METRICS_URL    the API's admin port, where its /metrics answers (--host's address, port 9100)
    LOADTEST_SERVER_GATES   "off" skips the server-side gates: behind a Service with several API
                            replicas a scrape cannot tell them apart; judge those in Prometheus
    LOADTEST_WARM_UP_S      with --reset-stats: restart the stats (and the server-side window)
                            this many seconds after spawning completes instead of at once (0)

Gates: when Locust quits, the master judges every request name's p95 against targets.toml, the
upvote's server time from the API's /metrics histogram, and fails the run (exit code 1) on any
miss or any failed request.
"""

from __future__ import annotations

import logging
import os
import random
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import gevent
import orjson
from locust import FastHttpUser, between, events, task
from locust.env import Environment
from locust.runners import WorkerRunner

from denorm.auth import mint_token
from denorm.config import DEV_JWT_SECRET
from loadtest import gates, histogram, keepalive
from loadtest.catalog import Catalog, search_query

log = logging.getLogger("denorm.loadtest")

SECRET = os.environ.get("JWT_SECRET", DEV_JWT_SECRET)
THINK_SCALE = float(os.environ.get("LOADTEST_THINK_SCALE", "1"))
TOKEN_TTL_SECONDS = 24 * 3600  # longer than any run
CATALOG = Catalog(os.environ.get("LOADTEST_USER_IDS") or None)
keepalive.install()  # a worker holds thousands of connections: see loadtest/keepalive.py

COMMENTS = ("Love this, shipping it tomorrow.", "How does it handle failover?", "Benchmarks look solid.",
            "Could you add an export button?", "Works great on Kubernetes.", "Starred!")  # fmt: skip
MESSAGES = ("Hi! Saw your project on the feed.", "Can we sync next week?", "Thanks for the intro!",
            "Sent you the notes from the call.", "Happy to help with the roadmap.")  # fmt: skip


def think(low: float, high: float) -> Any:
    return between(low * THINK_SCALE, high * THINK_SCALE)


def _json(r: Any) -> Any:
    """The answer's JSON, or None (and a failure) when it is not JSON. orjson, on the bytes: the
    generator parses nearly every answer, and a feed page costs the stdlib's json (after decoding
    the text) about three times as much CPU (docs/performance.md); the generator's CPU is CPU the
    system under test does not get on a shared machine."""
    try:
        return orjson.loads(r.content)
    except orjson.JSONDecodeError:
        r.failure("not JSON")
        return None


class Browsing(FastHttpUser):
    """What every visitor does: the feed, leaderboards, chains and search. Not spawned itself."""

    abstract = True
    # A connection per user, as a browser tab keeps one; no retries, so that errors are seen.
    concurrency = 1
    network_timeout = 30.0
    connection_timeout = 10.0

    headers: dict[str, str] | None = None
    signed = ""  # appended to request names, so the signed-in feed (Redis for user_has_upvoted) shows apart

    def on_start(self) -> None:
        CATALOG.fill(self.get_json)
        self.page: list[dict[str, Any]] = []
        self.sort = "trending"
        self.cursor: str | None = None

    # --- requests ----------------------------------------------------------------------------

    def get_json(self, path: str, name: str, headers: dict[str, str] | None = None) -> Any:
        """GET expecting 200 and JSON; None when it failed (and it is counted as a failure)."""
        with self.client.get(path, name=name, headers=headers or self.headers, catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"status {r.status_code}: {(r.text or '')[:200]}")
                return None
            return _json(r)

    def feed(self, sort: str, cursor: str | None = None) -> None:
        query: dict[str, str] = {"sort": sort, "limit": "20"}
        name = f"/api/projects?sort={sort}"
        if cursor:
            query["cursor"] = cursor
            name += "&cursor=[cursor]"
        data = self.get_json(f"/api/projects?{urlencode(query)}", name + self.signed)
        if data is None:
            return
        self.page, self.sort, self.cursor = data["items"], sort, data.get("next_cursor")
        CATALOG.see_projects(item["id"] for item in self.page)

    def scroll(self) -> None:
        """The next page of the feed the user is on; a user with no page yet lands on trending."""
        if self.cursor:
            self.feed(self.sort, self.cursor)
        else:
            self.feed("trending")

    def leaderboard(self, kind: str) -> None:
        self.get_json(f"/api/leaderboard/{kind}?limit=50", f"/api/leaderboard/{kind}")

    def chains(self) -> None:
        data = self.get_json("/api/chains?limit=20", "/api/chains")
        if data and data["items"]:
            CATALOG.slugs = list({*CATALOG.slugs, *(c["slug"] for c in data["items"])})

    def chain_page(self) -> None:
        self.get_json(f"/api/chains/{CATALOG.slug()}", "/api/chains/[slug]")

    def project_page(self) -> None:
        """A project from the feed (or one seen before), and sometimes its older comments."""
        item = random.choice(self.page) if self.page else None
        project = item["id"] if item else CATALOG.project()
        data = self.get_json(f"/api/projects/{project}", "/api/projects/[id]")
        cursor = data["comments"]["next_cursor"] if data else None
        if cursor and random.random() < 0.3:
            query = urlencode({"cursor": cursor})
            self.get_json(f"/api/projects/{project}/comments?{query}", "/api/projects/[id]/comments?cursor=[cursor]")

    def thread_page(self) -> None:
        """A chain's page, one of its threads, and the thread's posts page by page, as a reader scrolls."""
        chain = self.get_json(f"/api/chains/{CATALOG.slug()}", "/api/chains/[slug]")
        if not chain or not chain["threads"]:
            return
        thread = random.choice(chain["threads"])["thread_id"]
        query: dict[str, str] = {}
        for _ in range(3):
            name = "/api/threads/[id]" + ("?cursor=[cursor]" if query else "")
            data = self.get_json(f"/api/threads/{thread}?{urlencode(query)}", name)
            if not data or not data["next_cursor"] or random.random() < 0.5:
                return
            query = {"cursor": data["next_cursor"]}

    def chain_more(self) -> None:
        """A chain's page, then its projects or threads past the first twenty."""
        slug = CATALOG.slug()
        chain = self.get_json(f"/api/chains/{slug}", "/api/chains/[slug]")
        kind = random.choice(["projects", "threads"])
        cursor = chain.get(f"{kind}_next_cursor") if chain else None
        if cursor:
            query = urlencode({"cursor": cursor})
            self.get_json(f"/api/chains/{slug}/{kind}?{query}", f"/api/chains/[slug]/{kind}?cursor=[cursor]")

    def search(self) -> None:
        self.get_json(f"/api/search?{search_query()}", "/api/search?q=[query]")


class Reader(Browsing):
    """An anonymous visitor reading the feed, the leaderboards, chains and search results.

    Most visitors of a social product never sign in, and most of those who do only read: 7 of 10
    simulated users are readers.

    Think time 4 to 12 s (8 s on average) between two pages: the time to skim a page of twenty
    projects, a leaderboard or a chain before the next click. At 5000 users that is about 600 page
    views a second, in line with the seed's "5000 concurrent users".
    """

    weight = 7
    wait_time = think(4, 12)

    @task(30)  # the landing page: most visits start, and many end, on the trending feed
    def trending(self) -> None:
        self.feed("trending")

    @task(12)  # scrolling down past the first twenty
    def next_page(self) -> None:
        self.scroll()

    @task(8)
    def newest(self) -> None:
        self.feed("newest")

    @task(6)
    def top_rated(self) -> None:
        self.feed("top-rated")

    @task(8)
    def project_leaderboard(self) -> None:
        self.leaderboard("projects")

    @task(4)
    def user_leaderboard(self) -> None:
        self.leaderboard("users")

    @task(8)
    def chain_directory(self) -> None:
        self.chains()

    @task(10)  # a chain is reached from the directory, a project, or a shared link
    def chain(self) -> None:
        self.chain_page()

    @task(10)  # a project from the feed: its page and its comments
    def open_project(self) -> None:
        self.project_page()

    @task(4)  # a chain's forum: a thread, read page by page
    def read_thread(self) -> None:
        self.thread_page()

    @task(3)  # more of a chain than its page shows
    def more_of_a_chain(self) -> None:
        self.chain_more()

    @task(14)  # search is the second way in, after the feed; half the queries carry a typo
    def search_projects(self) -> None:
        self.search()


class Member(Browsing):
    """A signed-in user: reads like a reader, and also checks the dashboard and conversations,
    upvotes, comments, sends messages and asks for and answers intro requests.

    3 of 10 simulated users. Think time 3 to 10 s (6.5 s on average): a member acts on the page in
    front of them (an upvote is one click), so their requests come a little closer together.
    """

    weight = 3
    wait_time = think(3, 10)
    signed = " (signed in)"

    def on_start(self) -> None:
        super().on_start()
        self.user_id = CATALOG.user()
        self.headers = {"Authorization": f"Bearer {mint_token(self.user_id, SECRET, TOKEN_TTL_SECONDS)}"}
        self.conversations: list[dict[str, Any]] = []
        CATALOG.come_online(self.user_id)

    def on_stop(self) -> None:
        CATALOG.go_offline(self.user_id)

    def send(self, method: str, path: str, name: str, body: dict[str, Any] | None, ok: int,
             expected: tuple[int, ...] = ()) -> Any:  # fmt: skip
        """A write expecting `ok`; statuses in `expected` are business outcomes, not failures. A POST
        other than the upvote's toggle carries an Idempotency-Key, as a client that may retry sends it."""
        headers = dict(self.headers or {})
        if method == "POST" and not path.endswith("/upvote"):
            headers = {**headers, "Idempotency-Key": uuid.uuid4().hex}
        with self.client.request(method, path, name=name, json=body, headers=headers, catch_response=True) as r:
            if r.status_code == ok:
                return _json(r)
            if r.status_code in expected:
                r.success()
                return None
            r.failure(f"status {r.status_code}: {(r.text or '')[:200]}")
            return None

    def a_project_on_the_page(self) -> dict[str, Any] | None:
        if not self.page:
            self.feed("trending")  # one acts on what one sees: load the feed first
        return random.choice(self.page) if self.page else None

    @task(24)  # the landing page, signed in: each item says whether the user upvoted it
    def my_feed(self) -> None:
        self.feed(random.choices(["trending", "newest", "top-rated"], weights=[70, 20, 10])[0])

    @task(6)
    def next_page(self) -> None:
        self.scroll()

    @task(12)  # the home of a signed-in user: stats, unread messages, pending intros
    def dashboard(self) -> None:
        self.get_json("/api/users/dashboard", "/api/users/dashboard")

    @task(8)
    def inbox(self) -> None:
        data = self.get_json("/api/messages/conversations", "/api/messages/conversations")
        if data is not None:
            self.conversations = data["items"]

    @task(10)  # set or clear, from the state the feed showed (the idempotent PUT and DELETE)
    def upvote(self) -> None:
        item = self.a_project_on_the_page()
        if item is None:
            return
        method = "DELETE" if item.get("user_has_upvoted") else "PUT"
        state = self.send(method, f"/api/projects/{item['id']}/upvote", "/api/projects/[id]/upvote", None, 200)
        if state is not None:
            item["user_has_upvoted"] = state["upvoted"]

    @task(4)  # a client that only knows "clicked": the toggle
    def toggle_upvote(self) -> None:
        item = self.a_project_on_the_page()
        if item is not None:
            self.send("POST", f"/api/projects/{item['id']}/upvote", "/api/projects/[id]/upvote", None, 200)

    @task(4)
    def comment(self) -> None:
        item = self.a_project_on_the_page()
        if item is not None:
            body = {"body": random.choice(COMMENTS)}
            self.send("POST", f"/api/projects/{item['id']}/comments", "/api/projects/[id]/comments", body, 201)

    @task(4)  # mostly replies to an open conversation, sometimes a first message to a project's owner
    def message(self) -> None:
        others = [c["other_user_id"] for c in self.conversations]
        item = self.a_project_on_the_page()
        if item is not None:
            others.append(item["owner_id"])
        others = [o for o in others if o != self.user_id]
        if others:  # the API refuses a message to oneself
            body = {"recipient_id": random.choice(others), "body": random.choice(MESSAGES)}
            self.send("POST", "/api/messages", "/api/messages", body, 201)

    @task(4)  # open the conversation list, read the first unread one
    def read_messages(self) -> None:
        self.inbox()
        unread = [c for c in self.conversations if c["unread_count"] > 0]
        if unread:
            body = {"other_user_id": unread[0]["other_user_id"]}
            self.send("POST", "/api/messages/read", "/api/messages/read", body, 200)

    @task(3)  # ask a member who is online (so they can answer), about a project on the page
    def ask_for_intro(self) -> None:
        target = CATALOG.online_peer(self.user_id)
        if target is None:
            return
        item = self.a_project_on_the_page()
        body = {"target_id": target, "project_id": item["id"] if item else None, "message": "Could you introduce me?"}
        # 409: this member already has a pending request of ours about it (one is allowed).
        self.send("POST", "/api/intro-requests", "/api/intro-requests", body, 201, expected=(409,))

    @task(3)  # the inbox of intro requests (the seeded pending ones too): answer one, mostly yes
    def answer_intro(self) -> None:
        inbox = self.get_json("/api/intro-requests?box=received&status=pending&limit=20",
                              "/api/intro-requests?box=received&status=pending")  # fmt: skip
        if not inbox or not inbox["items"]:
            return
        intro = random.choice(inbox["items"])["id"]
        decision = random.choices(["accept", "decline"], weights=[70, 30])[0]
        # 404: another session of the same user answered it first, a normal outcome.
        path = f"/api/intro-requests/{intro}/{decision}"
        self.send("POST", path, "/api/intro-requests/[id]/[decision]", None, 200, expected=(404,))

    @task(2)  # the requests one sent, and how they were answered
    def sent_intros(self) -> None:
        self.get_json("/api/intro-requests?box=sent&limit=20", "/api/intro-requests?box=sent")

    @task(4)  # a conversation from the list: its latest messages, sometimes older ones
    def read_conversation(self) -> None:
        if not self.conversations:
            self.inbox()
        if not self.conversations:
            return
        other = random.choice(self.conversations)["other_user_id"]
        data = self.get_json(f"/api/messages/conversations/{other}?limit=20", "/api/messages/conversations/[id]")
        if data and data["next_cursor"] and random.random() < 0.3:
            query = urlencode({"cursor": data["next_cursor"], "limit": "20"})
            self.get_json(f"/api/messages/conversations/{other}?{query}",
                          "/api/messages/conversations/[id]?cursor=[cursor]")  # fmt: skip

    @task(4)
    def open_project(self) -> None:
        self.project_page()

    @task(2)
    def read_thread(self) -> None:
        self.thread_page()

    @task(4)
    def project_leaderboard(self) -> None:
        self.leaderboard("projects")

    @task(2)
    def chain_directory(self) -> None:
        self.chains()

    @task(4)
    def chain(self) -> None:
        self.chain_page()

    @task(8)
    def search_projects(self) -> None:
        self.search()


# --- gates ---------------------------------------------------------------------------------------

_baseline: histogram.Snapshot | None = None
_environment: Environment | None = None


def _judges(environment: Environment) -> bool:
    """Only the master (or a lone local runner) judges: it alone holds every worker's stats."""
    return not isinstance(environment.runner, WorkerRunner)


def _api_processes() -> int:
    return int(os.environ.get("LOADTEST_API_PROCESSES", "1"))


def _metrics_url(host: str) -> str:
    """The API's admin port (services/api/ports.py): the one given, else 9100 at --host's address."""
    if url := os.environ.get("LOADTEST_METRICS_URL"):
        return url
    parts = urlsplit(host)
    return f"{parts.scheme}://{parts.hostname}:9100"


def _server_snapshot(environment: Environment) -> histogram.Snapshot | None:
    if os.environ.get("LOADTEST_SERVER_GATES", "on") == "off":
        return None
    try:
        return histogram.snapshot(_metrics_url(str(environment.host)), _api_processes())
    except (OSError, ValueError) as exc:
        log.error("could not read the API's /metrics: %s", exc)
        return None


def _take_baseline(environment: Environment, **_kwargs: Any) -> None:
    global _baseline, _environment
    _environment = environment
    if _judges(environment) and environment.host:
        _baseline = _server_snapshot(environment)


def _warm_up_s() -> float:
    return float(os.environ.get("LOADTEST_WARM_UP_S", "0"))


def _after_spawning(**_kwargs: Any) -> None:
    """Locust's stats restart when every user runs (--reset-stats); so does the server-side window.
    With a warm-up they restart again that long after, on the master and on each worker (each
    holds the requests it has not reported yet): the backlog a fast ramp leaves behind drains
    before the measured window, as a system in its steady state has none."""
    env = _environment
    if env is None or not env.reset_stats:
        return
    if (warm_up := _warm_up_s()) > 0:
        gevent.spawn_later(warm_up, _restart_window, env)
    else:
        _rebase(env)


def _restart_window(env: Environment) -> None:
    if env.runner is not None:
        log.info("warm-up over: the stats restart")
        env.runner.stats.reset_all()
    _rebase(env)


def _rebase(env: Environment) -> None:
    """The server-side window restarts with the stats. Only with one API process: with several, a
    snapshot taken under load cannot tell them apart (histogram.py), so the baseline stays the one
    from before the ramp."""
    global _baseline
    if _judges(env) and env.host and _api_processes() == 1:
        _baseline = _server_snapshot(env)


def _check_gates(environment: Environment, **_kwargs: Any) -> None:
    if not _judges(environment):
        return
    targets_path = os.environ.get("LOADTEST_TARGETS")
    targets = gates.load_targets(Path(targets_path) if targets_path else None)
    q = targets.percentile
    rows = [
        gates.ClientRow(str(e.method), e.name, e.num_requests, e.num_failures,
                        float(e.get_response_time_percentile(q)) if e.num_requests else None)
        for e in environment.stats.entries.values()
    ]  # fmt: skip
    verdicts = gates.client_verdicts(targets, rows)
    server_gates = bool(targets.server) and os.environ.get("LOADTEST_SERVER_GATES", "on") != "off"
    after = _server_snapshot(environment) if server_gates and environment.host else None
    if server_gates:
        series = {} if after is None else histogram.subtract(after.series, _baseline.series if _baseline else {})
        seen = f"{after.processes_seen} API process(es) seen" if after else "metrics unreachable"
        verdicts += gates.server_verdicts(targets, series, seen)
    total = environment.stats.total
    verdicts.append(gates.failure_verdict(total.num_requests, total.num_failures))
    ok = gates.passed(verdicts)
    print(f"\nLoad test gates ({'all hold' if ok else 'FAILED'}):\n{gates.format_table(verdicts, q)}\n", flush=True)
    if path := os.environ.get("LOADTEST_GATES_JSON"):
        gates.write_json(Path(path), verdicts, q)
    if not ok:
        environment.process_exit_code = 1


# EventHook.add_listener has no annotations; as a decorator it would make the listeners untyped.
events.test_start.add_listener(_take_baseline)  # type: ignore[no-untyped-call]
events.spawning_complete.add_listener(_after_spawning)  # type: ignore[no-untyped-call]
events.quitting.add_listener(_check_gates)  # type: ignore[no-untyped-call]
