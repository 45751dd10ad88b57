"""A chaos soak: the whole system under a mixed workload while faults strike one after another, then
every acknowledged write checked (Jepsen's way: faults during a workload, then the history).

A private Postgres (durable: a commit survives its crash) and Redis, two API processes and a
refresher, `--scale` seeded. Signed-in members read, upvote (PUT, DELETE and the POST toggle) and
write comments and messages, each sent with an Idempotency-Key and retried until answered;
anonymous readers read; a plain-SQL writer runs bulk statements beside them. The faults, in turn:
kill -9 of an API and of the refresher, the refresher stopped (SIGSTOP), Postgres crashed
(`restart -m immediate`) and stopped, Redis restarted (its data lost) and stalled (DEBUG SLEEP), a
second refresher, an API stopped with SIGTERM. Then: every acknowledged write is in Postgres and
none twice, each upvote pair as its last answer said, the reconciler finds no drift, the feed's
`user_has_upvoted` agrees with Postgres, no HTTP 500, no 5xx outside a Postgres fault's window (its
length plus the one-second bound), no traceback or deadlock in any log, every process gone within a
second of SIGTERM; and each fault's recovery: reads, writes and the read models back within a second
of Postgres accepting connections again.

    python -m bench.chaos [--scale small] [--members 200] [--readers 50] [--rate 70] [--gap 25]

Prints each fault's recovery and every check; exits 1 when one fails. tests/test_chaos.py runs a
short form (tiny, every fault, a few seconds apart) in `make test`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import requests

from bench.faults import PrivatePostgres, PrivateRedis
from denorm.auth import mint_token
from denorm.config import DEV_JWT_SECRET
from denorm.migrate import ensure_database, migrate
from denorm.seed import SCALES, seed
from loadtest.localproc import free_port, wait_ready

DENORM = str(Path(sys.executable).with_name("denorm"))
# The rate limits, out of the way of a workload that writes from one address with a few tokens.
UNLIMITED = ("API_RATE_WRITES_PER_TOKEN", "API_RATE_WRITES_PER_ADDRESS", "API_RATE_SEARCH_MISSES_PER_TOKEN",
             "API_RATE_SEARCH_MISSES_PER_ADDRESS")  # fmt: skip
BOUND_S = 1.0  # reads, writes and the read models back within this of Postgres's return; SIGTERM too
TIMEOUT_S = 5.0  # a client's patience with one request


@dataclass(frozen=True)
class Plan:
    """How long and how hard: the defaults are the long form."""

    scale: str = "small"
    members: int = 200  # signed-in users, each a thread: reads, upvotes, comments, messages
    readers: int = 50  # anonymous readers
    rate: float = 70.0  # requests a second, all clients together
    gap_s: float = 25.0  # between one fault's end and the next one's start
    stop_s: float = 10.0  # the refresher SIGSTOPped this long
    pg_down_s: float = 8.0  # Postgres stopped this long
    stall_s: float = 3.0  # Redis's DEBUG SLEEP
    second_s: float = 30.0  # the second refresher's run
    flags: int = 6000  # user_has_upvoted flags compared at the end


SHORT = Plan(scale="tiny", members=20, readers=5, rate=40, gap_s=4, stop_s=3, pg_down_s=8, stall_s=2, second_s=5,
             flags=600)  # fmt: skip


@dataclass
class Request:
    sent: float
    done: float
    kind: str  # read | write
    route: str
    status: int | None  # None: no answer (refused, cut, timed out)
    error: str = ""  # a 5xx's message


@dataclass
class Fault:
    name: str
    start: float
    end: float = 0.0  # when what the fault took away is back (Postgres accepting connections, ...)
    postgres: bool = False  # 5xx are expected from start to end + BOUND_S
    exit_s: float | None = None  # for a SIGTERM: how long the process took to go
    unanswered: int = 0  # requests sent during it that got no answer
    errors: int = 0  # and those answered 5xx
    recovery: dict[str, float | None] = field(default_factory=dict)


@dataclass
class Report:
    faults: list[Fault]
    checks: dict[str, Any]
    problems: list[str]

    def lines(self) -> Iterator[str]:
        yield f"{'fault':<22} {'reads':>7} {'writes':>7} {'models':>7}   (s after it ended)"
        for f in self.faults:
            cells = [f.recovery.get(k) for k in ("reads", "writes", "models")]
            extra = f"   exit {f.exit_s:.2f} s" if f.exit_s is not None else ""
            extra += f"   lasted {f.end - f.start:.1f} s, unanswered {f.unanswered}, 5xx {f.errors}"
            yield f"{f.name:<22} " + " ".join(f"{c:7.2f}" if c is not None else "      -" for c in cells) + extra
        for name, value in self.checks.items():
            yield f"{name}: {value}"
        yield "PASS" if not self.problems else "FAIL: " + "; ".join(self.problems)


# --- the system ---------------------------------------------------------------------------------


class System:
    """The private servers and the three services as processes, each logging to a file of its own."""

    def __init__(self, plan: Plan, directory: Path) -> None:
        self.directory = directory
        self.postgres = PrivatePostgres(durable=True)
        self.redis = PrivateRedis(directory)
        self.redis.start()
        self.url = self.postgres.url("denorm")
        ensure_database(self.url)
        migrate(self.url, echo=lambda _m: None)
        seed(self.url, SCALES[plan.scale], seed=17)
        self.env = {**os.environ, "DATABASE_URL": self.url, "REDIS_URL": self.redis.url, "ENVIRONMENT": "test",
                    "JWT_SECRET": DEV_JWT_SECRET, "REDIS_KEY_PREFIX": "chaos:", "API_ACCESS_LOG": "false",
                    "REFRESHER_METRICS_PORT": "0", "LOG_LEVEL": "INFO", "API_ADMIN_PORT": "0",
                    **dict.fromkeys(UNLIMITED, "1000000/second")}  # fmt: skip
        self.ports = [free_port(), free_port()]
        self.apis: list[subprocess.Popen[bytes] | None] = [None, None]
        self.refreshers: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.exits: list[tuple[str, float]] = []  # (process, seconds from SIGTERM to its end)

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = self.directory / f"{name}-{len(self.logs)}.log"
        self.logs.append(log)
        with log.open("wb") as out:
            return subprocess.Popen([DENORM, *args], env=self.env, stdout=out, stderr=subprocess.STDOUT)

    def start_api(self, i: int) -> None:
        proc = self._spawn(f"api{i}", ["api", "--port", str(self.ports[i])])
        wait_ready(self.base(i), proc)
        self.apis[i] = proc

    def start_refresher(self) -> subprocess.Popen[bytes]:
        proc = self._spawn("refresher", ["refresher"])
        self.refreshers.append(proc)
        return proc

    def base(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[i]}"

    def terminate(self, name: str, proc: subprocess.Popen[bytes]) -> float:
        """SIGTERM, and the seconds until the process was gone (killed after 30)."""
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        seconds = time.monotonic() - started
        self.exits.append((name, seconds))
        return seconds

    def stop_all(self) -> None:
        for i, api in enumerate(self.apis):
            if api is not None and api.poll() is None:
                self.terminate(f"api{i}", api)
        for proc in self.refreshers:
            if proc.poll() is None:
                self.terminate("refresher", proc)

    def drop(self) -> None:
        for proc in [*self.apis, *self.refreshers]:
            if proc is not None and proc.poll() is None:
                proc.kill()
        self.redis.stop()
        self.postgres.drop()


def accepting(url: str, deadline_s: float = 120) -> float:
    """When Postgres next accepts a connection (polled every 20 ms)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            psycopg.connect(url, connect_timeout=1).close()
            return time.monotonic()
        except psycopg.OperationalError:
            time.sleep(0.02)
    raise RuntimeError("Postgres did not come back")


