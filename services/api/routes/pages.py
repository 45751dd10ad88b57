"""The pages a client opens from the lists: a project with its comments, a forum thread with its
posts, a chain's lists past their first page, a conversation, the caller's intro requests, a public
profile. Each is one pipelined statement (db/schema/pages.sql and the chain read models' files),
paged by keyset cursors (services/api/cursors.py), so a deep page costs what the first does."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query

from denorm.ids import MAX_ID
from services.api import cursors
from services.api.db import read_json
from services.api.deps import OptionalUserDep, ServicesDep, UserDep
from services.api.errors import ERROR_RESPONSES
from services.api.models import (
    ChainProjectPage,
    ChainThreadPage,
    CommentPage,
    IntroRequestPage,
    MessagePage,
    ProjectPage,
    ThreadPage,
    UserProfile,
)
from services.api.params import IdPath, Slug
from services.api.responses import JSONBytes, RawJSON

router = APIRouter(responses=ERROR_RESPONSES)

PageLimit = Annotated[int, Query(ge=1, le=100)]
Cursor = Annotated[str | None, Query(max_length=200, description="next_cursor of the previous page")]
Username = Annotated[str, Path(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_.-]+$")]


@router.get("/api/projects/{project_id}", tags=["projects"], response_model=ProjectPage, response_class=JSONBytes)
async def project(svc: ServicesDep, user: OptionalUserDep, project_id: IdPath, limit: PageLimit = 20) -> RawJSON:
    """A project page: the project, its exact counts, whether the caller upvoted it (with a token),
    and its newest comments."""
    params = {"id": project_id, "user": user, "limit": limit}
    return RawJSON(await read_json(svc, "project_page", params, user, missing="no such project"))


@router.get("/api/projects/{project_id}/comments", tags=["projects"], response_model=CommentPage,
            response_class=JSONBytes)  # fmt: skip
async def project_comments(
    svc: ServicesDep, user: OptionalUserDep, project_id: IdPath, cursor: Cursor = None, limit: PageLimit = 20
) -> RawJSON:
    """A project's comments, newest first."""
    after_at, after_id = cursors.newest_first(cursor, "comments")
    params = {"id": project_id, "after_at": after_at, "after_id": after_id, "limit": limit}
    return RawJSON(await read_json(svc, "project_comments", params, user, missing="no such project"))


@router.get("/api/threads/{thread_id}", tags=["chains"], response_model=ThreadPage, response_class=JSONBytes)
async def thread(
    svc: ServicesDep, user: OptionalUserDep, thread_id: IdPath, cursor: Cursor = None, limit: PageLimit = 20
) -> RawJSON:
    """A forum thread and its posts, oldest first, each with its author's username."""
    after_at, after_id = cursors.oldest_first(cursor, "posts")
    params = {"id": thread_id, "after_at": after_at, "after_id": after_id, "limit": limit}
    return RawJSON(await read_json(svc, "thread_page", params, user, missing="no such thread"))


@router.get("/api/chains/{slug}/projects", tags=["chains"], response_model=ChainProjectPage, response_class=JSONBytes)
async def chain_projects(svc: ServicesDep, slug: Slug, cursor: Cursor = None, limit: PageLimit = 20) -> RawJSON:
    """A chain's projects in the chain page's order (best first, as of the fold; counts exact)."""
    after_key, after_id = (
        (MAX_ID, MAX_ID) if cursor is None else cursors.decode(cursor, "chain_projects", cursors.count)
    )
    params = {"slug": slug, "after_key": after_key, "after_id": after_id, "limit": limit}
    return RawJSON(await read_json(svc, "chain_projects", params, missing="no such chain"))


@router.get("/api/chains/{slug}/threads", tags=["chains"], response_model=ChainThreadPage, response_class=JSONBytes)
async def chain_threads(svc: ServicesDep, slug: Slug, cursor: Cursor = None, limit: PageLimit = 20) -> RawJSON:
    """A chain's forum threads in the chain page's order (latest activity first, as of the fold)."""
    after_at, after_id = cursors.newest_first(cursor, "chain_threads")
    params = {"slug": slug, "after_at": after_at, "after_id": after_id, "limit": limit}
    return RawJSON(await read_json(svc, "chain_threads", params, missing="no such chain"))


@router.get("/api/messages/conversations/{user_id}", tags=["messages"], response_model=MessagePage,
            response_class=JSONBytes)  # fmt: skip
async def conversation(
    svc: ServicesDep, me: UserDep, user_id: IdPath, cursor: Cursor = None, limit: PageLimit = 50
) -> RawJSON:
    """The caller's messages with one user, newest first. A 404 when the two have none: nobody
    else's conversation is reachable, nor told apart from one that does not exist."""
    after_at, after_id = cursors.newest_first(cursor, "messages")
    params = {"me": me, "other": user_id, "after_at": after_at, "after_id": after_id, "limit": limit}
    return RawJSON(await read_json(svc, "conversation_messages", params, me, missing="no conversation with that user"))


@router.get("/api/intro-requests", tags=["intro requests"], response_model=IntroRequestPage, response_class=JSONBytes)
async def intro_requests(
    svc: ServicesDep,
    me: UserDep,
    box: Literal["received", "sent"] = "received",
    status: Literal["pending", "accepted", "declined"] | None = None,
    cursor: Cursor = None,
    limit: PageLimit = 20,
) -> RawJSON:
    """The caller's own intro requests, received or sent, newest first; of one status, or all."""
    after_at, after_id = cursors.newest_first(cursor, "intro_requests")
    params = {"me": me, "received": box == "received", "status": status, "after_at": after_at,
              "after_id": after_id, "limit": limit}  # fmt: skip
    return RawJSON(await read_json(svc, "intro_requests", params, me))


@router.get("/api/users/{username}", tags=["users"], response_model=UserProfile, response_class=JSONBytes)
async def user_profile(svc: ServicesDep, username: Username) -> RawJSON:
    """A public profile, with the dashboard's public counts (exact), never its private ones."""
    return RawJSON(await read_json(svc, "user_profile", {"username": username}, missing="no such user"))
