"""Messages, intro requests and chain membership: the caller's own data and writes."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from psycopg import AsyncConnection
from starlette.responses import Response

from services.api.db import fetch_one, read_json, row_on, rows_on
from services.api.deps import Services, ServicesDep, UserDep
from services.api.errors import ERROR_RESPONSES, ApiError
from services.api.fastpath import direct
from services.api.idempotency import IdempotencyKey
from services.api.idempotency import write as idempotent
from services.api.models import (
    Changed,
    Conversations,
    Created,
    MarkRead,
    NewIntroRequest,
    NewMessage,
    NewPost,
    NewThread,
)
from services.api.params import IdPath, Slug
from services.api.responses import JSONBytes, RawJSON

router = APIRouter(responses=ERROR_RESPONSES)


async def conversations_body(svc: Services, user: int, limit: int) -> bytes:
    return await read_json(svc, "conversations", {"user_id": user, "limit": limit}, user)


@router.get("/api/messages/conversations", tags=["messages"], response_model=Conversations, response_class=JSONBytes)
@direct(conversations_body)
async def conversations(svc: ServicesDep, user: UserDep, limit: Annotated[int, Query(ge=1, le=100)] = 50) -> RawJSON:
    """The caller's conversations, latest first, exact at this instant."""
    return RawJSON(await conversations_body(svc, user, limit))


@router.post("/api/messages", status_code=201, tags=["messages"], response_model=Created, response_class=JSONBytes)
async def send_message(
    svc: ServicesDep, user: UserDep, body: NewMessage, request: Request, key: IdempotencyKey = None
) -> Response:
    """Send a message to another user."""
    if body.recipient_id == user:
        raise ApiError(422, "invalid_input", "you cannot message yourself")

    async def run(conn: AsyncConnection[Any]) -> JSONBytes:
        row = await row_on(conn, "send_message", {"sender": user, "recipient": body.recipient_id, "body": body.body})
        assert row is not None
        return JSONBytes({"id": row[0]}, status_code=201)

    return await idempotent(svc, request, user, key, body, run)


@router.post("/api/messages/read", tags=["messages"], response_model=Changed, response_class=JSONBytes)
async def mark_read(
    svc: ServicesDep, user: UserDep, body: MarkRead, request: Request, key: IdempotencyKey = None
) -> Response:
    """Mark every unread message from one user to the caller as read."""

    async def run(conn: AsyncConnection[Any]) -> JSONBytes:
        rows = await rows_on(conn, "mark_read", {"me": user, "other": body.other_user_id})
        return JSONBytes({"changed": len(rows)})

    return await idempotent(svc, request, user, key, body, run)


@router.post("/api/intro-requests", status_code=201, tags=["intro requests"], response_model=Created,
             response_class=JSONBytes)  # fmt: skip
async def create_intro(
    svc: ServicesDep, user: UserDep, body: NewIntroRequest, request: Request, key: IdempotencyKey = None
) -> Response:
    """Ask another user for an introduction, optionally about a project."""
    if body.target_id == user:
        raise ApiError(422, "invalid_input", "you cannot ask yourself for an intro")
    params = {"me": user, "target": body.target_id, "project": body.project_id, "message": body.message}

    async def run(conn: AsyncConnection[Any]) -> JSONBytes:
        row = await row_on(conn, "create_intro", params)
        assert row is not None
        return JSONBytes({"id": row[0]}, status_code=201)

    return await idempotent(svc, request, user, key, body, run)


@router.post("/api/intro-requests/{intro_id}/{decision}", tags=["intro requests"], response_model=Changed,
             response_class=JSONBytes)  # fmt: skip
async def answer_intro(
    svc: ServicesDep,
    user: UserDep,
    intro_id: IdPath,
    decision: Literal["accept", "decline"],
    request: Request,
    key: IdempotencyKey = None,
) -> Response:
    """Accept or decline a pending intro request addressed to the caller."""
    status = "accepted" if decision == "accept" else "declined"

    async def run(conn: AsyncConnection[Any]) -> JSONBytes:
        if await row_on(conn, "answer_intro", {"status": status, "id": intro_id, "me": user}) is None:
            raise ApiError(404, "not_found", "no pending intro request of yours with that id")
        return JSONBytes({"changed": 1})

    return await idempotent(svc, request, user, key, None, run)


async def _chain_id(conn: AsyncConnection[Any], slug: str) -> int:
    row = await row_on(conn, "chain_id", {"slug": slug})
    if row is None:
        raise ApiError(404, "not_found", "no such chain")
    return int(row[0])


