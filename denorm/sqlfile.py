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
