"""The feed's sorts, defined once: the route's choices, each sort's column in the feed's one query
(`feed_page`, db/readmodels/mv_feed_projects.sql), and the cursor that continues a page."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from denorm.ids import MAX_ID
from denorm.sql import queries
from services.api import cursors


class Sort(StrEnum):
    TRENDING = "trending"
    TOP_RATED = "top-rated"
    NEWEST = "newest"


@dataclass(frozen=True)
class FeedSort:
    column: str  # the feed table's column the sort orders by, descending (then by id)
    by_time: bool  # a timestamp, not a score

    @property
    def statement(self) -> str:
        """The name the sort's statement is prepared under."""
        return f"feed_by_{self.column}"

    def first_key(self) -> Any:
        """The key a first page starts after."""
        return datetime.max.replace(tzinfo=UTC) if self.by_time else float("inf")

    def key_of(self, value: Any) -> Any:
        """A cursor's key, as its JSON gave it; ValueError when it is not one of this sort's."""
        if self.by_time:
            return cursors.timestamp(value)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError("bad score")
        return float(value)


SORTS: dict[Sort, FeedSort] = {
    Sort.TRENDING: FeedSort("trending_score", by_time=False),
    Sort.TOP_RATED: FeedSort("proof_score", by_time=False),
    Sort.NEWEST: FeedSort("created_at", by_time=True),
}


def statements() -> dict[str, str]:
    """The feed's query, once per sort, with the sort's column in place of {key} (from the table
    above, never from a request)."""
    template = queries()["feed_page"]
    return {s.statement: template.replace("{key}", f'"{s.column}"') for s in SORTS.values()}


def position(cursor: str | None, sort: Sort) -> tuple[Any, int]:
    """Where a page starts: after the (key, id) its cursor names, or at the top."""
    if cursor is None:
        return SORTS[sort].first_key(), MAX_ID
    return decode_cursor(cursor, sort)


def decode_cursor(cursor: str, sort: Sort) -> tuple[Any, int]:
    """(key, id) of the last item of the page a cursor continues; 400 for anything else."""
    return cursors.decode(cursor, sort.value, SORTS[sort].key_of)