@router.put("/api/chains/{slug}/membership", tags=["chains"], response_model=Changed, response_class=JSONBytes)
async def join_chain(
    svc: ServicesDep, user: UserDep, slug: Slug, request: Request, key: IdempotencyKey = None
) -> Response:
    """Join a chain (idempotent)."""

    async def run(conn: AsyncConnection[Any]) -> JSONBytes:
        rows = await rows_on(conn, "join_chain", {"me": user, "slug": slug})
        if not rows:
            await _chain_id(conn, slug)  # 404 when the chain does not exist
        return JSONBytes({"changed": len(rows)})

    return await idempotent(svc, request, user, key, None, run)


@router.delete("/api/chains/{slug}/membership", tags=["chains"], response_model=Changed, response_class=JSONBytes)
async def leave_chain(
    svc: ServicesDep, user: UserDep, slug: Slug, request: Request, key: IdempotencyKey = None
) -> Response:
    """Leave a chain (idempotent)."""

    async def run(conn: AsyncConnection[Any]) -> JSONBytes:
        chain_id = await _chain_id(conn, slug)
        rows = await rows_on(conn, "leave_chain", {"chain": chain_id, "me": user})
        return JSONBytes({"changed": len(rows)})

    return await idempotent(svc, request, user, key, None, run)


@router.post("/api/chains/{slug}/threads", status_code=201, tags=["chains"], response_model=Created,
             response_class=JSONBytes)  # fmt: skip
async def new_thread(
    svc: ServicesDep, user: UserDep, slug: Slug, body: NewThread, request: Request, key: IdempotencyKey = None
) -> Response:
    """Open a forum thread in a chain: members only (403 otherwise)."""

    async def run(conn: AsyncConnection[Any]) -> JSONBytes:
        params = {"me": user, "title": body.title, "body": body.body, "slug": slug}
        return _created_by_member(await row_on(conn, "new_thread", params), "no such chain")

    return await idempotent(svc, request, user, key, body, run)


@router.post("/api/threads/{thread_id}/posts", status_code=201, tags=["chains"], response_model=Created,
             response_class=JSONBytes)  # fmt: skip
async def new_post(
    svc: ServicesDep, user: UserDep, thread_id: IdPath, body: NewPost, request: Request, key: IdempotencyKey = None
) -> Response:
    """Reply in a forum thread: members of its chain only (403 otherwise)."""

    async def run(conn: AsyncConnection[Any]) -> JSONBytes:
        row = await row_on(conn, "new_post", {"me": user, "body": body.body, "thread": thread_id})
        return _created_by_member(row, "no such thread")

    return await idempotent(svc, request, user, key, body, run)


@router.put("/api/chains/{slug}/projects/{project_id}", tags=["chains"], response_model=Changed,
            response_class=JSONBytes)  # fmt: skip
async def add_chain_project(svc: ServicesDep, user: UserDep, slug: Slug, project_id: IdPath) -> JSONBytes:
    """The chain's owner adds a project to it (idempotent): 403 for anyone else."""
    row = await fetch_one(svc.write_pool, "add_chain_project", {"me": user, "slug": slug, "project": project_id})
    return JSONBytes({"changed": _curated(row)})


@router.delete("/api/chains/{slug}/projects/{project_id}", tags=["chains"], response_model=Changed,
               response_class=JSONBytes)  # fmt: skip
async def remove_chain_project(svc: ServicesDep, user: UserDep, slug: Slug, project_id: IdPath) -> JSONBytes:
    """The chain's owner removes a project from it (idempotent): 403 for anyone else."""
    row = await fetch_one(svc.write_pool, "remove_chain_project", {"me": user, "slug": slug, "project": project_id})
    changed = _curated(row)
    if row is not None and not row[2]:
        raise ApiError(404, "not_found", "no such project")
    return JSONBytes({"changed": changed})


def _curated(row: tuple[Any, ...] | None) -> int:
    """The rows a curation statement changed: (owner, changed, ...) from its one row."""
    if row is None:
        raise ApiError(404, "not_found", "no such chain")
    if not row[0]:
        raise ApiError(403, "forbidden", "only the chain's owner adds or removes its projects")
    return int(row[1])


def _created_by_member(row: tuple[Any, ...] | None, missing: str) -> JSONBytes:
    """The answer to a forum write: (member, new id) from its statement."""
    if row is None or row[0] is None:
        raise ApiError(404, "not_found", missing)
    if not row[0]:
        raise ApiError(403, "forbidden", "only members of the chain write in its forum; join it first")
    return JSONBytes({"id": row[1]}, status_code=201)
