"""The project's SQL, read from the `.sql` files in db/: every statement by name, and the schema.

Each file of db/schema/ and db/readmodels/ is the current-state schema of one feature (its tables,
views and functions), then the statements that use it, each a named block that starts at a line
`-- name: <name>`. Names are unique across all files: a caller says `queries()["feed_page"]`
without knowing which file holds it.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from db import READMODELS_DIR, SCHEMA_DIR

_NAME = re.compile(r"^-- name: ([a-z0-9_]+)\s*$", re.MULTILINE)
_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def split(text: str) -> tuple[str, dict[str, str]]:
    """A file's schema (everything before its first named block) and its named blocks."""
    parts = _NAME.split(text)
    # parts = [schema, name1, body1, name2, body2, ...]
    blocks: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in blocks:
            raise ValueError(f"query {name!r} is defined twice")
        blocks[name] = body.strip()
    return parts[0], blocks


def sql_files() -> list[Path]:
    return sorted(SCHEMA_DIR.glob("*.sql")) + sorted(READMODELS_DIR.glob("*.sql"))


@cache
def queries() -> dict[str, str]:
    """Every named statement of every file."""
    found: dict[str, str] = {}
    where: dict[str, Path] = {}
    for path in sql_files():
        for name, body in split(path.read_text(encoding="utf-8"))[1].items():
            if name in found:
                raise ValueError(f"query {name!r} is defined in {where[name].name} and {path.name}")
            found[name], where[name] = body, path
    return found


def query(name: str) -> bytes:
    """One named statement, as psycopg takes it."""
    return queries()[name].encode()


def positional(statement: str) -> tuple[str, list[str]]:
    """A named-placeholder statement as server-side SQL for PREPARE: `%(x)s` becomes `$1`, and the
    parameter names in order. (psycopg does this itself for every statement it prepares; the read
    pipeline, services/api/pgpipe.py, prepares its statements so, untyped, and the plan test and the
    benchmark EXPLAIN them in that same form.)"""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    return _PLACEHOLDER.sub(number, statement).replace("%%", "%"), names
