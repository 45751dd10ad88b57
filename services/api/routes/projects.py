"""The feed, upvotes, and the writes on projects (create, comment)."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Path, Query

from services.api.db import fetch_one, read_row
from services.api.deps import OptionalUserDep, Services, ServicesDep, UserDep
from services.api.errors import ERROR_RESPONSES, ApiError
from services.api.models import Created, FeedPage, NewComment, NewProject, UpvoteState
from services.api.responses import JSONBytes, RawJSON
from services.api.upvotes import set_upvote, upvoted_among

router = APIRouter(prefix="/api/projects", tags=["projects"], responses=ERROR_RESPONSES)

MAX_ID = 2**63 - 1
MAX_PAGE = 500  # deep offset pages cost more; the cursor is the way past them
MAX_LIMIT = 100
ProjectId = Annotated[int, Path(gt=0, lt=2**63, description="project id")]

# sort -> its named query (a fixed table: the sort column never comes from the request)
SORTS: dict[str, str] = {"trending": "feed_trending", "top-rated": "feed_top_rated", "newest": "feed_newest"}


# Each item of a page from Postgres ends in this; a signed-in caller gets true or false instead.
_UNKNOWN = b'"user_has_upvoted":null'
_UPVOTED = b'"user_has_upvoted":true'
_NOT_UPVOTED = b'"user_has_upvoted":false'


def decode_cursor(cursor: str, sort: str) -> tuple[Any, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        cursor_sort, value, last_id = orjson.loads(raw)
        if cursor_sort != sort or not isinstance(last_id, int) or not 0 < last_id < 2**63:
            raise ValueError("cursor of another sort")
        if sort == "newest":
            when = datetime.fromisoformat(value)
            return (when if when.tzinfo else when.replace(tzinfo=UTC)), last_id
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError("bad score")
        return float(value), last_id
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError) as exc:
        raise ApiError(400, "bad_cursor", "the cursor is not one this feed gave out") from exc


Sort = Literal["trending", "top-rated", "newest"]


async def feed_body(
    svc: Services, user: int | None, sort: Sort, page: int | None, limit: int, cursor: str | None
) -> bytes:
    """The feed page as JSON: the FastAPI route and the direct path (services/api/fastpath.py) share it."""
    name = SORTS[sort]
    if cursor is not None and page is not None:
        raise ApiError(400, "bad_request", "give either page or cursor, not both")
    params: dict[str, Any] = {"limit": limit, "offset": ((page or 1) - 1) * limit, "page": page}
    if cursor is not None:
        after, after_id = decode_cursor(cursor, sort)
    else:
        after, after_id = (datetime.max.replace(tzinfo=UTC) if sort == "newest" else float("inf")), MAX_ID
    params.update({"after_time" if sort == "newest" else "after_score": after, "after_id": after_id})
    # One row: the page as JSON (next_cursor and as_of included) and its items' ids, in order.
    row = await read_row(svc.reads, name, params)
    assert row is not None and row[0] is not None
    page_json, ids = row[0], row[1]
    if user is None or ids is None:
        return page_json
    order = [int(i) for i in ids.split(b",")]
    mine = await upvoted_among(svc, user, order)
    parts = page_json.split(_UNKNOWN)
    if len(parts) != len(order) + 1:
        raise RuntimeError("a feed page's items and ids disagree")
    out = [parts[0]]
    for project, rest in zip(order, parts[1:], strict=True):
        out.append(_UPVOTED if project in mine else _NOT_UPVOTED)
        out.append(rest)
    return b"".join(out)


@router.get("", response_model=FeedPage, response_class=JSONBytes)
async def feed(
    svc: ServicesDep,
    user: OptionalUserDep,
    sort: Sort = "trending",
    page: Annotated[int | None, Query(ge=1, le=MAX_PAGE, description="1-based page (offset paging)")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 20,
    cursor: Annotated[str | None, Query(max_length=200, description="next_cursor of the previous page")] = None,
) -> RawJSON:
    """The feed: order from the feed table (about a second old), counts from the zero-staleness counters.

    With a token, each item says whether the caller upvoted it (Redis, else Postgres).
    """
    return RawJSON(await feed_body(svc, user, sort, page, limit, cursor))


async def _upvote(svc: ServicesDep, user: int, project_id: int, want: bool | None) -> JSONBytes:
    upvoted, count = await set_upvote(svc, user, project_id, want)
    return JSONBytes({"upvoted": upvoted, "upvote_count": count})


@router.post("/{project_id}/upvote", response_model=UpvoteState, response_class=JSONBytes)
async def toggle_upvote(svc: ServicesDep, user: UserDep, project_id: ProjectId) -> JSONBytes:
    """Toggle the caller's upvote; answers the new state and the project's exact count."""
    return await _upvote(svc, user, project_id, None)


@router.put("/{project_id}/upvote", response_model=UpvoteState, response_class=JSONBytes)
async def add_upvote(svc: ServicesDep, user: UserDep, project_id: ProjectId) -> JSONBytes:
    """Upvote (idempotent)."""
    return await _upvote(svc, user, project_id, True)


@router.delete("/{project_id}/upvote", response_model=UpvoteState, response_class=JSONBytes)
async def remove_upvote(svc: ServicesDep, user: UserDep, project_id: ProjectId) -> JSONBytes:
    """Withdraw the upvote (idempotent)."""
    return await _upvote(svc, user, project_id, False)


@router.post("", status_code=201, response_model=Created, response_class=JSONBytes)
async def create_project(svc: ServicesDep, user: UserDep, body: NewProject) -> JSONBytes:
    """Create a project owned by the caller."""
    row = await fetch_one(
        svc.write_pool,
        "INSERT INTO projects (owner_id, title, tagline, description, tags) "
        "VALUES (%(owner)s, %(title)s, %(tagline)s, %(description)s, %(tags)s) RETURNING id",
        {"owner": user, **body.model_dump()},
    )
    assert row is not None
    return JSONBytes({"id": row[0]}, status_code=201)


@router.post("/{project_id}/comments", status_code=201, response_model=Created, response_class=JSONBytes)
async def comment(svc: ServicesDep, user: UserDep, project_id: ProjectId, body: NewComment) -> JSONBytes:
    """Comment on a project."""
    row = await fetch_one(
        svc.write_pool,
        "INSERT INTO project_comments (project_id, author_id, body) "
        "SELECT id, %(user)s, %(body)s FROM projects WHERE id = %(project)s RETURNING id",
        {"user": user, "project": project_id, "body": body.body},
    )
    if row is None:
        raise ApiError(404, "not_found", "no such project")
    return JSONBytes({"id": row[0]}, status_code=201)
