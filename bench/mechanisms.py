"""Each of the API's own mechanisms against its plain alternative, side by side in one run: does it pay?

The load test's own request mix (the Locust suite, one local runner: anonymous readers and
signed-in members with their think times) at a fixed offered load the machine carries, once with
every mechanism on and once with each off (`API_WITHOUT`, denorm/config.py MECHANISMS; the CPU
slice with `API_CPU_SLICE_US=0`), rounds alternated. Each row: the system's CPU per request (the
API, Postgres's backends for this database and Redis, from /proc), the client's p50 and p95, and
the signed-in feed's throughput at saturation (wrk, --connections, signed-in tokens), each as a
ratio to every mechanism on. The `plain` row runs every mechanism off, the CPU slice at the
kernel's and the search answers not cached: FastAPI's routing and validation for every request,
psycopg_pool's queue, one pooled connection per read, one Redis command per call, PyJWT on every
request: the same statements, served the plain way.

    python -m bench.mechanisms [--scale small] [--users 600] [--seconds 45] [--rounds 2] [--only gate,batcher]

A mechanism that saves under 5% of the CPU per request and under 10% of the p95 pays too little
to keep (unless a promise needs it): the verdict column says which.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg

from bench.api_throughput import Route, wrk
from bench.faults import PrivateRedis
from bench.scratch import add_dataset_arguments, seeded_database, warm
from bench.system import bench_settings
from denorm.auth import mint_token
from denorm.config import DEV_JWT_SECRET, MECHANISMS
from denorm.seed import SCALES
from loadtest.cpu import Component, CpuSampler
from loadtest.localproc import free_port, wait_ready

REPO = Path(__file__).resolve().parent.parent
LOCUSTFILE = REPO / "loadtest" / "locustfile.py"
DENORM = str(Path(sys.executable).with_name("denorm"))
ALL_ON = "all on"
PLAIN = "plain"
CPU_SLICE = "cpu-slice"
# A mechanism pays when it saves at least this much of the system's CPU per request or of the p95.
CPU_GAIN, P95_GAIN = 0.05, 0.10
BACKENDS = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"


def variants(only: list[str] | None) -> list[str]:
    names = [*MECHANISMS, CPU_SLICE, PLAIN]
    return [ALL_ON, *(n for n in names if only is None or n in only)]


def settings_of(variant: str) -> dict[str, str]:
    """The API's environment for a variant."""
    if variant == ALL_ON:
        return {}
    if variant == CPU_SLICE:
        return {"API_CPU_SLICE_US": "0"}
    if variant == PLAIN:
        return {"API_WITHOUT": ",".join(MECHANISMS), "API_CPU_SLICE_US": "0", "API_SEARCH_CACHE_SECONDS": "0"}
    return {"API_WITHOUT": variant}


@dataclass
class Round:
    variant: str
    requests: int
    failures: int
    cpu_us: float  # the system's CPU per request: API + Postgres + Redis
    api_us: float
    postgres_us: float
    redis_us: float
    p50_ms: float
    p95_ms: float
    feed_rps: float  # the signed-in feed at saturation


