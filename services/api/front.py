"""The API's front door: the outermost ASGI layer, which sees every request once.

It reads a request's body whole before the app sees it, within a size limit (413, with or
without Content-Length) and a time limit (408: a stalled upload does not hold a connection and a
task for as long as the client likes), times the request into the latency histogram (labelled by
route template), and writes one JSON log line. It sits outside Starlette's and FastAPI's own middleware
(see `Api` in services/api/app.py), so that the hot reads the direct path serves pass through
nothing else: each middleware layer costs a coroutine frame and a wrapped `send` per request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from prometheus_client import Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from denorm.logs import get_logger
from services.api import errors
from services.api.ratelimit import CALLER, RateLimits
from services.api.tokens import bearer

log = get_logger("denorm.api")
MAX_BODY_BYTES = 64 * 1024
_TOO_LARGE = f"bodies are limited to {MAX_BODY_BYTES} bytes"
_NO_BODY = frozenset({"GET", "HEAD", "OPTIONS"})  # the reads: their body, if any, is never read
# When the front door saw the request (time.perf_counter()): a handler's own timings can then say
# how much went before it (services/api/upvotes.py Laps).
STARTED: ContextVar[float | None] = ContextVar("request_started", default=None)
# When a write's rate limit had been counted (its round trip to Redis): the upvote's first phase.
LIMIT_COUNTED: ContextVar[float | None] = ContextVar("limit_counted", default=None)


class _TooLarge(Exception):
    pass


def _bearer(scope: Scope) -> str | None:
    """The request's token, for the rate limits' identity: None without one or with a malformed
    header (the route answers that one 401)."""
    header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
    try:
        return bearer(None if header is None else header.decode("latin-1"))
    except ValueError:
        return None


async def read_body(receive: Receive) -> tuple[bytes, bool]:
    """The request's body, whole, and whether the client went away meanwhile; _TooLarge past the limit."""
    chunks: list[bytes] = []
    seen = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"", True
        chunk = message.get("body", b"")
        seen += len(chunk)
        if seen > MAX_BODY_BYTES:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), False


class Front:
    def __init__(
        self,
        app: ASGIApp,
        histogram: Histogram,
        access_log: bool,
        body_timeout_s: float = 10.0,
        limits: Callable[[], RateLimits | None] = lambda: None,
        wrote: Callable[[str | None], Awaitable[None]] | None = None,
    ) -> None:
        self.app = app
        self.histogram = histogram
        self.access_log = access_log
        self.body_timeout_s = body_timeout_s
        self.limits = limits
        self.wrote = wrote
        # Labelled children, by (method, route, status): Histogram.labels() validates and locks on
        # every call, which showed up in profiles of the hot reads. Routes are templates, so the
        # number of children stays bounded.
        self._children: dict[tuple[str, str, int], Any] = {}

    def _observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.histogram.labels(method, route, str(status))
        child.observe(seconds)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        STARTED.set(started)
        status = 500
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        client = scope.get("client")
        CALLER.set((_bearer(scope), client[0] if client else None))
        limited = None
        if scope["method"] not in _NO_BODY and (limits := self.limits()) is not None:
            try:
                await limits.check("writes")
            except errors.ApiError as exc:
                limited = exc
            LIMIT_COUNTED.set(time.perf_counter())
        if limited is not None:
            await limited.response()(scope, receive, send)
            status = limited.status
        elif length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            await errors.error_response(413, "payload_too_large", _TOO_LARGE)(scope, receive, send)
            status = 413
        elif scope["method"] in _NO_BODY:
            await self.app(scope, receive, observed_send)
        else:
            try:
                body, gone = await asyncio.wait_for(read_body(receive), self.body_timeout_s)
            except _TooLarge:
                body, gone, status = b"", False, 413
            except TimeoutError:
                body, gone, status = b"", False, 408
            if status in (408, 413):
                message = _TOO_LARGE if status == 413 else f"the body did not arrive within {self.body_timeout_s:g} s"
                code = "payload_too_large" if status == 413 else "request_timeout"
                await errors.error_response(status, code, message)(scope, receive, send)
            elif gone:
                status = 499  # the client closed the connection: nothing to answer
            else:
                replayed = False

                async def replay() -> Message:
                    nonlocal replayed
                    if not replayed:
                        replayed = True
                        return {"type": "http.request", "body": body, "more_body": False}
                    return await receive()

                async def written_send(message: Message) -> None:
                    # A write that succeeded is remembered before its answer leaves: the caller's
                    # next read cannot overtake it (services/api/replica.py).
                    if message["type"] == "http.response.start" and message["status"] < 300 and self.wrote:
                        await self.wrote(CALLER.get()[0])
                    await observed_send(message)

                await self.app(scope, replay, written_send)
        route = getattr(scope.get("route"), "path", "unmatched")
        elapsed = time.perf_counter() - started
        self._observe(scope["method"], route, status, elapsed)
        if self.access_log:
            log.info("request", method=scope["method"], route=route, status=status, ms=round(elapsed * 1000, 2))