# --- the workload -------------------------------------------------------------------------------


@dataclass
class Pair:
    """One member's upvote of one project, as its answers told it."""

    state: bool | None = None  # the last acknowledged answer's
    settled: bool = True  # no request sent after that answer went unanswered


class Workload:
    def __init__(self, system: System, plan: Plan) -> None:
        self.system, self.plan = system, plan
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.requests: list[Request] = []
        self.written: dict[str, dict[str, Any]] = {}  # marker -> {"table", "id" (acknowledged) or None}
        self.pairs: dict[tuple[int, int], Pair] = {}
        self.failures: Counter[str] = Counter()  # why requests went unanswered
        with psycopg.connect(system.url) as conn:
            row = conn.execute("SELECT max(id) FROM projects").fetchone()
            users = conn.execute("SELECT max(id) FROM users").fetchone()
        assert row is not None and users is not None
        self.projects, self.users = int(row[0]), int(users[0])
        self.sql_users = range(plan.members + 1, self.users + 1)  # the plain-SQL writer's, never a member's
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        clients = self.plan.members + self.plan.readers
        pause = clients / self.plan.rate  # each client's mean time between requests
        for member in range(1, self.plan.members + 1):
            self.threads.append(threading.Thread(target=self._member, args=(member, pause), daemon=True))
        for reader in range(self.plan.readers):
            self.threads.append(threading.Thread(target=self._reader, args=(reader, pause), daemon=True))
        self.threads.append(threading.Thread(target=self._sql_writer, daemon=True))
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)

    def _send(self, http: requests.Session, kind: str, route: str, method: str, path: str, token: str | None,
              body: Any = None, key: str | None = None) -> requests.Response | None:  # fmt: skip
        """One request to one of the two APIs, chosen at random; recorded, answered or not."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if key is not None:
            headers["Idempotency-Key"] = key
        base = self.system.base(random.randrange(2))
        sent = time.monotonic()
        try:
            response: requests.Response | None = http.request(method, base + path, json=body, headers=headers,
                                                              timeout=TIMEOUT_S)  # fmt: skip
        except requests.RequestException as exc:
            response = None
            self.failures[type(exc).__name__] += 1
        status = None if response is None else response.status_code  # (a Response is falsy when not ok)
        error = response.text[:200] if response is not None and response.status_code >= 500 else ""
        with self.lock:
            self.requests.append(Request(sent, time.monotonic(), kind, route, status, error))
        return response

    def _member(self, member: int, pause: float) -> None:
        rng = random.Random(member)
        token = mint_token(member, DEV_JWT_SECRET, ttl_seconds=3600)
        mine = rng.sample(range(1, self.projects + 1), 8)
        with requests.Session() as http:
            while not self.stop.wait(rng.expovariate(1 / pause)):
                action = rng.choices(["feed", "page", "dashboard", "upvote", "toggle", "comment", "message"],
                                     [4, 1, 1, 3, 1, 1, 1])[0]  # fmt: skip
                if action == "feed":
                    sort = rng.choice(["trending", "newest", "top-rated"])
                    self._send(http, "read", "feed", "GET", f"/api/projects?sort={sort}&limit=20", token)
                elif action == "page":
                    self._send(http, "read", "project", "GET", f"/api/projects/{rng.choice(mine)}", token)
                elif action == "dashboard":
                    self._send(http, "read", "dashboard", "GET", "/api/users/dashboard", token)
                elif action in ("upvote", "toggle"):
                    self._upvote(http, token, member, rng.choice(mine), action, rng)
                else:
                    self._keyed_write(http, token, member, action, rng)

    def _upvote(self, http: requests.Session, token: str, member: int, project: int, action: str,
                rng: random.Random) -> None:  # fmt: skip
        method = "POST" if action == "toggle" else rng.choice(["PUT", "DELETE"])
        pair = self.pairs.setdefault((member, project), Pair())
        response = self._send(http, "write", f"{method} upvote", method, f"/api/projects/{project}/upvote", token)
        if response is not None and response.status_code == 200:
            pair.state, pair.settled = bool(response.json()["upvoted"]), True
        elif response is None or response.status_code >= 500:
            pair.settled = False  # it may or may not have been made

    def _keyed_write(self, http: requests.Session, token: str, member: int, action: str, rng: random.Random) -> None:
        """A comment or a message with a key of its own, sent again (same key, same body) until it is
        answered or the run is over: a client that never knows whether its write was made."""
        mark, key = f"chaos-{uuid.uuid4().hex}", uuid.uuid4().hex
        body: dict[str, Any]
        if action == "comment":
            table, path, body = (
                "project_comments",
                f"/api/projects/{rng.randint(1, self.projects)}/comments",
                {"body": mark},
            )
        else:
            recipient = rng.choice([u for u in range(1, self.plan.members + 1) if u != member] or [self.users])
            table, path, body = "messages", "/api/messages", {"recipient_id": recipient, "body": mark}
        with self.lock:
            self.written[mark] = {"table": table, "id": None}
        give_up = time.monotonic() + 60
        while time.monotonic() < give_up:
            response = self._send(http, "write", f"POST {action}", "POST", path, token, body, key)
            if response is not None and response.status_code == 201:
                with self.lock:
                    self.written[mark]["id"] = int(response.json()["id"])
                return
            if response is not None and response.status_code < 500:
                return  # refused (a 4xx): not written, and not to be retried
            time.sleep(0.2)

    def _reader(self, reader: int, pause: float) -> None:
        rng = random.Random(10_000 + reader)
        with requests.Session() as http:
            while not self.stop.wait(rng.expovariate(1 / pause)):
                route, path = rng.choice([("feed", "/api/projects?sort=trending&limit=20"),
                                          ("leaderboard", "/api/leaderboard/projects"),
                                          ("leaderboard", "/api/leaderboard/users"), ("chains", "/api/chains"),
                                          ("search", f"/api/search?q={rng.choice(['redis', 'postgres', 'cache'])}"),
                                          ("project", f"/api/projects/{rng.randint(1, self.projects)}")])  # fmt: skip
                self._send(http, "read", route, "GET", path, None)

    def _sql_writer(self) -> None:
        """Bulk statements straight in SQL, on its own users' rows, reconnecting after any fault."""
        rng = random.Random(99)
        statements = [
            "INSERT INTO project_upvotes (user_id, project_id) SELECT %(u)s, p "
            "FROM generate_series(%(p)s, %(p)s + 30) p WHERE p <= %(n)s ON CONFLICT DO NOTHING",
            "DELETE FROM project_upvotes WHERE user_id = %(u)s AND project_id % 3 = %(k)s",
            "INSERT INTO project_comments (project_id, author_id, body) SELECT p, %(u)s, 'sql bulk' "
            "FROM generate_series(%(p)s, %(p)s + 20) p WHERE p <= %(n)s",
            "DELETE FROM project_comments WHERE author_id = %(u)s AND body = 'sql bulk' AND id % 2 = %(k)s % 2",
            "UPDATE projects SET title = title || '' WHERE id BETWEEN %(p)s AND %(p)s + 10",
            "INSERT INTO messages (sender_id, recipient_id, body) SELECT %(u)s, v, 'sql' "
            "FROM generate_series(%(v)s, %(v)s + 5) v WHERE v <> %(u)s AND v <= %(m)s",
        ]  # fmt: skip
        conn: psycopg.Connection[Any] | None = None
        while not self.stop.wait(0.3):
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.system.url, autocommit=True, connect_timeout=2)
                params = {"u": rng.choice(self.sql_users), "p": rng.randint(1, self.projects), "n": self.projects,
                          "k": rng.randint(0, 2), "v": rng.choice(self.sql_users), "m": self.users}  # fmt: skip
                conn.execute(rng.choice(statements).encode(), params)
            except psycopg.Error:
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()


