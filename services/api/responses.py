"""JSON responses rendered by orjson: faster than the stdlib encoder, and it knows datetimes."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse, Response


def dumps(content: Any) -> bytes:
    return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)


class JSONBytes(JSONResponse):
    """A JSONResponse (so OpenAPI documents the route's model) rendered by orjson."""

    def render(self, content: Any) -> bytes:
        return dumps(content)


class RawJSON(Response):
    """A body that is JSON already (the read routes build theirs once, for both request paths)."""

    media_type = "application/json"
