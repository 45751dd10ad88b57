"""The FastAPI application: lifespan (pools), health and readiness; routes are added per resource."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from denorm.cache import open_redis
from denorm.config import Settings, get_settings
from denorm.pg import open_pool
from services.api.responses import JSONBytes


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.check_production_safety()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pool = await open_pool(
            settings.database_url, "api", settings.db_pool_min_size, settings.db_pool_max_size
        )
        app.state.redis = open_redis(settings.redis_url)
        try:
            yield
        finally:
            await app.state.redis.aclose()
            await app.state.pool.close()

    app = FastAPI(title="denorm read API", default_response_class=JSONBytes, lifespan=lifespan)

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"])
    async def readyz() -> JSONBytes:
        """Readiness: Postgres reachable and migrated; Redis reported, never fatal."""
        body: dict[str, Any] = {"postgres": "ok", "schema": "ok", "redis": "ok"}
        status = 200
        try:
            async with app.state.pool.connection(timeout=2.0) as conn:
                row = await (await conn.execute("SELECT to_regclass('schema_migrations')")).fetchone()
                if row is None or row[0] is None:
                    body["schema"] = "not migrated"
                    status = 503
        except Exception as exc:  # any failure to reach Postgres means not ready
            body["postgres"] = f"unreachable: {type(exc).__name__}"
            body["schema"] = "unknown"
            status = 503
        try:
            await app.state.redis.ping()
        except Exception as exc:  # Redis is optional: report it, stay ready
            body["redis"] = f"degraded: {type(exc).__name__}"
        body["status"] = "ready" if status == 200 else "not ready"
        return JSONBytes(body, status_code=status)

    return app