# --- the faults ---------------------------------------------------------------------------------


def faults(system: System, plan: Plan) -> list[tuple[str, Callable[[Fault], None]]]:
    """Each fault in turn: it strikes, waits its length, and records when what it took is back."""
    pg, rd = system.postgres, system.redis

    def kill_api(f: Fault) -> None:
        api = system.apis[0]
        assert api is not None
        api.kill()
        api.wait()
        system.start_api(0)
        f.end = time.monotonic()

    def kill_refresher(f: Fault) -> None:
        proc = system.refreshers.pop(0)
        proc.kill()
        proc.wait()
        system.start_refresher()
        f.end = time.monotonic()

    def stop_refresher(f: Fault) -> None:
        proc = system.refreshers[0]
        proc.send_signal(signal.SIGSTOP)
        time.sleep(plan.stop_s)
        proc.send_signal(signal.SIGCONT)
        f.end = time.monotonic()

    def crash_postgres(f: Fault) -> None:
        f.postgres = True
        pg.crash()
        f.end = accepting(system.url)

    def stop_postgres(f: Fault) -> None:
        f.postgres = True
        pg.stop()
        time.sleep(plan.pg_down_s)
        pg.start()
        f.end = accepting(system.url)

    def restart_redis(f: Fault) -> None:
        rd.kill()  # its data with it: the server keeps nothing on disk
        rd.start()
        f.end = time.monotonic()

    def stall_redis(f: Fault) -> None:
        sleeper = rd.stall(plan.stall_s)
        sleeper.wait(timeout=plan.stall_s + 30)
        f.end = time.monotonic()

    def second_refresher(f: Fault) -> None:
        proc = system.start_refresher()
        time.sleep(plan.second_s)
        system.refreshers.remove(proc)
        f.exit_s = system.terminate("refresher", proc)
        f.end = time.monotonic()

    def sigterm_api(f: Fault) -> None:
        api = system.apis[1]
        assert api is not None
        f.exit_s = system.terminate("api1", api)
        system.start_api(1)
        f.end = time.monotonic()

    return [("kill -9 api", kill_api), ("kill -9 refresher", kill_refresher), ("SIGSTOP refresher", stop_refresher),
            ("crash postgres", crash_postgres), ("stop postgres", stop_postgres), ("restart redis", restart_redis),
            ("stall redis", stall_redis), ("second refresher", second_refresher),
            ("SIGTERM api", sigterm_api)]  # fmt: skip


