"""Identifiers, defined once: the id range every table's key lives in, and the form of a chain's slug."""

from __future__ import annotations

import re

# Every id is a positive bigint.
MAX_ID = 2**63 - 1
# The same rule as the CHECK on chains.slug (db/schema/source.sql).
SLUG_PATTERN = r"^[a-z0-9]+(-[a-z0-9]+)*$"
SLUG_MAX = 80

_DIGITS = re.compile(r"[0-9]{1,19}")


def parse_id(text: str) -> int | None:
    """The id a text spells in plain ASCII digits, or None: no sign, no space, no superscript and no
    other script's digits (str.isdigit() accepts all of those)."""
    if not _DIGITS.fullmatch(text):
        return None
    value = int(text)
    return value if 0 < value <= MAX_ID else None
