"""The ordinary upvote: the floor denorm's upvote is measured against (bench/upvote_floor.py).

What a plain service does for `PUT /api/projects/{id}/upvote`: verify the token (PyJWT), run one
durable statement that sets the upvote and reads the exact count, answer. FastAPI, psycopg_pool,
uvicorn with uvloop and httptools, one process; no Redis, no rate limit, no read model.

    python -m bench.ordinary_upvote --database-url URL [--port 8100]
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import jwt
import uvicorn
from fastapi import FastAPI, Header, HTTPException, Path
from fastapi.responses import Response
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from denorm.config import DEV_JWT_SECRET

# One statement: the upvote set (if it was not) and the project's count after it, in one durable
# commit (the server's synchronous_commit). The count reads the rows the statement's snapshot saw,
# plus the one it added.
UPVOTE = b"""
WITH added AS (
    INSERT INTO project_upvotes (user_id, project_id) VALUES (%(u)s, %(p)s) ON CONFLICT DO NOTHING RETURNING 1
)
SELECT (SELECT count(*) FROM project_upvotes WHERE project_id = %(p)s) + (SELECT count(*) FROM added),
       EXISTS (SELECT 1 FROM added)
"""


def create_app(url: str, secret: str = DEV_JWT_SECRET) -> FastAPI:
    pool: AsyncConnectionPool[AsyncConnection[Any]] = AsyncConnectionPool(
        url, min_size=4, max_size=10, open=False, kwargs={"autocommit": True}
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await pool.open()
        yield
        await pool.close()

    app = FastAPI(lifespan=lifespan)

    @app.put("/api/projects/{project_id}/upvote")
    async def upvote(project_id: Annotated[int, Path(gt=0)], authorization: Annotated[str, Header()] = "") -> Response:
        scheme, _, token = authorization.partition(" ")
        try:
            user = int(jwt.decode(token, secret, algorithms=["HS256"])["sub"]) if scheme.lower() == "bearer" else 0
        except (jwt.PyJWTError, KeyError, ValueError):
            user = 0
        if user <= 0:
            raise HTTPException(401, "a valid bearer token is needed")
        async with pool.connection() as conn:
            row = await (await conn.execute(UPVOTE, {"u": user, "p": project_id})).fetchone()
        assert row is not None
        return Response(f'{{"upvoted":true,"upvote_count":{row[0]}}}', media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args(argv)
    uvicorn.run(create_app(args.database_url), host="127.0.0.1", port=args.port, loop="uvloop", http="httptools",
                log_level="warning", access_log=False)  # fmt: skip


if __name__ == "__main__":
    main()
