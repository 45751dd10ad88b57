"""A scratch database for one benchmark run: created, migrated, and dropped afterwards."""

from __future__ import annotations

import argparse
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from denorm.migrate import migrate

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
