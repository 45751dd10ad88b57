"""Each read route's throughput as a fraction of a trivial /healthz, on the same server and concurrency.

One `denorm api` process (one uvicorn worker, uvloop, httptools) on a seeded database with the
refresher running; wrk (Debian package `wrk`) drives each route for --seconds with --connections
and two threads. Requests rotate over many values, as real traffic does: signed-in routes over a
thousand users' tokens, the chain page over a hundred chains, search over twenty queries with
typos (which the answer cache keeps) and, in a second row, over twenty thousand distinct queries
(each a miss: it shows what a search costs when the cache cannot help).

Besides requests per second, the table shows the CPU each request cost the API process and
Postgres's backends (from /proc): everything runs on the same machine, so Postgres's CPU is CPU
the API could not use.

    python -m bench.api_throughput [--scale standard] [--database-url URL] [--seconds 8] [--connections 32]
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import psycopg

from bench.scratch import add_dataset_arguments, seeded_database
from bench.system import running_system
from denorm.auth import mint_token
from denorm.config import DEV_JWT_SECRET
from denorm.logs import configure_logging
from denorm.seed import SCALES

TYPO_QUERIES = ["reddis cache", "postgress", "kubernetis dashbord", "kafka", "lovelase", "terraform guild",
                "elasticsearch scheduler", "rust visualizer", "dockr", "graphql gateway", "sqlite tracker",
                "nginx", "prometheus queue", "fastapi proxy", "golang cli", "react notebook", "webassembly",
                "django monitor", "typescript editor", "redis"]  # fmt: skip
WORDS = ["redis", "postgres", "kafka", "rust", "docker", "react", "golang", "nginx", "sqlite", "django", "cache",
         "queue", "proxy", "editor", "tracker", "monitor", "gateway", "feed", "bot", "toolkit"]  # fmt: skip


@dataclass(frozen=True)
class Route:
    label: str
    paths: list[str]  # rotated through, one per request
    signed: bool = False  # each request carries the next user's token


def lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def wrk_script(route: Route, tokens: list[str]) -> str:
    """A wrk script that sends the route's paths round-robin, each with the next token when signed."""
    paths = ",".join(lua_string(p) for p in route.paths)
    heads = ",".join(lua_string(f"Bearer {t}") for t in tokens) if route.signed else ""
    return f"""
local paths = {{{paths}}}
local tokens = {{{heads}}}
local i = 0
request = function()
    i = i + 1
    local headers = {{}}
    if #tokens > 0 then headers["Authorization"] = tokens[(i % #tokens) + 1] end
    return wrk.format("GET", paths[(i % #paths) + 1], headers)
end
"""


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
    return total


def backends(url: str) -> list[int]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()").fetchall()
    return [int(r[0]) for r in rows]


def wrk(base: str, route: Route, tokens: list[str], seconds: int, connections: int) -> tuple[float, float]:
    """(requests per second, 99th percentile latency in ms); any non-2xx answer is an error."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(wrk_script(route, tokens))
    try:
        cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", f.name, base]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)
    if "Non-2xx" in out:
        raise RuntimeError(f"{route.label} answered errors:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([0-9.]+)(us|ms|s)", out)
    assert p99 is not None
    return rps, float(p99.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]


def routes(slugs: list[str]) -> list[Route]:
    distinct = [f"/api/search?q={a}%20{b}%20{n}" for n, (a, b) in zip(range(20_000), itertools.cycle(
        itertools.product(WORDS, WORDS)), strict=False)]  # fmt: skip
    return [
        Route("healthz", ["/healthz"]),
        Route("feed trending", ["/api/projects?sort=trending&limit=20"]),
        Route("feed top-rated", ["/api/projects?sort=top-rated&limit=20"]),
        Route("feed newest", ["/api/projects?sort=newest&limit=20"]),
        Route("feed, signed in", ["/api/projects?limit=20"], signed=True),
        Route("leaderboard projects", ["/api/leaderboard/projects?limit=50"]),
        Route("leaderboard users", ["/api/leaderboard/users?limit=50"]),
        Route("chains", ["/api/chains?limit=20"]),
        Route("chain page", [f"/api/chains/{s}" for s in slugs]),
        Route("search", [f"/api/search?q={q.replace(' ', '%20')}&limit=20" for q in TYPO_QUERIES]),
        Route("search, all misses", distinct),
        Route("dashboard", ["/api/users/dashboard"], signed=True),
        Route("conversations", ["/api/messages/conversations"], signed=True),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_arguments(parser)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    configure_logging("WARNING")
    tick = os.sysconf("SC_CLK_TCK")
    with (
        seeded_database("bench_http", args.scale, args.database_url) as url,
        running_system(url) as system,
    ):
        base, api = system.base, system.api
        with psycopg.connect(url) as conn:
            slugs = [str(r[0]) for r in conn.execute("SELECT slug FROM chains ORDER BY id LIMIT 100")]
        users = SCALES[args.scale].users
        tokens = [mint_token(1 + (i * 7919) % users, DEV_JWT_SECRET, ttl_seconds=3600) for i in range(1000)]
        print(f"dataset={args.scale}; one API process; wrk -t2 -c{args.connections} -d{args.seconds}s")
        print(f"{'route':<22}{'req/s':>10}{'p99 ms':>9}{'of healthz':>12}{'API µs/req':>12}{'PG µs/req':>11}")
        healthz = 0.0
        for route in routes(slugs):
            pg = backends(url)
            before = cpu_ticks([api.pid]), cpu_ticks(pg)
            rps, p99 = wrk(base, route, tokens, args.seconds, args.connections)
            after = cpu_ticks([api.pid]), cpu_ticks(pg)
            n = rps * args.seconds
            api_us, pg_us = ((a - b) / tick / n * 1e6 for a, b in zip(after, before, strict=True))
            healthz = healthz or rps
            print(f"{route.label:<22}{rps:>10,.0f}{p99:>9.1f}{rps / healthz:>11.0%}{api_us:>12.0f}{pg_us:>11.0f}")


if __name__ == "__main__":
    main()
