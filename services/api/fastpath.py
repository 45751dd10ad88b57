"""A direct path for the hot GET reads: no dependency solving, no per-parameter model validation.

FastAPI stays the authority. Every route is declared there (the OpenAPI document, validation, the
error shapes), and this path takes a request only when each parameter it carries is plainly valid.
Anything else (a missing or malformed value, a bad token, an unknown sort) falls through to
FastAPI, which answers exactly as it would without this path. Both paths call the same body
builders, and tests/test_api_fastpath.py checks that they give the same answers.

Why: on a read route FastAPI's dependency solving and parameter validation cost about as much
CPU as the whole database round trip (measured in docs/api.md).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from denorm.auth import AuthError
from denorm.logs import get_logger
from services.api.deps import Services
from services.api.errors import ApiError, error_response
from services.api.routes import projects, reads, social

log = get_logger("denorm.api")
_DIGITS = re.compile(r"0|[1-9][0-9]{0,18}")


class _Invalid(Exception):
    """A value this path does not take: FastAPI will answer the request."""


@dataclass(frozen=True)
class Int:
    lo: int
    hi: int
    default: int | None  # None: the parameter is optional and absent means None

    def parse(self, raw: str | None) -> int | None:
        if raw is None:
            return self.default
        if not _DIGITS.fullmatch(raw):
            raise _Invalid
        value = int(raw)
        if not self.lo <= value <= self.hi:
            raise _Invalid
        return value


@dataclass(frozen=True)
class Choice:
    values: tuple[str, ...]
    default: str

    def parse(self, raw: str | None) -> str:
        if raw is None:
            return self.default
        if raw not in self.values:
            raise _Invalid
        return raw


@dataclass(frozen=True)
class Text:
    max_length: int
    required: bool
    pattern: re.Pattern[str] | None = None

    def parse(self, raw: str | None) -> str | None:
        if raw is None:
            if self.required:
                raise _Invalid
            return None
        if not 1 <= len(raw) <= self.max_length or "\x00" in raw:
            raise _Invalid
        if self.pattern is not None and not self.pattern.fullmatch(raw):
            raise _Invalid
        return raw


Param = Int | Choice | Text
Body = Callable[..., Awaitable[bytes]]


@dataclass(frozen=True)
class Read:
    """One read route: its path template (the metrics label), parameters, who may call, and body."""

    path: str
    params: dict[str, Param]
    body: Body
    user: str = "none"  # none | optional | required


MAX_ID = 2**63 - 1
_LIMIT = Int(1, reads.MAX_LIMIT, 20)
_SLUG = re.compile(reads.SLUG_PATTERN)

READS: dict[str, Read] = {
    r.path: r
    for r in (
        Read(
            "/api/projects",
            {
                "sort": Choice(tuple(projects.SORTS), "trending"),
                "page": Int(1, projects.MAX_PAGE, None),
                "limit": Int(1, projects.MAX_LIMIT, 20),
                "cursor": Text(200, required=False),
            },
            projects.feed_body,
            user="optional",
        ),
        Read(
            "/api/leaderboard/projects",
            {"limit": Int(1, reads.MAX_LIMIT, 50), "offset": Int(0, reads.MAX_OFFSET, 0)},
            reads.leaderboard_projects_body,
        ),
        Read(
            "/api/leaderboard/users",
            {"limit": Int(1, reads.MAX_LIMIT, 50), "offset": Int(0, reads.MAX_OFFSET, 0)},
            reads.leaderboard_users_body,
        ),
        Read("/api/users/dashboard", {}, reads.dashboard_body, user="required"),
        Read(
            "/api/chains",
            {"limit": _LIMIT, "after_members": Int(0, MAX_ID, MAX_ID), "after_id": Int(0, MAX_ID, MAX_ID)},
            reads.chains_body,
        ),
        Read(
            "/api/search",
            {
                "q": Text(reads.SEARCH_MAX, required=True),
                "type": Choice(("all", "projects", "users", "chains"), "all"),
                "limit": _LIMIT,
            },
            reads.search_body,
        ),
        Read(
            "/api/messages/conversations",
            {"limit": Int(1, 100, 50)},
            social.conversations_body,
            user="required",
        ),
    )
}
CHAIN_PAGE = Read("/api/chains/{slug}", {}, reads.chain_body)
_CHAIN_PREFIX = "/api/chains/"


@dataclass
class FastStats:
    served: int = 0  # read requests answered here
    passed: int = 0  # read requests left to FastAPI (a value this path does not take)


class FastReads:
    """ASGI middleware in front of the FastAPI router; see the module docstring."""

    def __init__(self, app: ASGIApp, services: Callable[[], Any], stats: FastStats) -> None:
        self.app = app
        self.services = services
        self.stats = stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        read = READS.get(path)
        args: dict[str, Any] = {}
        if read is None and path.startswith(_CHAIN_PREFIX):
            slug = path[len(_CHAIN_PREFIX) :]
            if len(slug) <= reads.SLUG_MAX and _SLUG.fullmatch(slug):
                read, args = CHAIN_PAGE, {"slug": slug}
        svc: Services | None = self.services()
        if read is None or svc is None:
            await self.app(scope, receive, send)
            return
        try:
            pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
            query = dict(pairs)
            if len(query) != len(pairs):  # a repeated parameter: leave its meaning to FastAPI
                raise _Invalid
            for name, param in read.params.items():
                args[name] = param.parse(query.get(name))
            if read.user != "none":
                user = self._user(scope, svc)
                if user is None and read.user == "required":
                    raise _Invalid
                args["user"] = user
        except (_Invalid, UnicodeDecodeError):
            self.stats.passed += 1
            await self.app(scope, receive, send)
            return
        self.stats.served += 1
        scope["route"] = read  # the front door labels metrics by the route's template, as FastAPI's do
        try:
            body = await read.body(svc, **args)
        except ApiError as exc:
            await error_response(exc.status, exc.code, exc.message, exc.details)(scope, receive, send)
            return
        except Exception as exc:  # this path is outside FastAPI's error handling: answer as it would
            log.error("unhandled error", path=path, error=repr(exc))
            await error_response(500, "internal", "internal error")(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _user(scope: Scope, svc: Services) -> int | None:
        """The caller, or None without a token; any token this path cannot verify goes to FastAPI."""
        header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        if header is None:
            return None
        scheme, _, token = header.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _Invalid
        try:
            return svc.tokens(token.strip())
        except AuthError as exc:
            raise _Invalid from exc
