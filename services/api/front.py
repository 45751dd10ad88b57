"""The API's front door: the outermost ASGI layer, which sees every request once.

It limits the body size, times the request into the latency histogram (labelled by route
template), and writes one JSON log line. It sits outside Starlette's and FastAPI's own middleware
(see `Api` in services/api/app.py), so that the hot reads the direct path serves pass through
nothing else: each middleware layer costs a coroutine frame and a wrapped `send` per request.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from denorm.logs import get_logger
from services.api import errors

log = get_logger("denorm.api")
MAX_BODY_BYTES = 64 * 1024
_TOO_LARGE = f"bodies are limited to {MAX_BODY_BYTES} bytes"


class Front:
    def __init__(self, app: ASGIApp, histogram: Histogram, access_log: bool) -> None:
        self.app = app
        self.histogram = histogram
        self.access_log = access_log
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
        status = 500
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            await errors.error_response(413, "payload_too_large", _TOO_LARGE)(scope, receive, send)
            status = 413
        else:
            seen = 0

            async def limited_receive() -> Message:
                nonlocal seen
                message = await receive()
                seen += len(message.get("body", b""))
                if seen > MAX_BODY_BYTES:
                    raise errors.ApiError(413, "payload_too_large", _TOO_LARGE)
                return message

            async def observed_send(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                await send(message)

            await self.app(scope, limited_receive, observed_send)
        route = getattr(scope.get("route"), "path", "unmatched")
        elapsed = time.perf_counter() - started
        self._observe(scope["method"], route, status, elapsed)
        if self.access_log:
            log.info("request", method=scope["method"], route=route, status=status, ms=round(elapsed * 1000, 2))