class FoldWatch:
    """When the read models last moved: fold_state.folded_at, polled every 20 ms from a connection of
    its own (reconnecting). A fold that commits moves it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.moves: list[float] = []  # monotonic times at which folded_at was seen to change
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        last = None
        conn: psycopg.Connection[Any] | None = None
        while not self.stop.wait(0.02):
            try:
                if conn is None:
                    conn = psycopg.connect(self.url, autocommit=True, connect_timeout=1)
                row = conn.execute("SELECT folded_at FROM fold_state").fetchone()
                if row is not None and row[0] != last:
                    last = row[0]
                    self.moves.append(time.monotonic())
            except psycopg.Error:
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def first_after(self, at: float) -> float | None:
        return next((t for t in self.moves if t > at), None)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def recovery(fault: Fault, history: list[Request], watch: FoldWatch) -> dict[str, float | None]:
    """Seconds from the fault's end to the first answered read, answered write and fold after it."""
    found: dict[str, float | None] = {}
    for kind in ("read", "write"):
        done = [r.done for r in history if r.kind == kind and r.done > fault.end and r.status is not None
                and r.status < 500]  # fmt: skip
        found[f"{kind}s"] = min(done) - fault.end if done else None
    moved = watch.first_after(fault.end)
    found["models"] = moved - fault.end if moved is not None else None
    return found


