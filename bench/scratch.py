"""A scratch database for one benchmark run: created, migrated, and dropped afterwards."""

from __future__ import annotations

import argparse
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from denorm.migrate import migrate
from loadtest.prewarm import prewarm

ADMIN_URL = os.environ.get("BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """--scale and --database-url, the two ways a benchmark gets its data (see seeded_database)."""
    from denorm.seed import SCALES

    parser.add_argument("--scale", choices=list(SCALES), default="standard")
    parser.add_argument(
        "--database-url", help="an already seeded database to use as it is (default: a scratch one, seeded)"
    )


@contextmanager
def seeded_database(prefix: str, scale_name: str, url: str | None) -> Iterator[str]:
    """A scratch database seeded at `scale_name`, or, with `url`, that already seeded database as it is
    (so a benchmark can be repeated without seeding millions of rows again)."""
    if url:
        yield url
        return
    from denorm.seed import SCALES, seed

    with scratch_database(prefix) as scratch:
        seed(scratch, SCALES[scale_name])
        yield scratch


@contextmanager
def scratch_database(prefix: str = "bench", keep: bool = False) -> Iterator[str]:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_conninfo(ADMIN_URL, dbname=name)
    try:
        migrate(url, echo=lambda _m: None)
        yield url
    finally:
        if not keep:
            with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def add_sizes_arguments(parser: argparse.ArgumentParser) -> None:
    """--scale and --factors: the dataset sizes a benchmark runs at, side by side; or --database-urls,
    databases already seeded at those sizes (one per factor, in order)."""
    from denorm.seed import SCALES

    parser.add_argument("--scale", choices=list(SCALES), default="standard")
    parser.add_argument("--factors", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    parser.add_argument("--database-urls", nargs="+", help="databases seeded at --scale times each factor")


@contextmanager
def sized_database(args: argparse.Namespace, index: int, prefix: str) -> Iterator[str]:
    """The database for the index-th factor: the one given, or a scratch one seeded at that size."""
    if args.database_urls:
        yield args.database_urls[index]
        return
    from denorm.seed import SCALES, seed

    with scratch_database(prefix) as url:
        seed(url, SCALES[args.scale].times(args.factors[index]))
        yield url


def warm(conn: psycopg.Connection[Any]) -> None:
    """Read every table and index of the database into the operating system's page cache
    (pg_prewarm, 'read'), as a production server with the memory for its data has them. Without it
    the first touch of each page of a larger dataset reads the disk, and a comparison of sizes
    measures how much of each had been read before rather than the work per change."""
    prewarm(conn, "read")
