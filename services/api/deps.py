"""Request dependencies: the pools, the user cache, the settings and the caller's identity."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from prometheus_client import Histogram

from denorm.auth import AuthError
from denorm.config import Settings
from services.api.answercache import AnswerCache
from services.api.background import Background
from services.api.errors import ApiError
from services.api.pgpipe import PipelinedReads
from services.api.pools import Pool
from services.api.ratelimit import RateLimits
from services.api.replica import ReplicaReads
from services.api.tokens import TokenVerifier, bearer
from services.api.usercache import UserCache


@dataclass
class Services:
    settings: Settings
    write_pool: Pool
    read_pool: Pool
    reads: PipelinedReads | None  # the short reads, pipelined on connections of their own (read_url)
    cache: UserCache
    search_cache: AnswerCache
    tokens: TokenVerifier
    limits: RateLimits
    replica: ReplicaReads | None = None  # with DATABASE_READ_URL: where each read goes
    upvote_phases: Histogram | None = None  # services/api/upvotes.py Laps
    background: Background = field(default_factory=Background)  # work left to finish after an answer


async def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


async def optional_user(request: Request, svc: Annotated[Services, Depends(services)]) -> int | None:
    try:
        token = bearer(request.headers.get("authorization"))
    except ValueError as exc:
        raise ApiError(401, "unauthorized", str(exc)) from exc
    if token is None:
        return None
    try:
        return svc.tokens(token)
    except AuthError as exc:
        raise ApiError(401, "unauthorized", f"invalid token: {exc}") from exc


async def current_user(user: Annotated[int | None, Depends(optional_user)]) -> int:
    if user is None:
        raise ApiError(401, "unauthorized", "this route needs a bearer token")
    return user


ServicesDep = Annotated[Services, Depends(services)]
UserDep = Annotated[int, Depends(current_user)]
OptionalUserDep = Annotated[int | None, Depends(optional_user)]