# --- the checks ---------------------------------------------------------------------------------


SETTLED = "SELECT extract(epoch FROM as_of) > %s, (SELECT count(*) FROM upvote_set_changes) FROM fold_state"


def settle(url: str, since: float) -> None:
    """Until the fold has caught up with every write (its clock past the workload's end) and the
    refresher has drained the upvote marks into Redis."""
    deadline = time.monotonic() + 120
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(SETTLED, (since,)).fetchone()
            if row is not None and row[0] and row[1] == 0:
                return
            time.sleep(0.2)
    raise RuntimeError("the read models did not catch up within 120 s")


def check_writes(url: str, work: Workload) -> dict[str, int]:
    """Every acknowledged write in Postgres exactly once; an unacknowledged one at most once."""
    found = {"acknowledged": 0, "missing": 0, "twice": 0, "unanswered": 0, "pairs": 0, "pairs_wrong": 0}
    with psycopg.connect(url) as conn:
        for table in ("project_comments", "messages"):
            marks = [m for m, w in work.written.items() if w["table"] == table]
            statement = f"SELECT body, count(*), min(id) FROM {table} WHERE body = ANY(%s) GROUP BY body"
            rows = conn.execute(statement.encode(), (marks,)).fetchall()
            counts = {r[0]: (int(r[1]), int(r[2])) for r in rows}
            for mark in marks:
                n, first = counts.get(mark, (0, 0))
                acked = work.written[mark]["id"]
                found["twice"] += n > 1
                if acked is None:
                    found["unanswered"] += 1
                else:
                    found["acknowledged"] += 1
                    found["missing"] += n == 0 or first != acked
        upvoted = {(int(u), int(p)) for u, p in conn.execute(
            "SELECT user_id, project_id FROM project_upvotes WHERE user_id <= %s", (work.plan.members,))}  # fmt: skip
    for (member, project), pair in work.pairs.items():
        if pair.state is not None and pair.settled:
            found["pairs"] += 1
            found["pairs_wrong"] += ((member, project) in upvoted) != pair.state
    return found


