"""Leaderboards, the dashboard, chains, search and the refresh status: one query each."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from denorm.ids import MAX_ID
from denorm.readmodels import REGISTRY
from services.api.db import fetch_all, fetch_one, json_of_pool, read_json
from services.api.deps import Services, ServicesDep, UserDep
from services.api.errors import ERROR_RESPONSES
from services.api.fastpath import direct
from services.api.models import (
    ChainDetail,
    ChainList,
    Dashboard,
    ProjectLeaderboard,
    RefreshStatus,
    SearchResults,
    UserLeaderboard,
)
from services.api.params import (
    SEARCH_START,
    AfterId,
    AfterPopularity,
    AfterTier,
    AfterType,
    DocType,
    Limit,
    Offset,
    Slug,
)
from services.api.responses import JSONBytes, RawJSON

router = APIRouter(responses=ERROR_RESPONSES)
SEARCH_MAX = 200
QUEUE_STATE = ("status", "refresh_requested_at", "first_requested_at", "last_refreshed_at",
               "last_refresh_duration_ms", "attempts", "last_error")  # fmt: skip


async def leaderboard_projects_body(svc: Services, limit: int, offset: int) -> bytes:
    return await read_json(svc, "leaderboard_projects", {"limit": limit, "offset": offset})


@router.get("/api/leaderboard/projects", tags=["leaderboards"], response_model=ProjectLeaderboard,
            response_class=JSONBytes)  # fmt: skip
@direct(leaderboard_projects_body)
async def leaderboard_projects(svc: ServicesDep, limit: Limit = 50, offset: Offset = 0) -> RawJSON:
    """The most upvoted projects (ranks seconds old, counts exact)."""
    return RawJSON(await leaderboard_projects_body(svc, limit, offset))


async def leaderboard_users_body(svc: Services, limit: int, offset: int) -> bytes:
    return await read_json(svc, "leaderboard_users", {"limit": limit, "offset": offset})


@router.get("/api/leaderboard/users", tags=["leaderboards"], response_model=UserLeaderboard,
            response_class=JSONBytes)  # fmt: skip
@direct(leaderboard_users_body)
async def leaderboard_users(svc: ServicesDep, limit: Limit = 50, offset: Offset = 0) -> RawJSON:
    """The users whose projects drew the most upvotes."""
    return RawJSON(await leaderboard_users_body(svc, limit, offset))


async def dashboard_body(svc: Services, user: int) -> bytes:
    return await read_json(svc, "dashboard", {"user_id": user}, user, missing="no such user")


@router.get("/api/users/dashboard", tags=["users"], response_model=Dashboard, response_class=JSONBytes)
@direct(dashboard_body)
async def dashboard(svc: ServicesDep, user: UserDep) -> RawJSON:
    """The caller's dashboard and intro-request stats, exact at this instant."""
    return RawJSON(await dashboard_body(svc, user))


async def chains_body(svc: Services, limit: int, after_members: int, after_id: int) -> bytes:
    return await read_json(svc, "chains", {"limit": limit, "after_members": after_members, "after_id": after_id})


@router.get("/api/chains", tags=["chains"], response_model=ChainList, response_class=JSONBytes)
@direct(chains_body)
async def chains(
    svc: ServicesDep,
    limit: Limit = 20,
    after_members: Annotated[int, Query(ge=0, le=MAX_ID, description="cursor: member_count of the last item")] = MAX_ID,
    after_id: Annotated[int, Query(ge=0, le=MAX_ID, description="cursor: chain_id of the last item")] = MAX_ID,
) -> RawJSON:
    """The chain directory, largest first."""
    return RawJSON(await chains_body(svc, limit, after_members, after_id))


async def chain_body(svc: Services, slug: str) -> bytes:
    return await read_json(svc, "chain_page", {"slug": slug, "limit": 20}, missing="no such chain")


@router.get("/api/chains/{slug}", tags=["chains"], response_model=ChainDetail, response_class=JSONBytes)
@direct(chain_body)
async def chain(svc: ServicesDep, slug: Slug) -> RawJSON:
    """One chain with its best projects and its most recent threads."""
    return RawJSON(await chain_body(svc, slug))


SearchType = Literal["all", "projects", "users", "chains"]


def doc_type_of(kind: str) -> str | None:
    """The search statement's doc_type for the route's `type`: none for all, else the singular."""
    return None if kind == "all" else kind.removesuffix("s")


async def search_body(
    svc: Services, q: str, type: SearchType, limit: int, after_tier: int, after_popularity: int,
    after_type: DocType, after_id: int,
) -> bytes:  # fmt: skip
    doc_type = doc_type_of(type)
    cursor = {"after_tier": after_tier, "after_popularity": after_popularity, "after_type": after_type,
              "after_id": after_id}  # fmt: skip
    params = {"q": q, "doc_type": doc_type, "limit": limit, **cursor}
    key = (q, type, limit, after_tier, after_popularity, after_type, after_id)

    async def miss() -> bytes:  # a search the answer cache does not have: rate-limited, then computed
        await svc.limits.check("search_misses")
        return await json_of_pool(svc.read_pool, "search", params)

    return await svc.search_cache.get(key, miss)


@router.get("/api/search", tags=["search"], response_model=SearchResults, response_class=JSONBytes)
@direct(search_body)
async def search(
    svc: ServicesDep,
    q: Annotated[str, Query(min_length=1, max_length=SEARCH_MAX)],
    type: SearchType = "all",
    limit: Limit = 20,
    after_tier: AfterTier = SEARCH_START["after_tier"],
    after_popularity: AfterPopularity = SEARCH_START["after_popularity"],
    after_type: AfterType = SEARCH_START["after_type"],
    after_id: AfterId = SEARCH_START["after_id"],
) -> RawJSON:
    """Full-text search over projects, users and chains, forgiving typos: the documents with every
    word in their title or name first, the most popular first; next_cursor continues."""
    return RawJSON(await search_body(svc, q, type, limit, after_tier, after_popularity, after_type, after_id))


@router.get("/api/admin/refresh-status", tags=["operations"], response_model=RefreshStatus, response_class=JSONBytes)
async def refresh_status(svc: ServicesDep) -> JSONBytes:
    """Per read model of the registry: how it is kept, its staleness bound and staleness, and for a
    refreshed view its queue state and last refresh."""
    clocks = {r[0]: (r[1], float(r[2])) for r in await fetch_all(svc.read_pool, "freshness", read=True)}
    queue = {
        r[0]: dict(zip(QUEUE_STATE, r[1:8], strict=True))
        for r in await fetch_all(svc.read_pool, "queue_state", read=True)
    }
    fold = await fetch_one(svc.read_pool, "fold_state", read=True)
    models: list[dict[str, Any]] = []
    for m in REGISTRY:
        as_of, staleness = clocks.get(m.clock, (None, 0.0)) if m.clock else (None, 0.0)
        models.append(
            {
                "name": m.name,
                "kind": m.kind.value,
                "file": f"db/readmodels/{m.file}",
                "bound_seconds": m.bound_seconds,
                "as_of": as_of,
                "staleness_seconds": staleness,
                "over_bound": staleness > m.bound_seconds,
                "queue": queue.get(m.clock) if m.clock else None,
            }
        )
    fold_state = dict(zip(("as_of", "folded_at", "duration_ms"), fold or (None, None, None), strict=True))
    return JSONBytes({"read_models": models, "fold": fold_state})
