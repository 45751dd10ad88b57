"""Leaderboards, the dashboard, chains, search and the refresh status: one query each."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query

from services.api.db import fetch_all, fetch_one, queries
from services.api.deps import ServicesDep, UserDep
from services.api.errors import ERROR_RESPONSES, ApiError
from services.api.models import (
    ChainDetail,
    ChainList,
    Dashboard,
    ProjectLeaderboard,
    RefreshStatus,
    SearchResults,
    UserLeaderboard,
)
from services.api.responses import JSONBytes

router = APIRouter(responses=ERROR_RESPONSES)
MAX_ID = 2**63 - 1
Limit = Annotated[int, Query(ge=1, le=100)]
Offset = Annotated[int, Query(ge=0, le=1000)]

LEADER_PROJECT = ("rank", "project_id", "title", "owner_id", "username", "upvote_count", "comment_count")
LEADER_USER = ("rank", "user_id", "username", "display_name", "upvotes_received", "project_count")
CHAIN = ("chain_id", "slug", "name", "description", "owner_username", "project_count", "member_count",
         "thread_count", "last_activity_at")  # fmt: skip
DASHBOARD = ("user_id", "project_count", "upvotes_received", "comments_received", "upvotes_given",
             "unread_messages", "pending_intros_received", "chains_joined", "updated_at")  # fmt: skip
INTRO = ("sent_pending", "sent_accepted", "sent_declined", "received_pending", "received_accepted",
         "received_declined")  # fmt: skip
VIEW_STATUS = ("view_name", "status", "refresh_requested_at", "first_requested_at", "last_refreshed_at",
               "last_refresh_duration_ms", "attempts", "last_error", "staleness_seconds")  # fmt: skip


def rows_as(columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    return [dict(zip(columns, row, strict=False)) for row in rows]


def as_of(rows: list[tuple[Any, ...]], width: int) -> Any:
    return rows[0][width] if rows else None


@router.get("/api/leaderboard/projects", tags=["leaderboards"], response_model=ProjectLeaderboard,
            response_class=JSONBytes)  # fmt: skip
async def leaderboard_projects(svc: ServicesDep, limit: Limit = 50, offset: Offset = 0) -> JSONBytes:
    """The most upvoted projects (ranks seconds old, counts exact)."""
    rows = await fetch_all(svc.read_pool, queries()["leaderboard_projects"], {"limit": limit, "offset": offset})
    return JSONBytes({"items": rows_as(LEADER_PROJECT, rows), "as_of": as_of(rows, len(LEADER_PROJECT))})


@router.get("/api/leaderboard/users", tags=["leaderboards"], response_model=UserLeaderboard,
            response_class=JSONBytes)  # fmt: skip
async def leaderboard_users(svc: ServicesDep, limit: Limit = 50, offset: Offset = 0) -> JSONBytes:
    """The users whose projects drew the most upvotes."""
    rows = await fetch_all(svc.read_pool, queries()["leaderboard_users"], {"limit": limit, "offset": offset})
    return JSONBytes({"items": rows_as(LEADER_USER, rows), "as_of": as_of(rows, len(LEADER_USER))})


@router.get("/api/users/dashboard", tags=["users"], response_model=Dashboard, response_class=JSONBytes)
async def dashboard(svc: ServicesDep, user: UserDep) -> JSONBytes:
    """The caller's dashboard and intro-request stats, exact at this instant."""
    row = await fetch_one(svc.read_pool, queries()["dashboard"], {"user_id": user})
    if row is None:
        raise ApiError(404, "not_found", "no such user")
    body = dict(zip(DASHBOARD, row[: len(DASHBOARD)], strict=True))
    body["intro_stats"] = dict(zip(INTRO, row[len(DASHBOARD) :], strict=True))
    return JSONBytes(body)


@router.get("/api/chains", tags=["chains"], response_model=ChainList, response_class=JSONBytes)
async def chains(
    svc: ServicesDep,
    limit: Limit = 20,
    after_members: Annotated[int, Query(ge=0, le=MAX_ID, description="cursor: member_count of the last item")] = MAX_ID,
    after_id: Annotated[int, Query(ge=0, le=MAX_ID, description="cursor: chain_id of the last item")] = MAX_ID,
) -> JSONBytes:
    """The chain directory, largest first."""
    rows = await fetch_all(
        svc.read_pool, queries()["chains"], {"limit": limit, "after_members": after_members, "after_id": after_id}
    )
    items = rows_as(CHAIN, rows)
    cursor = (
        f"after_members={items[-1]['member_count']}&after_id={items[-1]['chain_id']}" if len(items) == limit else None
    )
    return JSONBytes({"items": items, "next_cursor": cursor, "as_of": as_of(rows, len(CHAIN))})


@router.get("/api/chains/{slug}", tags=["chains"], response_model=ChainDetail, response_class=JSONBytes)
async def chain(
    svc: ServicesDep,
    slug: Annotated[str, Path(min_length=1, max_length=80, pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$")],
) -> JSONBytes:
    """One chain with its best projects and its most recent threads."""
    rows = await fetch_all(svc.read_pool, queries()["chain_page"], {"slug": slug, "limit": 20})
    if not rows:
        raise ApiError(404, "not_found", "no such chain")
    page = rows[0][0]
    return JSONBytes(page)


@router.get("/api/search", tags=["search"], response_model=SearchResults, response_class=JSONBytes)
async def search(
    svc: ServicesDep,
    q: Annotated[str, Query(min_length=1, max_length=200)],
    type: Literal["all", "projects", "users", "chains"] = "all",
    limit: Limit = 20,
) -> JSONBytes:
    """Full-text search over projects, users and chains, forgiving typos."""
    doc_type = None if type == "all" else type.removesuffix("s")
    rows = await fetch_all(svc.read_pool, queries()["search"], {"q": q, "doc_type": doc_type, "limit": limit})
    items = [
        {"type": r[0], "id": r[1], "title": r[2], "subtitle": r[3], "slug": r[4], "score": float(r[6])} for r in rows
    ]
    return JSONBytes({"query": q, "corrected": rows[0][5] if rows else None, "items": items,
                      "as_of": rows[0][7] if rows else None})  # fmt: skip


@router.get("/api/admin/refresh-status", tags=["operations"], response_model=RefreshStatus, response_class=JSONBytes)
async def refresh_status(svc: ServicesDep) -> JSONBytes:
    """Per view: queue state, last refresh, staleness in seconds."""
    rows = await fetch_all(svc.read_pool, queries()["refresh_status"])
    return JSONBytes({"views": rows_as(VIEW_STATUS, rows)})
