"""Two listening ports, one app: the public one for clients, the admin one for operators.

The metrics, the refresh status (with the last error text of each view) and the OpenAPI document
(every route, operators' included) answer on the admin port only, which the NetworkPolicy opens to
the monitoring namespace alone; the public port answers 404 for them, as for any unknown path.
The admin port answers only those, and the probes. Which port a request came in on is the ASGI
scope's `server` (the listening socket's address), so one process, one event loop and one set of
pools and metrics serve both: a second app would be a second set of connections to Postgres.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from services.api import errors

PROBES = frozenset({"/healthz", "/readyz"})
DOCS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
OPERATORS_PREFIXES = ("/api/admin/",)
OPERATORS = frozenset({"/metrics"}) | DOCS


def for_operators(path: str) -> bool:
    return path in OPERATORS or path.startswith(OPERATORS_PREFIXES)


class Ports:
    """Answers 404 for an operators' path on the public port and for a client's path on the admin
    port. The docs are also public where docs_public says so (development and test)."""

    def __init__(self, app: ASGIApp, admin_port: int, docs_public: bool) -> None:
        self.app = app
        self.admin_port = admin_port
        self.docs_public = docs_public

    def allowed(self, path: str, port: int | None) -> bool:
        if path in PROBES:
            return True
        if port == self.admin_port:
            return for_operators(path)
        return not for_operators(path) or (self.docs_public and path in DOCS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            server = scope.get("server")
            if not self.allowed(scope["path"], server[1] if server else None):
                await errors.error_response(404, "not_found", "Not Found")(scope, receive, send)
                return
        await self.app(scope, receive, send)
