"""The feed, upvotes, and the writes on projects (create, comment)."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from psycopg import AsyncConnection
from starlette.responses import Response

from services.api.db import read, row_on
from services.api.deps import OptionalUserDep, Services, ServicesDep, UserDep
from services.api.errors import ERROR_RESPONSES, ApiError
from services.api.fastpath import direct
from services.api.feed import SORTS, Sort, position
from services.api.idempotency import IdempotencyKey
from services.api.idempotency import write as idempotent
from services.api.models import Created, FeedPage, NewComment, NewProject, UpvoteState
from services.api.params import IdPath, Limit
from services.api.responses import JSONBytes, RawJSON, dumps
from services.api.upvotes import set_upvote, upvoted_among

router = APIRouter(prefix="/api/projects", tags=["projects"], responses=ERROR_RESPONSES)

MAX_PAGE = 500  # deep offset pages cost more; the cursor is the way past them

# Each item of a page from Postgres ends in this; a signed-in caller gets true or false instead.
_UNKNOWN = b'"user_has_upvoted":null'
_UPVOTED = b'"user_has_upvoted":true'
_NOT_UPVOTED = b'"user_has_upvoted":false'


async def feed_body(
    svc: Services, user: int | None, sort: Sort, page: int | None, limit: int, cursor: str | None
) -> bytes:
    """The feed page as JSON: the FastAPI route and the direct path (services/api/fastpath.py) share it."""
    if cursor is not None and page is not None:
        raise ApiError(400, "bad_request", "give either page or cursor, not both")
    after_key, after_id = position(cursor, sort)
    params: dict[str, Any] = {
        "sort": sort.value,
        "limit": limit,
        "offset": ((page or 1) - 1) * limit,
        "page": page,
        "after_key": after_key,
        "after_id": after_id,
    }
    # One row: the page as JSON (next_cursor and as_of included) and its items' ids, in order.
    row = await read(svc, SORTS[sort].statement, params, user)
    assert row is not None and row[0] is not None
    page_json, ids = row[0], row[1]
    if user is None or ids is None:
        return page_json
    projects = [int(i) for i in ids.split(b",")]
    mine = await upvoted_among(svc, user, projects)
    parts = page_json.split(_UNKNOWN)
    if len(parts) != len(projects) + 1:
        raise RuntimeError("a feed page's items and ids disagree")
    out = [parts[0]]
    for project, rest in zip(projects, parts[1:], strict=True):
        out.append(_UPVOTED if project in mine else _NOT_UPVOTED)
        out.append(rest)
    return b"".join(out)


@router.get("", response_model=FeedPage, response_class=JSONBytes)
@direct(feed_body)
async def feed(
    svc: ServicesDep,
    user: OptionalUserDep,
    sort: Sort = Sort.TRENDING,
    page: Annotated[int | None, Query(ge=1, le=MAX_PAGE, description="1-based page (offset paging)")] = None,
    limit: Limit = 20,
    cursor: Annotated[str | None, Query(max_length=200, description="next_cursor of the previous page")] = None,
) -> RawJSON:
    """The feed: order from the feed table (about a second old), counts from the zero-staleness counters.

    With a token, each item says whether the caller upvoted it (Redis, else Postgres).
    """
    return RawJSON(await feed_body(svc, user, sort, page, limit, cursor))


async def upvote_body(svc: Services, user: int, project_id: int, want: bool | None) -> bytes:
    """The upvote's answer (want: None toggles, true sets, false clears): its FastAPI routes and the
    direct path (services/api/fastpath.py, each route's `want` bound) share it."""
    upvoted, count = await set_upvote(svc, user, project_id, want)
    return dumps({"upvoted": upvoted, "upvote_count": count})


@router.post("/{project_id}/upvote", response_model=UpvoteState, response_class=JSONBytes)
@direct(partial(upvote_body, want=None))
async def toggle_upvote(svc: ServicesDep, user: UserDep, project_id: IdPath) -> RawJSON:
    """Toggle the caller's upvote; answers the new state and the project's exact count."""
    return RawJSON(await upvote_body(svc, user, project_id, None))


@router.put("/{project_id}/upvote", response_model=UpvoteState, response_class=JSONBytes)
@direct(partial(upvote_body, want=True))
async def add_upvote(svc: ServicesDep, user: UserDep, project_id: IdPath) -> RawJSON:
    """Upvote (idempotent)."""
    return RawJSON(await upvote_body(svc, user, project_id, True))


@router.delete("/{project_id}/upvote", response_model=UpvoteState, response_class=JSONBytes)
@direct(partial(upvote_body, want=False))
async def remove_upvote(svc: ServicesDep, user: UserDep, project_id: IdPath) -> RawJSON:
    """Withdraw the upvote (idempotent)."""
    return RawJSON(await upvote_body(svc, user, project_id, False))


@router.post("", status_code=201, response_model=Created, response_class=JSONBytes)
async def create_project(
    svc: ServicesDep, user: UserDep, body: NewProject, request: Request, key: IdempotencyKey = None
) -> Response:
    """Create a project owned by the caller."""

    async def run(conn: AsyncConnection[Any]) -> JSONBytes:
        row = await row_on(conn, "create_project", {"owner": user, **body.model_dump()})
        assert row is not None
        return JSONBytes({"id": row[0]}, status_code=201)

    return await idempotent(svc, request, user, key, body, run)


@router.post("/{project_id}/comments", status_code=201, response_model=Created, response_class=JSONBytes)
async def comment(
    svc: ServicesDep, user: UserDep, project_id: IdPath, body: NewComment, request: Request, key: IdempotencyKey = None
) -> Response:
    """Comment on a project."""

    async def run(conn: AsyncConnection[Any]) -> JSONBytes:
        row = await row_on(conn, "add_comment", {"user": user, "project": project_id, "body": body.body})
        if row is None:
            raise ApiError(404, "not_found", "no such project")
        return JSONBytes({"id": row[0]}, status_code=201)

    return await idempotent(svc, request, user, key, body, run)
