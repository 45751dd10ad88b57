"""The API's parameters, each declared once. The routes use these declarations; the direct read path
(services/api/fastpath.py) reads them back from the routes."""

from __future__ import annotations

from typing import Annotated, Literal, TypedDict

from fastapi import Path, Query

from denorm.ids import MAX_ID, SLUG_MAX, SLUG_PATTERN

MAX_LIMIT = 100  # items per page
MAX_OFFSET = 1000  # ranks past this are not kept (the leaderboards hold 1000)

DocType = Literal["project", "chain", "user"]


class SearchCursor(TypedDict):
    """Where a page of search results starts: after this item (db/readmodels/mv_search_documents.sql)."""

    after_tier: int
    after_popularity: int
    after_type: DocType
    after_id: int


# Before the first page: past every tier. The route's defaults.
SEARCH_START: SearchCursor = {"after_tier": 3, "after_popularity": 0, "after_type": "project", "after_id": 0}
AfterTier = Annotated[int, Query(ge=0, le=3, description="cursor: the tier of the last item")]
AfterPopularity = Annotated[int, Query(ge=0, le=1000, description="cursor: its popularity")]
AfterType = Annotated[DocType, Query(description="cursor: its type")]
AfterId = Annotated[int, Query(ge=0, le=MAX_ID, description="cursor: its id")]

IdPath = Annotated[int, Path(gt=0, le=MAX_ID)]
Slug = Annotated[str, Path(min_length=1, max_length=SLUG_MAX, pattern=SLUG_PATTERN)]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET)]