@contextmanager
def system(url: str, redis_url: str, variant: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The API (as the variant says) and the refresher on `url`; the API's base URL and process."""
    port = free_port()
    env = {**os.environ, **bench_settings(url, port), "REDIS_URL": redis_url, "API_ADMIN_PORT": "0",
           "API_RATE_WRITES_PER_TOKEN": "1000000/second", **settings_of(variant)}  # fmt: skip
    refresher = subprocess.Popen([DENORM, "refresher"], env=env, stdout=subprocess.DEVNULL)
    api = subprocess.Popen([DENORM, "api", "--port", str(port)], env=env, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, api)
        time.sleep(2)
        yield base, api
    finally:
        for proc in (api, refresher):
            proc.terminate()
        for proc in (api, refresher):
            proc.wait(timeout=60)


SPAWN_RATE = 50  # users started a second


def spawn_s(users: int) -> int:
    """Seconds until every user runs (Locust's start-up included), when its statistics restart."""
    return users // SPAWN_RATE + 1


def locust_env(user_ids: str, directory: Path) -> dict[str, str]:
    """The suite's settings for a bench: these users, no server-side gates, targets no run misses."""
    targets = directory / "lenient.toml"
    targets.write_text("default_ms = 60000\n")
    return {**os.environ, "LOADTEST_USER_IDS": user_ids, "LOADTEST_SERVER_GATES": "off",
            "LOADTEST_TARGETS": str(targets), "JWT_SECRET": DEV_JWT_SECRET}  # fmt: skip


@contextmanager
def locust_process(base: str, users: int, out: Path, user_ids: str) -> Iterator[subprocess.Popen[bytes]]:
    """The suite running against `base` at `users` for as long as the `with` lasts (a load beside
    what a bench measures)."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary", f"--users={users}",
           f"--spawn-rate={SPAWN_RATE}", "--run-time=24h", f"--host={base}", "--loglevel=WARNING"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=locust_env(user_ids, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def locust(base: str, users: int, seconds: int, out: Path, user_ids: str) -> dict[str, float]:
    """The suite for `seconds` at `users`; the aggregate row of its statistics."""
    env = locust_env(user_ids, out.parent)
    # The statistics restart once every user runs (--reset-stats): the measured window is the steady
    # load, not the burst of users starting up (which stalls every route for a moment).
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
           f"--users={users}", f"--spawn-rate={SPAWN_RATE}", f"--run-time={spawn_s(users) + seconds}s",
           "--reset-stats", f"--host={base}", f"--csv={out}", "--loglevel=WARNING", "--stop-timeout=5"]  # fmt: skip
    subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=spawn_s(users) + seconds + 120, check=False)
    with (out.parent / f"{out.name}_stats.csv").open(newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    return {"requests": float(row["Request Count"]), "failures": float(row["Failure Count"]),
            "p50": float(row["50%"]), "p95": float(row["95%"])}  # fmt: skip


def mean_cores(sampler: CpuSampler, since: float) -> dict[str, float]:
    """Each component's mean cores over the samples from `since`, unrounded (CpuSampler.means
    rounds to a hundredth of a core: at this load, a step of about a hundred µs per request)."""
    found: dict[str, list[float]] = {}
    for t, name, cores in sampler.samples:
        if t >= since:
            found.setdefault(name, []).append(cores)
    return {name: statistics.fmean(values) for name, values in found.items()}


def one_round(url: str, redis: PrivateRedis, variant: str, args: argparse.Namespace, out: Path) -> Round:
    with system(url, redis.url, variant) as (base, api), psycopg.connect(url, autocommit=True) as conn:
        assert redis.proc is not None
        redis_pid = redis.proc.pid
        sampler = CpuSampler({
            "api": Component(lambda: [api.pid]),
            "postgres": Component(lambda: [int(r[0]) for r in conn.execute(BACKENDS)], children=False),
            "redis": Component(lambda: [redis_pid], children=False),
        }, interval=0.5).start()  # fmt: skip
        steady = time.monotonic() + spawn_s(args.users)  # when the statistics restart
        stats = locust(base, args.users, args.seconds, out / variant.replace(" ", "-"), f"1-{SCALES[args.scale].users}")
        seconds = time.monotonic() - steady
        sampler.stop()
        cores = mean_cores(sampler, steady)
        tokens = [mint_token(u, DEV_JWT_SECRET, ttl_seconds=3600) for u in range(1, 1001)]
        feed_rps, _p99 = wrk(base, Route("feed, signed in", ["/api/projects?limit=20"], signed=True), tokens,
                             args.wrk_seconds, args.connections)  # fmt: skip
    per = 1e6 * seconds / max(stats["requests"], 1)  # µs of wall time per request: cores x this = µs per request
    parts = {k: cores.get(k, 0.0) * per for k in ("api", "postgres", "redis")}
    return Round(variant, int(stats["requests"]), int(stats["failures"]), sum(parts.values()), parts["api"],
                 parts["postgres"], parts["redis"], stats["p50"], stats["p95"], feed_rps)  # fmt: skip


def verdict(name: str, cpu_ratio: float, p95_ratio: float) -> str:
    """With the mechanism off, the system costs cpu_ratio and answers in p95_ratio of all on."""
    if name in (ALL_ON, PLAIN):
        return ""
    pays = cpu_ratio - 1 >= CPU_GAIN or p95_ratio - 1 >= P95_GAIN
    return "pays" if pays else "does not pay"


def table(rounds: list[Round]) -> list[str]:
    by: dict[str, list[Round]] = {}
    for r in rounds:
        by.setdefault(r.variant, []).append(r)

    def med(name: str, attr: str) -> float:
        return float(statistics.median(float(getattr(r, attr)) for r in by[name]))

    base_cpu, base_p95, base_rps = med(ALL_ON, "cpu_us"), med(ALL_ON, "p95_ms"), med(ALL_ON, "feed_rps")
    lines = [f"{'without':<15} {'req':>6} {'fail':>4} {'CPU µs/req':>10} {'(api':>6} {'pg':>5} {'redis)':>6} "
             f"{'x':>5} {'p50 ms':>7} {'p95 ms':>7} {'x':>5} {'feed/s':>7} {'x':>5}  verdict"]  # fmt: skip
    for name, rs in by.items():
        cpu, p95, rps = med(name, "cpu_us"), med(name, "p95_ms"), med(name, "feed_rps")
        lines.append(
            f"{name:<15} {int(med(name, 'requests')):>6} {sum(r.failures for r in rs):>4} {cpu:>10.0f} "
            f"{med(name, 'api_us'):>6.0f} {med(name, 'postgres_us'):>5.0f} {med(name, 'redis_us'):>6.0f} "
            f"{cpu / base_cpu:>5.2f} {med(name, 'p50_ms'):>7.1f} {p95:>7.1f} {p95 / base_p95:>5.2f} "
            f"{rps:>7.0f} {rps / base_rps:>5.2f}  {verdict(name, cpu / base_cpu, p95 / base_p95)}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_arguments(parser)
    parser.set_defaults(scale="small")
    parser.add_argument("--users", type=int, default=600, help="Locust users: the offered load (about 0.15 req/s each)")
    parser.add_argument("--seconds", type=int, default=45, help="each round's Locust run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--wrk-seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--only", type=lambda s: s.split(","), help="these variants (and all on) only")
    args = parser.parse_args(argv)
    names = variants(args.only)
    print(f"dataset={args.scale}; {args.users} Locust users for {args.seconds} s a round; the signed-in feed by "
          f"wrk -c{args.connections} for {args.wrk_seconds} s; {args.rounds} rounds, alternated; "
          f"{psutil.cpu_count()} cores", flush=True)  # fmt: skip
    rounds: list[Round] = []
    with (tempfile.TemporaryDirectory(prefix="mechanisms-") as tmp,
          seeded_database("mechanisms", args.scale, args.database_url) as url):  # fmt: skip
        with psycopg.connect(url, autocommit=True) as conn:
            warm(conn)
        redis = PrivateRedis(Path(tmp))
        redis.start()
        try:
            one_round(url, redis, ALL_ON, args, Path(tmp))  # warm-up, not counted: caches, plans, the OS
            for n in range(args.rounds):
                for name in names if n % 2 == 0 else list(reversed(names)):
                    r = one_round(url, redis, name, args, Path(tmp))
                    rounds.append(r)
                    print(f"round {n + 1} {name:<15} {r.requests} requests, {r.cpu_us:.0f} µs/req (api "
                          f"{r.api_us:.0f}, pg {r.postgres_us:.0f}, redis {r.redis_us:.0f}), p50 {r.p50_ms:.1f} ms, "
                          f"p95 {r.p95_ms:.0f} ms, feed {r.feed_rps:.0f}/s", flush=True)  # fmt: skip
        finally:
            redis.stop()
    print("\n".join(table(rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
