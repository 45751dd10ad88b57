"""What a search costs Postgres when no answer cache helps, at 1x, 2x and 4x the `standard` dataset.

On a database seeded at each size (every read model folded and refreshed, then VACUUM ANALYZE),
each query below runs as the API runs it: the route's statement (`search`, db/readmodels/),
prepared, with the API's session settings (services/api/pools.py), type "all", twenty results. The server
time is planning plus execution inside Postgres (EXPLAIN ANALYZE, TIMING OFF), the median of
--runs. Beside it, the ranked ILIKE (bench/api_queries.py): what an application without a search
index runs to answer the same question (no typo correction: a misspelt word finds nothing).

    python -m bench.search_cost [--factors 1 2 4] [--runs 51]
"""

from __future__ import annotations

import argparse
import random
from typing import Any

import psycopg

from bench.api_queries import NAIVE_SEARCH, medians
from bench.scratch import add_sizes_arguments, sized_database
from denorm.logs import configure_logging
from denorm.maintenance import drain
from denorm.pg import session_options
from denorm.sql import queries
from loadtest.catalog import SEARCH_TYPES, SEARCHES
from services.api.params import SEARCH_START
from services.api.pools import OLTP_SETTINGS
from services.api.routes.reads import doc_type_of

# Common words of every size (a tech, a thing, a first name), misspelt ones, two words, a rarer one.
QUERIES = ["redis", "dashboard", "lovelace", "postgress", "reddis cache", "kubernetis dashbord", "elasticsearh",
           "guild"]  # fmt: skip
RANKED = NAIVE_SEARCH["search, ILIKE ranked"]


def params(q: str, kind: str = "all") -> dict[str, Any]:
    """The route's parameters for a first page of type `kind` (those a statement does not name are
    ignored)."""
    return {"q": q, "doc_type": doc_type_of(kind), "limit": 20, **SEARCH_START}


def suite_mix(api_conn: psycopg.Connection[Any], search: str, runs: int) -> dict[tuple[str, str], float]:
    """The median server ms of each of the load test's searches, by (query, type)."""
    out = {}
    for q in SEARCHES:
        for kind in SEARCH_TYPES:

            def draw(_rng: random.Random, q: str = q, kind: str = kind) -> dict[str, Any]:
                return params(q, kind)

            out[(q, kind)] = medians(api_conn, search, draw, runs, prepared=True, seed=q)[0]
    return out


def weighted_mean(costs: dict[tuple[str, str], float]) -> float:
    weights = {key: SEARCH_TYPES[key[1]] for key in costs}
    return sum(costs[k] * w for k, w in weights.items()) / sum(weights.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sizes_arguments(parser)
    parser.add_argument("--runs", type=int, default=51)
    args = parser.parse_args()
    configure_logging("WARNING")
    search = queries()["search"]
    results: dict[float, dict[str, tuple[float, float]]] = {}
    mixes: dict[float, dict[tuple[str, str], float]] = {}
    for i, factor in enumerate(args.factors):
        with (
            sized_database(args, i, "bench_search") as url,
            psycopg.connect(url, autocommit=True) as conn,
            psycopg.connect(url, autocommit=True, options=session_options(OLTP_SETTINGS)) as api_conn,
        ):
            drain(conn, worker="bench")
            conn.execute("VACUUM ANALYZE")
            results[factor] = {}
            for q in QUERIES:

                def draw(_rng: random.Random, q: str = q) -> dict[str, Any]:
                    return params(q)

                model = medians(api_conn, search, draw, args.runs, prepared=True, seed=q)[0]
                naive = medians(conn, RANKED, draw, max(3, args.runs // 10), prepared=False, seed=q)[0]
                results[factor][q] = (model, naive)
            mixes[factor] = suite_mix(api_conn, search, max(3, args.runs // 5))
        print(f"measured {factor:g}x", flush=True)
    first, last = args.factors[0], args.factors[-1]
    print(f"a search's server ms (median), type all, 20 results; datasets "
          f"{', '.join(f'{f:g}x' for f in args.factors)} the {args.scale} one")  # fmt: skip
    head = "".join(f"{f'{f:g}x model':>12}{f'{f:g}x ILIKE':>12}" for f in args.factors)
    print(f"{'query':<22}{head}{f'model {last:g}x/{first:g}x':>16}")
    for q in QUERIES:
        cells = "".join(f"{results[f][q][0]:>12.3f}{results[f][q][1]:>12.1f}" for f in args.factors)
        print(f"{q:<22}{cells}{results[last][q][0] / results[first][q][0]:>16.2f}")
    print(f"the load test's {len(SEARCHES)} searches in each type, server ms (median of each), mean weighted "
          f"by type ({', '.join(f'{k} {w}' for k, w in SEARCH_TYPES.items())}), and the costliest three")  # fmt: skip
    for factor, costs in mixes.items():
        worst = sorted(costs.items(), key=lambda kv: kv[1], reverse=True)[:3]
        plain = sum(costs.values()) / len(costs)
        print(
            f"{factor:g}x: weighted mean {weighted_mean(costs):.2f}, plain mean {plain:.2f}; "
            + ", ".join(f"{q} ({kind}) {ms:.2f}" for (q, kind), ms in worst)
        )


if __name__ == "__main__":
    main()