def check_flags(system: System, plan: Plan) -> dict[str, int]:
    """The feed's user_has_upvoted, signed in, against project_upvotes: `plan.flags` of them."""
    compared = wrong = 0
    with psycopg.connect(system.url) as conn, requests.Session() as http:
        for user in itertools.cycle(range(1, plan.members + 1)):
            if compared >= plan.flags:
                break
            mine = {
                int(r[0]) for r in conn.execute("SELECT project_id FROM project_upvotes WHERE user_id = %s", (user,))
            }
            token = mint_token(user, DEV_JWT_SECRET)
            page = http.get(f"{system.base(user % 2)}/api/projects?sort=top-rated&limit=50&page={1 + user % 3}",
                            headers={"Authorization": f"Bearer {token}"}, timeout=30).json()  # fmt: skip
            for item in page["items"]:
                compared += 1
                wrong += item["user_has_upvoted"] != (item["id"] in mine)
    return {"flags_compared": compared, "flags_wrong": wrong}


def check_drift(system: System) -> dict[str, Any]:
    done = subprocess.run([DENORM, "reconcile", "--dry-run"], env={**system.env, "LOG_LEVEL": "WARNING"},
                          capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return {"reconcile_status": summary.get("status"), "drift_rows": summary.get("drift_rows"),
            "read_models": len(summary.get("models", {})), "redis_sets": summary.get("redis")}  # fmt: skip


def check_logs(system: System) -> dict[str, int]:
    found = {"tracebacks": 0, "deadlocks": 0, "error_lines": 0}
    for log in system.logs:
        for line in log.read_text(errors="replace").splitlines():
            found["tracebacks"] += "Traceback" in line
            found["deadlocks"] += "deadlock" in line.lower()
            found["error_lines"] += '"level": "error"' in line or '"level":"error"' in line
    return found


def problems_of(report_faults: list[Fault], history: list[Request], checks: dict[str, Any]) -> list[str]:
    found: list[str] = []
    for name in ("missing", "twice", "pairs_wrong", "flags_wrong", "tracebacks", "deadlocks"):
        if checks.get(name):
            found.append(f"{name}: {checks[name]}")
    if (
        checks.get("drift_rows") != 0
        or checks.get("reconcile_status") != "finished"
        or checks["redis_sets"] != "checked"
    ):
        found.append(f"reconciler: {checks.get('reconcile_status')}, {checks.get('drift_rows')} rows of drift")
    server_errors = [r for r in history if r.status == 500]
    if server_errors:
        found.append(f"{len(server_errors)} HTTP 500")
    windows = [(f.start, f.end + BOUND_S) for f in report_faults if f.postgres]
    late = [r for r in history if r.status is not None and r.status >= 500
            and not any(a <= r.sent <= b or a <= r.done <= b for a, b in windows)]  # fmt: skip
    if late:
        kinds: dict[str, list[float]] = {}
        for r in late:
            before = [f for f in report_faults if f.end < r.sent]
            after = f"after {before[-1].name}" if before else "before any fault"
            message = (
                json.loads(r.error).get("error", {}).get("message", r.error) if r.error.startswith("{") else r.error
            )
            kinds.setdefault(f"{r.route} {r.status} ({message}) {after}", []).append(
                r.sent - before[-1].end if before else r.sent
            )
        found.append(
            f"{len(late)} 5xx outside a Postgres fault's window: "
            + "; ".join(
                f"{len(ts)}x {k}, {min(ts):.1f}-{max(ts):.1f} s after its end" for k, ts in sorted(kinds.items())
            )
        )
    for f in report_faults:
        if f.postgres:
            for what in ("reads", "writes", "models"):
                seconds = f.recovery.get(what)
                if seconds is None or seconds > BOUND_S:
                    found.append(f"{f.name}: {what} back after {seconds} s (bound {BOUND_S:g})")
    for name, seconds in checks["exits"]:
        if seconds > BOUND_S:
            found.append(f"{name} took {seconds:.2f} s to exit after SIGTERM")
    return found


# --- the run ------------------------------------------------------------------------------------


@contextmanager
def system_of(plan: Plan) -> Iterator[System]:
    directory = Path(tempfile.mkdtemp(prefix="chaos-"))
    system = System(plan, directory)
    try:
        system.start_refresher()
        system.start_api(0)
        system.start_api(1)
        yield system
    finally:
        system.drop()


def run(plan: Plan, echo: Callable[[str], None] = print) -> Report:
    with system_of(plan) as system:
        watch = FoldWatch(system.url)
        work = Workload(system, plan)
        work.start()
        time.sleep(plan.gap_s)
        done: list[Fault] = []
        for name, strike in faults(system, plan):
            fault = Fault(name, time.monotonic())
            strike(fault)
            echo(f"{name}: {fault.end - fault.start:.1f} s")
            done.append(fault)
            time.sleep(plan.gap_s)
        work.finish()
        ended = time.time()
        watch.close()
        history = sorted(work.requests, key=lambda r: r.sent)
        for fault in done:
            fault.recovery = recovery(fault, history, watch)
            during = [r for r in history if fault.start <= r.sent <= fault.end]
            fault.unanswered = sum(r.status is None for r in during)
            fault.errors = sum(r.status is not None and r.status >= 500 for r in during)
        settle(system.url, ended)
        checks: dict[str, Any] = {"requests": len(history),
                                  "answered": sum(r.status is not None for r in history),
                                  "statuses": dict(sorted(Counter(str(r.status) for r in history).items())),
                                  "http_500": sum(r.status == 500 for r in history)}  # fmt: skip
        checks["unanswered_by"] = dict(work.failures)
        checks |= check_writes(system.url, work)
        checks |= check_flags(system, plan)
        checks |= check_drift(system)
        system.stop_all()
        checks |= check_logs(system)
        checks["exits"] = [(name, round(s, 2)) for name, s in system.exits]
        return Report(done, checks, problems_of(done, history, checks))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    defaults = Plan()
    parser.add_argument("--scale", choices=list(SCALES), default=defaults.scale)
    parser.add_argument("--members", type=int, default=defaults.members)
    parser.add_argument("--readers", type=int, default=defaults.readers)
    parser.add_argument("--rate", type=float, default=defaults.rate, help="requests a second, all clients together")
    parser.add_argument("--gap", type=float, default=defaults.gap_s, help="seconds between faults")
    parser.add_argument("--short", action="store_true", help="the tests' short form (tiny, seconds apart)")
    args = parser.parse_args(argv)
    plan = SHORT if args.short else Plan(scale=args.scale, members=args.members, readers=args.readers,
                                        rate=args.rate, gap_s=args.gap)  # fmt: skip
    print(f"chaos soak: {plan}")
    report = run(plan)
    for line in report.lines():
        print(line)
    return 0 if not report.problems else 1


if __name__ == "__main__":
    with suppress(KeyboardInterrupt):
        sys.exit(main())
