"""Idempotency keys for the writes (the IETF draft "The Idempotency-Key HTTP Header Field"): a retry
with the key of a write that committed gets that write's answer again, and changes nothing.

With an `Idempotency-Key` header, the key is claimed, the write made and its answer (status and
body) recorded in one transaction (db/schema/idempotency.sql). A retry with the same key and the
same request (method, path and body) is answered from the record, marked `Idempotent-Replayed:
true`; with another request it is refused (422). A retry that arrives while the first is still
running waits for it. A write that fails (a 4xx, a 503) records nothing, so its retry runs afresh.
Without the header a write runs as before, in one statement on a pooled connection.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Header, Request
from psycopg import AsyncConnection
from pydantic import BaseModel

from denorm.sql import query
from services.api.db import connection
from services.api.deps import Services
from services.api.errors import ApiError
from services.api.responses import JSONBytes, RawJSON

HEADER = "Idempotency-Key"
KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"  # printable ASCII, as a header carries it

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias=HEADER,
        pattern=KEY_PATTERN,
        description="retry this write safely: the same key and request get the first answer back",
    ),
]

Write = Callable[[AsyncConnection[Any]], Awaitable[JSONBytes]]


def fingerprint(request: Request, body: BaseModel | None) -> bytes:
    """What makes two requests the same: the method, the path and the body as parsed (so a retry
    that spaces its JSON otherwise is still the same request)."""
    parts = [
        request.method.encode(),
        request.url.path.encode(),
        b"" if body is None else body.model_dump_json().encode(),
    ]
    return hashlib.sha256(b"\0".join(parts)).digest()


async def write(
    svc: Services, request: Request, user: int, key: str | None, body: BaseModel | None, run: Write
) -> JSONBytes | RawJSON:
    """Run `run` on a pooled connection: as it is without a key; with one, once per key."""
    async with connection(svc.write_pool) as conn:
        if key is None:
            return await run(conn)
        params = {"user": user, "key": key, "ttl": svc.settings.api_idempotency_ttl_seconds}
        mark = fingerprint(request, body)
        async with conn.transaction():
            if (
                await (await conn.execute(query("idempotency_claim"), {**params, "fingerprint": mark})).fetchone()
                is None
            ):
                return await _recorded(conn, params, mark)
            answer = await run(conn)
            await conn.execute(query("idempotency_record"), {**params, "status": answer.status_code,
                                                              "body": bytes(answer.body)})  # fmt: skip
        return answer


async def _recorded(conn: AsyncConnection[Any], params: dict[str, Any], fingerprint: bytes) -> RawJSON:
    row = await (await conn.execute(query("idempotency_answer"), params)).fetchone()
    assert row is not None  # the claim found it, and it is never deleted before it expires
    if bytes(row[0]) != fingerprint:
        raise ApiError(422, "invalid_input", f"this {HEADER} was used for another request")
    return RawJSON(bytes(row[2]), status_code=int(row[1]), headers={"Idempotent-Replayed": "true"})
