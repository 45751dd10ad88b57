"""What the search route costs Postgres under the load test's searches, through the answer cache.

One `denorm api` process and the refresher on a seeded database (the API's own answer cache, its
`API_SEARCH_CACHE_SECONDS`); --rate searches a second for --seconds, each the load test's (a query
of loadtest/catalog.py, a type drawn with the suite's weights). Printed: the answer cache's hits
and misses, and the CPU that the API's pooled-read backends (application_name denorm-api-read:
search's connections) used in Postgres over the run, in cores and per miss. The load test at 5000
users asks about 55 searches a second. Run it on the machine of the database (the CPU is read
from /proc).

    python -m bench.search_load --database-url URL [--rate 55] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
import urllib.request

import httpx2 as httpx
import psycopg

from bench.scratch import add_dataset_arguments, seeded_database
from bench.system import paced, running_system
from denorm.logs import configure_logging
from loadtest.attribution import backend_cpu, cores_by_client
from loadtest.catalog import search_query

CLIENT = "denorm-api-read"


def cache_counts(admin: str) -> tuple[float, float]:
    """The answer cache's (hits, misses) so far."""
    text = urllib.request.urlopen(f"{admin}/metrics", timeout=5).read().decode()
    counts = []
    for name in ("hits", "misses"):
        found = re.search(rf"^denorm_api_search_cache_{name}_total (\S+)", text, re.M)
        counts.append(float(found.group(1)) if found else 0.0)
    return counts[0], counts[1]


async def drive(base: str, rate: float, seconds: float) -> int:
    """Searches at `rate` a second, as the suite's users ask them; how many were answered."""
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:

        async def one() -> None:
            (await client.get(f"/api/search?{search_query()}")).raise_for_status()

        return await paced(one, rate, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_arguments(parser)
    parser.add_argument("--rate", type=float, default=55.0, help="searches a second")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    configure_logging("WARNING")
    with seeded_database("bench_search_load", args.scale, args.database_url) as url:
        with running_system(url) as system, psycopg.connect(url, autocommit=True) as conn:
            asyncio.run(drive(system.base, args.rate, 3))  # the pool's connections and their plans
            hits, misses = cache_counts(system.admin)
            before, started = backend_cpu(conn), time.monotonic()
            asked = asyncio.run(drive(system.base, args.rate, args.seconds))
            after, elapsed = backend_cpu(conn), time.monotonic() - started
            hits, misses = (now - was for now, was in zip(cache_counts(system.admin), (hits, misses), strict=True))
        cores = cores_by_client(before, after, elapsed).get(CLIENT, 0.0)
        per_miss = cores * elapsed * 1000 / misses if misses else float("nan")
        print(f"{asked} searches in {elapsed:.1f} s ({args.rate:g}/s asked): answer cache {hits:.0f} hits, "
              f"{misses:.0f} misses; Postgres CPU of the searches' connections {cores:.3f} cores, "
              f"{per_miss:.2f} ms a miss")  # fmt: skip


if __name__ == "__main__":
    main()
