"""Named SQL blocks: a `.sql` file split at `-- name: X` lines into a dict of queries."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

_NAME = re.compile(r"^-- name: ([a-z0-9_]+)\s*$", re.MULTILINE)


@cache
def load_queries(path: Path) -> dict[str, str]:
    text = path.read_text(encoding="utf-8")
    parts = _NAME.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"{path.name}: query {name!r} is defined twice")
        queries[name] = body.strip()
    return queries


_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def positional(query: str) -> tuple[str, list[str]]:
    """A named-placeholder query as server-side SQL for PREPARE: `%(x)s` becomes `$1`, and the
    parameter names in order. (psycopg does this itself for every query it prepares; the read
    pipeline, denorm/pgpipe.py, prepares its statements so, untyped, and the plan test and the
    benchmark EXPLAIN them in that same form.)"""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    return _PLACEHOLDER.sub(number, query).replace("%%", "%"), names
