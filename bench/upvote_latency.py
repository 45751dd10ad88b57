"""An upvote's time at the server, durable commits against asynchronous ones, side by side.

One `denorm api` process and the refresher on a seeded database, once with API_UPVOTE_DURABLE=false
and once with true (the default). Each run sends --rate PUT upvotes a second for --seconds, from
5000 random users who keep their tokens, on the twenty projects of the feed's first page (where the
product's votes land), and reads the API's latency histogram before and after: the share of
upvotes within 2.5 and 5 ms at the server (the seed's target is about 5 ms), the client's p50
and p95, and the API process's CPU per upvote (user and system time over the run: on a 2-core
machine an upvote is bound by it as much as by its round trips, docs/performance.md).

    python -m bench.upvote_latency [--scale standard] [--database-url URL] [--rate 30] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import time
import urllib.request

import httpx2 as httpx
import psutil

from bench.scratch import add_dataset_arguments, seeded_database
from bench.system import paced, running_system
from denorm.auth import mint_token
from denorm.config import DEV_JWT_SECRET
from denorm.logs import configure_logging
from denorm.seed import SCALES
from loadtest import histogram
from loadtest.attribution import PHASES

SIGNED_IN = 5000  # users each run draws (with their tokens), as many as the load test's goal
ROUTE = 'method="PUT",route="/api/projects/{project_id}/upvote",status="200"'


def buckets(admin: str) -> tuple[dict[str, float], str]:
    """The upvote's histogram buckets (le -> cumulative count), and its count under "count"; and
    the whole exposition (for the phases)."""
    text = urllib.request.urlopen(f"{admin}/metrics", timeout=5).read().decode()
    found = {m[0]: float(m[1]) for m in re.findall(r'_bucket\{le="([^"]+)",' + re.escape(ROUTE) + r"\} (\S+)", text)}
    total = re.search(r"_count\{" + re.escape(ROUTE) + r"\} (\S+)", text)
    found["count"] = float(total.group(1)) if total else 0.0
    return found, text


def phases(before: str, after: str) -> str:
    """Each phase's median (services/api/upvotes.py Laps), in ms, and how many upvotes changed."""
    run = histogram.subtract(histogram.parse(after, PHASES, ("phase",)), histogram.parse(before, PHASES, ("phase",)))
    empty = histogram.Histogram(())
    out = [f"changed {run.get(('write_through',), empty).count:.0f} of {run.get(('change',), empty).count:.0f}"]
    for phase in ("rate_limit", "front", "connection", "change", "write_through"):
        p50 = run.get((phase,), empty).quantile(0.5)
        out.append(f"{phase} {p50 * 1000:.2f}" if p50 is not None else f"{phase} -")
    return ", ".join(out)


async def drive(base: str, rate: float, seconds: float, users: int, hot: list[int]) -> list[float]:
    # Fresh pairs each run: a PUT on a pair a previous run upvoted changes nothing and commits
    # nothing, and would measure the no-op (the phases line counts the upvotes that changed).
    rng = random.Random()
    latencies: list[float] = []
    # Signed-in users keep their token, as the load test's do (the API remembers a token it
    # verified; a new token per request would time the JWT check on every upvote).
    signed_in = rng.sample(range(1, users + 1), min(users, SIGNED_IN))
    tokens = {user: mint_token(user, DEV_JWT_SECRET) for user in signed_in}
    async with httpx.AsyncClient(base_url=base) as client:

        async def one() -> None:
            headers = {"Authorization": f"Bearer {tokens[rng.choice(signed_in)]}"}
            started = time.perf_counter()
            answer = await client.put(f"/api/projects/{rng.choice(hot)}/upvote", headers=headers)
            answer.raise_for_status()
            latencies.append((time.perf_counter() - started) * 1000)

        await paced(one, rate, seconds)
    return sorted(latencies)


def run(url: str, durable: bool, rate: float, seconds: float, users: int) -> str:
    with running_system(url, API_UPVOTE_DURABLE="true" if durable else "false") as system:
        base = system.base
        page = json.load(urllib.request.urlopen(f"{base}/api/projects?limit=20", timeout=5))
        hot = [int(item["id"]) for item in page["items"]]
        asyncio.run(drive(base, rate, 2, users, hot))  # warm the pool's connections and plans
        api = psutil.Process(system.api.pid)
        before, text_before = buckets(system.admin)
        cpu_before = api.cpu_times()
        client = asyncio.run(drive(base, rate, seconds, users, hot))
        cpu_after = api.cpu_times()
        after, text_after = buckets(system.admin)
    n = after["count"] - before["count"]
    within = {le: (after.get(le, 0) - before.get(le, 0)) / n for le in ("0.0025", "0.005")}
    p50, p95 = client[len(client) // 2], client[int(len(client) * 0.95)]
    cpu = cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system
    mode = "durable (the default)" if durable else "asynchronous commit"
    return (
        f"{mode:<32}{int(n):>8}{within['0.0025']:>12.1%}{within['0.005']:>10.1%}"
        f"{p50:>12.1f}{p95:>10.1f}{cpu / n * 1000:>14.2f}\n"
        f"    server time by phase, p50 ms: {phases(text_before, text_after)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_arguments(parser)
    parser.add_argument("--rate", type=float, default=30.0, help="upvotes a second")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    configure_logging("WARNING")
    with seeded_database("bench_upvote", args.scale, args.database_url) as url:
        users = SCALES[args.scale].users
        print(f"dataset={args.scale}; {args.rate:g} PUT upvotes/s for {args.seconds:g} s, random users, "
              "the feed's first twenty projects; one API process, refresher running")  # fmt: skip
        print(f"{'upvote commit':<32}{'upvotes':>8}{'<= 2.5 ms':>12}{'<= 5 ms':>10}{'client p50':>12}{'p95 ms':>10}"
              f"{'API CPU ms':>14}")  # fmt: skip
        for durable in (False, True):
            print(run(url, durable, args.rate, args.seconds, users))


if __name__ == "__main__":
    main()
