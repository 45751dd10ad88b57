"""A direct path for the hot GET reads and the upvote: no dependency solving, no per-parameter
model validation.

FastAPI stays the authority. Every route is declared there (the OpenAPI document, validation, the
error shapes), and this path reads each direct route's parameters, their limits and who may call
it back from that declaration (`reads_of`). It takes a request only when each parameter it
carries is plainly valid. Anything else (a missing or malformed value, a bad token, an unknown
sort) falls through to FastAPI, which answers exactly as it would without this path. Both paths
call the same body builder (`direct`), and tests/test_api_fastpath.py checks that they give the
same answers.

Why: on a read route FastAPI's dependency solving and parameter validation cost about as much
CPU as the whole database round trip (measured in docs/api.md); on the upvote, whose target is 5 ms
at the server, a quarter of its time (docs/performance.md). A write may take this path only when
it takes no body: its parameters are in its path.
"""

from __future__ import annotations

import re
import types
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal, TypeVar, Union, get_args, get_origin
from urllib.parse import parse_qsl

import annotated_types
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic.fields import FieldInfo
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from denorm.auth import AuthError
from denorm.ids import MAX_ID, parse_id
from denorm.logs import get_logger
from services.api.deps import Services, current_user, optional_user
from services.api.errors import ApiError, error_response
from services.api.tokens import bearer

log = get_logger("denorm.api")
Body = Callable[..., Awaitable[bytes]]
E = TypeVar("E", bound=Callable[..., Any])
_BODY = "direct_body"


def direct(body: Body) -> Callable[[E], E]:
    """Mark a route (a GET, or a write without a body) that the direct path may answer with
    `body(svc, **parameters)`: the same body builder the route's own endpoint awaits."""

    def mark(endpoint: E) -> E:
        setattr(endpoint, _BODY, body)
        return endpoint

    return mark


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
        value = 0 if raw == "0" else parse_id(raw)
        if value is None or not self.lo <= value <= self.hi:
            raise _Invalid
        return value


@dataclass(frozen=True)
class Choice:
    values: dict[str, Any]  # the raw value, and what the body gets for it
    default: Any

    def parse(self, raw: str | None) -> Any:
        if raw is None:
            return self.default
        if raw not in self.values:
            raise _Invalid
        return self.values[raw]


@dataclass(frozen=True)
class Text:
    min_length: int
    max_length: int
    required: bool
    pattern: re.Pattern[str] | None = None

    def parse(self, raw: str | None) -> str | None:
        if raw is None:
            if self.required:
                raise _Invalid
            return None
        if not self.min_length <= len(raw) <= self.max_length or "\x00" in raw:
            raise _Invalid
        if self.pattern is not None and not self.pattern.search(raw):
            raise _Invalid
        return raw


Param = Int | Choice | Text


@dataclass(frozen=True)
class Read:
    """One direct route: its path template (the metrics label), parameters, who may call, body, method."""

    path: str
    params: dict[str, Param]
    body: Body
    user: str = "none"  # none | optional | required
    regex: re.Pattern[str] | None = None  # for a template with path parameters
    method: str = "GET"


def _bounds(info: FieldInfo) -> tuple[int, int]:
    lo, hi = -MAX_ID - 1, MAX_ID
    for m in info.metadata:
        if isinstance(m, annotated_types.Ge):
            lo = int(m.ge)  # type: ignore[call-overload]
        elif isinstance(m, annotated_types.Gt):
            lo = int(m.gt) + 1  # type: ignore[call-overload]
        elif isinstance(m, annotated_types.Le):
            hi = int(m.le)  # type: ignore[call-overload]
        elif isinstance(m, annotated_types.Lt):
            hi = int(m.lt) - 1  # type: ignore[call-overload]
    return lo, hi


def _param(name: str, info: FieldInfo) -> Param:
    """This path's parser for a parameter, from its declaration."""
    annotation = info.annotation
    if get_origin(annotation) in (Union, types.UnionType):
        (annotation,) = [a for a in get_args(annotation) if a is not type(None)]
    default = None if info.is_required() else info.default
    if annotation is int:
        return Int(*_bounds(info), default)
    if get_origin(annotation) is Literal:
        return Choice({str(v): v for v in get_args(annotation)}, default)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return Choice({str(m.value): m for m in annotation}, default)
    if annotation is str:
        lengths = {type(m): m for m in info.metadata}
        pattern = next((getattr(m, "pattern", None) for m in info.metadata if getattr(m, "pattern", None)), None)
        return Text(
            getattr(lengths.get(annotated_types.MinLen), "min_length", 0),
            getattr(lengths.get(annotated_types.MaxLen), "max_length", 2**31),
            info.is_required(),
            re.compile(pattern) if pattern else None,
        )
    raise TypeError(f"the direct path cannot parse parameter {name!r} ({annotation!r})")


def _calls(dependant: Dependant) -> set[Any]:
    found = set()
    for dependency in dependant.dependencies:
        found.add(dependency.call)
        found |= _calls(dependency)
    return found


def reads_of(routes: Iterable[BaseRoute]) -> list[Read]:
    """The direct routes: each route marked with `direct`, as FastAPI declares it."""
    found = []
    for route in routes:
        body = getattr(getattr(route, "endpoint", None), _BODY, None)
        if not isinstance(route, APIRoute) or body is None:
            continue
        if route.dependant.body_params:
            raise TypeError(f"the direct path cannot take {route.path}: it has a body")
        fields = route.dependant.query_params + route.dependant.path_params
        calls = _calls(route.dependant)
        user = "required" if current_user in calls else "optional" if optional_user in calls else "none"
        params = {f.name: _param(f.name, f.field_info) for f in fields}
        regex = route.path_regex if route.dependant.path_params else None
        found += [Read(route.path, params, body, user, regex, method) for method in sorted(route.methods or ())]
    return found


@dataclass
class FastStats:
    served: int = 0  # read requests answered here
    passed: int = 0  # read requests left to FastAPI (a value this path does not take)


class FastReads:
    """ASGI middleware in front of the FastAPI router; see the module docstring."""

    def __init__(self, app: ASGIApp, reads: list[Read], services: Callable[[], Any], stats: FastStats) -> None:
        self.app = app
        self.exact = {(r.method, r.path): r for r in reads if r.regex is None}
        self.templated = [r for r in reads if r.regex is not None]
        self.methods = frozenset(r.method for r in reads)
        self.services = services
        self.stats = stats

    def _match(self, method: str, path: str) -> tuple[Read | None, dict[str, str]]:
        read = self.exact.get((method, path))
        if read is not None:
            return read, {}
        for read in self.templated:
            assert read.regex is not None
            match = read.regex.match(path) if read.method == method else None
            if match:
                return read, match.groupdict()
        return None, {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in self.methods:
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        read, raw_path = self._match(scope["method"], path)
        svc: Services | None = self.services()
        if read is None or svc is None:
            await self.app(scope, receive, send)
            return
        try:
            pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
            query = dict(pairs)
            if len(query) != len(pairs):  # a repeated parameter: leave its meaning to FastAPI
                raise _Invalid
            values = {**query, **raw_path}
            args = {name: param.parse(values.get(name)) for name, param in read.params.items()}
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
            await exc.response()(scope, receive, send)
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
        try:
            token = bearer(None if header is None else header.decode("latin-1"))
            return None if token is None else svc.tokens(token)
        except (ValueError, AuthError) as exc:
            raise _Invalid from exc
