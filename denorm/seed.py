"""`denorm seed`: fill the source tables with a deterministic, skewed, generated dataset.

Everything runs in Postgres (generate_series over hash-based draws, see db/seed/*.sql): Python
only cuts each table into chunks of about CHUNK_ROWS rows and runs the chunks of one phase on
`jobs` parallel sessions. Rows reach the tables through ordinary INSERTs, so the read models'
triggers see the data exactly as they would see any other writer's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from db import SQL_DIR
from denorm import maintenance
from denorm.logs import get_logger
from denorm.pg import conninfo
from denorm.sql import split

log = get_logger("denorm.seed")

SEED_DIR: Path = SQL_DIR / "seed"
CHUNK_ROWS = 200_000
# The end of the year the data spans. Fixed, so that the same seed gives the same rows tomorrow.
DEFAULT_ANCHOR = datetime(2026, 11, 1, tzinfo=UTC)
# Popularity laws: rank r of n draws (r/n)^a of the rows (smaller a, heavier head).
UPVOTE_A = 1 / 3
COMMENT_A = 0.5
CHAIN_A = 0.5

SOURCE_TABLES = (
    "users",
    "projects",
    "project_upvotes",
    "project_comments",
    "chains",
    "chain_projects",
    "chain_members",
    "forum_threads",
    "forum_posts",
    "messages",
    "intro_requests",
)


@dataclass(frozen=True)
class Scale:
    users: int
    projects: int
    upvotes: int
    comments: int
    chains: int
    chain_projects: int
    chain_members: int
    threads: int
    posts: int
    messages: int
    intros: int

    def times(self, factor: float) -> Scale:
        if factor <= 0:
            raise ValueError("factor must be positive")
        return replace(self, **{f.name: max(2, round(getattr(self, f.name) * factor)) for f in fields(self)})


STANDARD = Scale(
    users=100_000,
    projects=200_000,
    upvotes=2_000_000,
    comments=500_000,
    chains=5_000,
    chain_projects=100_000,
    chain_members=50_000,
    threads=20_000,
    posts=200_000,
    messages=1_000_000,
    intros=200_000,
)
SCALES: dict[str, Scale] = {
    "tiny": STANDARD.times(1 / 500),
    "small": STANDARD.times(1 / 20),
    "standard": STANDARD,
    "large": STANDARD.times(4),
}


@dataclass(frozen=True)
class Chunk:
    table: str
    lo: int
    hi: int
    rows: int  # expected rows, for progress


@dataclass(frozen=True)
class Step:
    """One table: `block` of dataset.sql over items 1..n, each item a row or a popularity rank."""

    table: str
    items: int
    rows: int
    # For rank-driven tables, the exponent of the popularity law; None when one item is one row.
    law: float | None = None

    def chunks(self) -> list[Chunk]:
        parts = max(1, math.ceil(self.rows / CHUNK_ROWS))
        if self.law is None:
            bounds = [round(self.items * j / parts) for j in range(parts + 1)]
        else:
            # Cut where the cumulative share (r/n)^a crosses j/parts, so each chunk has similar rows.
            bounds = [min(self.items, math.ceil(self.items * (j / parts) ** (1 / self.law))) for j in range(parts + 1)]
        out = []
        for j in range(parts):
            lo, hi = bounds[j] + 1, bounds[j + 1]
            if lo <= hi:
                out.append(Chunk(self.table, lo, hi, round(self.rows / parts)))
        return out


def plan(scale: Scale) -> list[list[Step]]:
    """Phases in dependency order; the steps of one phase only reference earlier phases."""
    s = scale
    return [
        [Step("users", s.users, s.users)],
        [Step("projects", s.projects, s.projects), Step("chains", s.chains, s.chains)],
        [
            Step("project_upvotes", s.projects, s.upvotes, UPVOTE_A),
            Step("messages", s.messages, s.messages),
            Step("project_comments", s.projects, s.comments, COMMENT_A),
            Step("intro_requests", s.intros, s.intros),
            Step("chain_projects", s.chains, s.chain_projects, CHAIN_A),
            Step("chain_members", s.chains, s.chain_members, CHAIN_A),
            Step("forum_threads", s.threads, s.threads),
        ],
        [Step("forum_posts", s.posts, s.posts)],
    ]


def _params(scale: Scale, seed: int, anchor: datetime) -> dict[str, Any]:
    return {
        "seed": seed,
        "anchor": anchor,
        "n_users": scale.users,
        "n_projects": scale.projects,
        "n_upvotes": scale.upvotes,
        "n_comments": scale.comments,
        "n_chains": scale.chains,
        "n_chain_projects": scale.chain_projects,
        "n_chain_members": scale.chain_members,
        "n_threads": scale.threads,
        "n_posts": scale.posts,
        "n_messages": scale.messages,
        "n_intros": scale.intros,
        "upvote_a": UPVOTE_A,
        "comment_a": COMMENT_A,
    }


def _configure(conn: psycopg.Connection[Any]) -> None:
    # A bulk load: no need to wait for WAL flush per chunk, and JIT compilation only adds time here.
    conn.execute("SET synchronous_commit = off")
    conn.execute("SET jit = off")
    conn.execute("SET work_mem = '128MB'")


@dataclass
class SeedReport:
    seconds: float
    counts: dict[str, int]


def seed(
    url: str,
    scale: Scale,
    *,
    seed: int = 42,
    jobs: int = 2,
    truncate: bool = True,
    anchor: datetime = DEFAULT_ANCHOR,
    progress: Callable[[str], None] | None = None,
) -> SeedReport:
    """Generate the dataset into the database at ``url``; returns the time taken and the row counts."""
    queries = split((SEED_DIR / "dataset.sql").read_text(encoding="utf-8"))[1]
    params = _params(scale, seed, anchor)
    phases = plan(scale)
    total_rows = sum(step.rows for phase in phases for step in phase)
    started = time.perf_counter()
    done_rows = 0

    def report(message: str) -> None:
        if progress is not None:
            progress(message)

    with psycopg.connect(conninfo(url, "seed"), autocommit=True) as admin:
        if truncate:
            admin.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(_table_list()))
        admin.execute((SEED_DIR / "functions.sql").read_bytes())
        with ConnectionPool(
            conninfo(url, "seed"),
            min_size=jobs,
            max_size=jobs,
            configure=_configure,
            kwargs={"autocommit": True},
            open=True,
        ) as pool:

            def run(chunk: Chunk) -> Chunk:
                with pool.connection() as conn:
                    conn.execute(queries[chunk.table].encode(), {**params, "lo": chunk.lo, "hi": chunk.hi})
                return chunk

            for number, phase in enumerate(phases, start=1):
                chunks = [c for step in phase for c in step.chunks()]
                with ThreadPoolExecutor(max_workers=jobs) as executor:
                    for future in as_completed([executor.submit(run, c) for c in chunks]):
                        chunk = future.result()
                        done_rows += chunk.rows
                        elapsed = time.perf_counter() - started
                        log.info(
                            "seed progress",
                            phase=number,
                            table=chunk.table,
                            lo=chunk.lo,
                            hi=chunk.hi,
                            percent=round(100 * done_rows / total_rows, 1),
                            elapsed_s=round(elapsed, 1),
                        )
                        report(f"{100 * done_rows / total_rows:5.1f}%  {chunk.table} {chunk.lo}..{chunk.hi}")
        _finish(admin)
        counts = {t: _count(admin, t) for t in SOURCE_TABLES}
    seconds = time.perf_counter() - started
    log.info("seed done", seconds=round(seconds, 1), **counts)
    return SeedReport(seconds=seconds, counts=counts)


def _finish(conn: psycopg.Connection[Any]) -> None:
    # Explicit ids were inserted: move each identity sequence past them so new rows do not collide.
    for table in SOURCE_TABLES:
        if table in ("project_upvotes", "chain_projects", "chain_members"):
            continue  # keyed by their parents, no sequence
        seq = conn.execute("SELECT pg_get_serial_sequence(%s, 'id')", (table,)).fetchone()
        if seq and seq[0]:
            conn.execute(
                sql.SQL("SELECT setval(%s, coalesce((SELECT max(id) FROM {}), 0) + 1, false)").format(
                    sql.Identifier(table)
                ),
                (seq[0],),
            )
    conn.execute("DROP SCHEMA seed_util CASCADE")
    # The triggers kept every read model exact during the load, through millions of deltas. A bulk
    # load ends with the backfill (one set-based pass) rather than folding them key by key.
    maintenance.rebuild_all(conn)
    # Fresh statistics and a visibility map, so the first queries plan well and scan index-only.
    conn.execute("VACUUM (ANALYZE)")  # source tables and read models alike


def _table_list() -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(t) for t in SOURCE_TABLES)


def _count(conn: psycopg.Connection[Any], table: str) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
    return int(row[0]) if row else 0
