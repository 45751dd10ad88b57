"""Each read route's throughput as a fraction of a trivial /healthz, on the same server and concurrency.

One `denorm api` process (one uvicorn worker, uvloop, httptools) on a scratch database with the
refresher running; wrk (Debian package `wrk`) drives each route for --seconds with --connections
and two threads. Authenticated routes get a bearer token in a header.

    python -m bench.api_throughput [--scale standard] [--seconds 8] [--connections 32]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

from bench.scratch import seeded_database
from denorm.auth import mint_token
from denorm.config import DEV_JWT_SECRET
from denorm.logs import configure_logging
from denorm.seed import SCALES

ROUTES = [
    ("healthz", "/healthz", False),
    ("feed trending", "/api/projects?sort=trending&limit=20", False),
    ("feed top-rated", "/api/projects?sort=top-rated&limit=20", False),
    ("feed newest", "/api/projects?sort=newest&limit=20", False),
    ("feed, signed in", "/api/projects?limit=20", True),
    ("leaderboard projects", "/api/leaderboard/projects?limit=50", False),
    ("leaderboard users", "/api/leaderboard/users?limit=50", False),
    ("chains", "/api/chains?limit=20", False),
    ("chain page", "/api/chains/{slug}", False),
    ("search", "/api/search?q=reddis%20cache&limit=20", False),
    ("dashboard", "/api/users/dashboard", True),
    ("conversations", "/api/messages/conversations", True),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wrk(url: str, seconds: int, connections: int, token: str | None) -> tuple[float, float]:
    """(requests per second, 99th percentile latency in ms); non-2xx answers are an error."""
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if token:
        cmd[1:1] = ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"{url} answered errors:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([0-9.]+)(us|ms|s)", out)
    assert p99 is not None
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    return rps, float(p99.group(1)) * scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=list(SCALES), default="standard")
    parser.add_argument(
        "--database-url", help="an already seeded database to use as it is (default: a scratch one, seeded)"
    )
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    configure_logging("WARNING")
    with seeded_database("bench_http", args.scale, args.database_url) as url:
        port = free_port()
        env = {**os.environ, "DATABASE_URL": url, "JWT_SECRET": DEV_JWT_SECRET, "API_ACCESS_LOG": "false",
               "REFRESHER_METRICS_PORT": "0", "LOG_LEVEL": "WARNING", "REDIS_KEY_PREFIX": f"bench-{port}:"}  # fmt: skip
        denorm = os.path.join(os.path.dirname(sys.executable), "denorm")
        refresher = subprocess.Popen([denorm, "refresher"], env=env, stdout=subprocess.DEVNULL)
        api = subprocess.Popen([denorm, "api", "--port", str(port)], env=env, stdout=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(100):
                try:
                    urllib.request.urlopen(f"{base}/healthz", timeout=1)
                    break
                except OSError:
                    time.sleep(0.2)
            time.sleep(3)  # the refresher's first pass
            chains = urllib.request.urlopen(f"{base}/api/chains?limit=1", timeout=5).read().decode()
            slug = re.search(r'"slug":"([^"]+)"', chains).group(1)  # type: ignore[union-attr]
            token = mint_token(7, DEV_JWT_SECRET, ttl_seconds=3600)
            print(f"dataset={args.scale}; one API process; wrk -t2 -c{args.connections} -d{args.seconds}s")
            print(f"{'route':<22}{'req/s':>10}{'p99 ms':>9}{'of healthz':>12}")
            healthz = 0.0
            for label, path, signed in ROUTES:
                rps, p99 = wrk(base + path.format(slug=slug), args.seconds, args.connections, token if signed else None)
                healthz = healthz or rps
                print(f"{label:<22}{rps:>10,.0f}{p99:>9.1f}{rps / healthz:>11.0%}")
        finally:
            api.terminate()
            refresher.terminate()
            api.wait(timeout=30)
            refresher.wait(timeout=30)


if __name__ == "__main__":
    main()
