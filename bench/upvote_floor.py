"""denorm's upvote against the ordinary one, side by side on one database: is it at its floor?

The floor is the ordinary upvote (bench/ordinary_upvote.py): verify the token, one durable statement
that sets the upvote and reads the exact count, answer; no Redis, no rate limit. denorm's upvote
keeps both, and its read models. Both servers run on the same database at once, each one process;
paced PUT upvotes (an open loop, --rate a second) go to one then the other in alternated rounds of
--seconds, each on a fresh (user, project) pair so that every upvote commits. Twice: on an idle
system, and under the load test's mix (--users Locust users on denorm's API, as `make loadtest`
runs them) while the upvotes are paced beside it. Client-side p50 and p95 per server, and their
ratio (denorm / ordinary; at or below 1.0 is at the floor).

    python -m bench.upvote_floor [--scale small] [--rate 30] [--seconds 15] [--rounds 2] [--users 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2 as httpx

from bench.faults import PrivateRedis
from bench.mechanisms import locust_process
from bench.scratch import add_dataset_arguments, seeded_database, warm
from bench.system import bench_settings, paced
from denorm.auth import mint_token
from denorm.config import DEV_JWT_SECRET
from denorm.seed import SCALES
from loadtest.localproc import free_port, wait_ready

DENORM = str(Path(sys.executable).with_name("denorm"))


@contextmanager
def servers(url: str, redis_url: str) -> Iterator[dict[str, str]]:
    """denorm's API (with the refresher) and the ordinary server on `url`: their base URLs."""
    api_port, plain_port = free_port(), free_port()
    env = {**os.environ, **bench_settings(url, api_port), "REDIS_URL": redis_url, "API_ADMIN_PORT": "0",
           "API_RATE_WRITES_PER_TOKEN": "1000000/second"}  # fmt: skip
    plain_cmd = [sys.executable, "-m", "bench.ordinary_upvote", "--database-url", url, "--port", str(plain_port)]
    api = subprocess.Popen([DENORM, "api", "--port", str(api_port)], env=env, stdout=subprocess.DEVNULL)
    plain = subprocess.Popen(plain_cmd, env=env, stdout=subprocess.DEVNULL)
    procs = [subprocess.Popen([DENORM, "refresher"], env=env, stdout=subprocess.DEVNULL), api, plain]
    bases = {"denorm": f"http://127.0.0.1:{api_port}", "ordinary": f"http://127.0.0.1:{plain_port}"}
    try:
        wait_ready(bases["denorm"], api)
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{bases['ordinary']}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert plain.poll() is None and time.monotonic() < deadline, "the ordinary server did not start"
            time.sleep(0.2)
        yield bases
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)


async def drive(base: str, rate: float, seconds: float, pairs: Iterator[tuple[int, int]]) -> list[float]:
    """Paced PUT upvotes on fresh pairs; the client's latencies, ms."""
    latencies: list[float] = []
    tokens: dict[int, str] = {}
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:

        async def one() -> None:
            user, project = next(pairs)
            token = tokens.setdefault(user, mint_token(user, DEV_JWT_SECRET, ttl_seconds=3600))
            started = time.perf_counter()
            answer = await client.put(f"/api/projects/{project}/upvote", headers={"Authorization": f"Bearer {token}"})
            answer.raise_for_status()
            latencies.append((time.perf_counter() - started) * 1000)

        await paced(one, rate, seconds)
    return latencies


def fresh_pairs(url: str, users: int, projects: int) -> Iterator[tuple[int, int]]:
    """(user, project) pairs nobody has upvoted yet, in a random order: each upvote commits a change."""
    import psycopg

    with psycopg.connect(url) as conn:
        taken = {(int(u), int(p)) for u, p in conn.execute("SELECT user_id, project_id FROM project_upvotes")}
    rng = random.Random(40)
    while True:
        pair = (rng.randint(1, users), rng.randint(1, projects))
        if pair not in taken:
            taken.add(pair)
            yield pair


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(
    bases: dict[str, str], args: argparse.Namespace, pairs: Iterator[tuple[int, int]]
) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {"denorm": [], "ordinary": []}
    asyncio.run(drive(bases["denorm"], args.rate, 2, pairs))  # warm both: connections, plans
    asyncio.run(drive(bases["ordinary"], args.rate, 2, pairs))
    for n in range(args.rounds):
        order = ["denorm", "ordinary"] if n % 2 == 0 else ["ordinary", "denorm"]
        for name in order:
            found[name] += asyncio.run(drive(bases[name], args.rate, args.seconds, pairs))
    return found


def report(label: str, found: dict[str, list[float]]) -> list[str]:
    d50, d95 = quantile(found["denorm"], 0.5), quantile(found["denorm"], 0.95)
    o50, o95 = quantile(found["ordinary"], 0.5), quantile(found["ordinary"], 0.95)
    return [
        f"{label}",
        f"  {'server':<10}{'upvotes':>8}{'p50 ms':>9}{'p95 ms':>9}",
        f"  {'ordinary':<10}{len(found['ordinary']):>8}{o50:>9.2f}{o95:>9.2f}",
        f"  {'denorm':<10}{len(found['denorm']):>8}{d50:>9.2f}{d95:>9.2f}",
        f"  {'ratio':<10}{'':>8}{d50 / o50:>8.2f}x{d95 / o95:>8.2f}x   (denorm / ordinary; <= 1.00 is at the floor)",
        f"  mean ms: ordinary {statistics.fmean(found['ordinary']):.2f}, "
        f"denorm {statistics.fmean(found['denorm']):.2f}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_arguments(parser)
    parser.set_defaults(scale="small")
    parser.add_argument("--rate", type=float, default=30.0, help="upvotes a second")
    parser.add_argument("--seconds", type=float, default=15.0, help="each round, per server")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--users", type=int, default=300, help="the load test's users beside the upvotes (0: idle only)"
    )
    args = parser.parse_args(argv)
    scale = SCALES[args.scale]
    print(f"dataset={args.scale}; {args.rate:g} PUT upvotes/s on fresh pairs, {args.rounds} alternated rounds of "
          f"{args.seconds:g} s per server; one process each", flush=True)  # fmt: skip
    with (tempfile.TemporaryDirectory(prefix="floor-") as tmp,
          seeded_database("bench_floor", args.scale, args.database_url) as url):  # fmt: skip
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            warm(conn)
        redis = PrivateRedis(Path(tmp))
        redis.start()
        pairs = fresh_pairs(url, scale.users, scale.projects)
        try:
            with servers(url, redis.url) as bases:
                lines = report("idle", measure(bases, args, pairs))
                if args.users:
                    with locust_process(bases["denorm"], args.users, Path(tmp) / "mix", f"1-{scale.users}"):
                        time.sleep(args.users / 50 + 5)  # until every user runs
                        lines += report(f"beside the load test's mix ({args.users} users on denorm's API)",
                                        measure(bases, args, pairs))  # fmt: skip
        finally:
            redis.stop()
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
