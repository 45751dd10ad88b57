"""How many turns of the API's event loop a request waits through, from its start to its answer.

Under load a turn costs every request in flight the time the loop takes to run all that was
ready (the event-loop lag the load test reports), so a request's server time there is about its
turns times that lag: the turns are what the code controls. Each await that suspends costs at
least one; asyncio.wait_for on Python 3.11 costs two more, since it runs its coroutine as a task
of its own (docs/performance.md).

The API runs in this process, on asyncio's own selector loop (uvloop's turns cannot be counted),
and one client sends its requests one at a time, so no request shares a turn with another:

    python -m bench.loop_turns [--scale small] [--database-url URL] [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import random
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from bench.scratch import add_dataset_arguments, seeded_database
from bench.system import bench_settings
from denorm.auth import mint_token
from denorm.config import DEV_JWT_SECRET, get_settings
from denorm.logs import configure_logging
from denorm.seed import SCALES
from loadtest.localproc import free_port


class CountingLoop(asyncio.SelectorEventLoop):
    """asyncio's loop, counting its turns (each pass that runs what is ready)."""

    turns = 0

    def _run_once(self) -> None:
        self.turns += 1
        super()._run_once()  # type: ignore[misc]


def request_turns(loop: CountingLoop, record: Callable[[int], None]) -> None:
    """Every request task (uvicorn's run_asgi) reports the turns from its start to its end."""

    def factory(loop_: asyncio.AbstractEventLoop, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.Task(coro, loop=loop_)
        if getattr(coro, "__qualname__", "").endswith("run_asgi"):
            began = loop.turns
            task.add_done_callback(lambda _: record(loop.turns - began))
        return task

    loop.set_task_factory(factory)


def drive(port: int, routes: dict[str, Callable[[int], tuple[str, str]]], requests: int, users: int,
          turns: list[int], results: dict[str, list[int]]) -> None:  # fmt: skip
    """One client, one request at a time: each route `requests` times after a warm-up."""
    client = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    rng = random.Random()
    tokens = [mint_token(u, DEV_JWT_SECRET) for u in rng.sample(range(1, users + 1), min(users, 1000))]
    for name, make in routes.items():
        for i in range(requests + requests // 4):
            method, path = make(i)
            done = len(turns)
            client.request(method, path, headers={"Authorization": f"Bearer {rng.choice(tokens)}"})
            answer = client.getresponse()
            answer.read()
            if answer.status != 200:
                raise RuntimeError(f"{method} {path}: {answer.status}")
            while len(turns) == done:  # the request's task ends just after its answer leaves
                time.sleep(0.001)
            if i >= requests // 4:  # past the warm-up (connections, prepared statements, caches)
                results[name].append(turns[-1])
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_arguments(parser)
    parser.add_argument("--requests", type=int, default=200, help="measured requests per route")
    args = parser.parse_args()
    configure_logging("WARNING")
    import uvicorn  # the API's own server, as `denorm api` runs it

    with seeded_database("bench_turns", args.scale, args.database_url) as url:
        port, admin = free_port(), free_port()
        os.environ.update(bench_settings(url, port), API_ADMIN_PORT=str(admin))
        get_settings.cache_clear()
        server = uvicorn.Server(uvicorn.Config("services.api.app:create_app", factory=True, port=port,
                                               log_config=None, access_log=False))  # fmt: skip
        loop = CountingLoop()
        turns: list[int] = []
        request_turns(loop, turns.append)
        results: dict[str, list[int]] = defaultdict(list)
        failure: list[BaseException] = []

        def client() -> None:
            try:
                while not server.started:
                    time.sleep(0.05)
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("GET", "/api/projects?limit=20")
                hot = [int(item["id"]) for item in json.loads(conn.getresponse().read())["items"]]
                conn.close()
                routes: dict[str, Callable[[int], tuple[str, str]]] = {
                    "PUT /api/projects/{id}/upvote": lambda i: ("PUT", f"/api/projects/{hot[i % len(hot)]}/upvote"),
                    "GET /api/projects?sort=trending (signed in)": lambda i: ("GET", "/api/projects?sort=trending"),
                }
                drive(port, routes, args.requests, SCALES[args.scale].users, turns, results)
            except BaseException as exc:  # reported after the server stops
                failure.append(exc)
            finally:
                server.should_exit = True

        threading.Thread(target=client, daemon=True).start()
        loop.run_until_complete(server.serve())
        loop.close()
        if failure:
            raise failure[0]
    print(f"dataset={args.scale}; one client, one request at a time, {args.requests} requests a route")
    print(f"{'route':<48}{'turns p50':>10}{'p95':>6}{'max':>6}")
    for name, seen in results.items():
        seen.sort()
        p95 = seen[int(len(seen) * 0.95)]
        print(f"{name:<48}{statistics.median_low(seen):>10}{p95:>6}{seen[-1]:>6}")


if __name__ == "__main__":
    main()
