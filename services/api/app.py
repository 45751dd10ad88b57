"""The FastAPI application: pools and cache in the lifespan, middleware, errors, and the routes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from denorm.auth import AuthError
from denorm.config import Settings, get_settings
from denorm.logs import get_logger
from denorm.sql import query
from services.api import cpuslice, errors
from services.api.answercache import AnswerCache
from services.api.breaker import Breaker
from services.api.db import pipelined_queries
from services.api.deps import Services
from services.api.fastpath import FastReads, FastStats, reads_of
from services.api.front import Front
from services.api.gcwatch import GcPauses
from services.api.looplag import LoopLag
from services.api.models import Health, Readiness
from services.api.pools import open_pipeline, open_pool
from services.api.ports import Ports
from services.api.ratelimit import RateLimits
from services.api.redis_client import open_redis
from services.api.replica import ReplicaReads
from services.api.responses import JSONBytes
from services.api.routes import pages, projects, reads, social
from services.api.tokens import TokenVerifier
from services.api.usercache import UserCache

log = get_logger("denorm.api")
# pages last: its /api/users/{username} must not shadow /api/users/dashboard.
ROUTERS = (projects.router, reads.router, social.router, pages.router)
BREAKER_STATES = ("closed", "half_open", "open")


class CacheCollector(Collector):
    """Cache hits, misses, errors and the breaker's state, read from the live cache at scrape time."""

    def __init__(self, app: FastAPI, fast: FastStats) -> None:
        self.app = app
        self.fast = fast

    def collect(self) -> Iterator[Any]:
        svc: Services | None = getattr(self.app.state, "services", None)
        if svc is None:
            return
        stats, search, pipe = svc.cache.stats, svc.search_cache.stats, svc.reads.stats if svc.reads else None
        for name, value, doc in (
            ("denorm_api_cache_hits", stats.hits, "Feed pages answered from Redis"),
            ("denorm_api_cache_misses", stats.misses, "Feed pages whose user set was not in Redis"),
            ("denorm_api_cache_errors", stats.errors, "Redis calls that failed or timed out"),
            ("denorm_api_search_cache_hits", search.hits, "Searches answered from the answer cache"),
            ("denorm_api_search_cache_misses", search.misses, "Searches computed in Postgres"),
            ("denorm_api_search_cache_coalesced", search.coalesced, "Searches that waited for an identical one"),
            ("denorm_api_pipelined_reads", pipe.reads if pipe else 0, "Short reads sent through the read pipeline"),
            ("denorm_api_pipelined_writes", pipe.writes if pipe else 0,
             "Socket writes that carried them (reads per write: batching)"),
            ("denorm_api_pipeline_reconnects", pipe.reconnects if pipe else 0,
             "Pipeline connections made again after a failure"),
        ):  # fmt: skip
            counter = CounterMetricFamily(name, doc)
            counter.add_metric([], value)
            yield counter
        state = GaugeMetricFamily(
            "denorm_api_redis_breaker_state", "1 for the breaker's current state", labels=["state"]
        )
        for s in BREAKER_STATES:
            state.add_metric([s], 1.0 if svc.cache.breaker.state == s else 0.0)
        yield state
        if svc.replica is not None:
            served = CounterMetricFamily(
                "denorm_api_reads_served", "Short reads by where they ran (a replica, or the primary)", labels=["on"]
            )
            for on, n in svc.replica.served.items():
                served.add_metric([on], n)
            yield served
            lag = GaugeMetricFamily("denorm_api_replica_lag_seconds", "How far the replica's replay is behind")
            lag.add_metric([], svc.replica.lag_s)
            yield lag
        lanes = GaugeMetricFamily("denorm_api_pipeline_lanes_up", "Pipeline connections up")
        lanes.add_metric([], svc.reads.up if svc.reads else 0)
        yield lanes
        fast = CounterMetricFamily(
            "denorm_api_read_requests",
            "Hot requests (the reads, the upvote) by the path that answered them",
            labels=["path"],
        )
        fast.add_metric(["direct"], self.fast.served)
        fast.add_metric(["fastapi"], self.fast.passed)
        yield fast
        limited = CounterMetricFamily("denorm_api_rate_limited", "Requests refused with 429, by limit", labels=["kind"])
        for kind, n in svc.limits.stats.limited.items():
            limited.add_metric([kind], n)
        yield limited
        local = CounterMetricFamily(
            "denorm_api_rate_limit_local_checks", "Rate-limit checks counted per process because Redis did not answer"
        )
        local.add_metric([], svc.limits.stats.local)
        yield local


class Api(FastAPI):
    """FastAPI with the front door (services/api/front.py) and the direct read path outermost, outside
    Starlette's and FastAPI's own middleware, which only the requests FastAPI answers pass through."""

    front: Callable[[ASGIApp], ASGIApp] | None = None

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        return self.front(stack) if self.front is not None else stack


class Layers:
    """ASGI middleware made of the layers a function wraps around an app: the front door as an
    ordinary middleware (API_WITHOUT=front), for measurement against `Api`'s placement."""

    def __init__(self, app: ASGIApp, layers: Callable[[ASGIApp], ASGIApp]) -> None:
        self.stack = layers(app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.stack(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.check_production_safety()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.api_cpu_slice_us:
            try:
                log.info(
                    "cpu slice", asked_us=settings.api_cpu_slice_us, has_us=cpuslice.request(settings.api_cpu_slice_us)
                )
            except OSError as exc:  # a seccomp profile that refuses sched_setattr: serve with the default
                log.warning("cpu slice refused", asked_us=settings.api_cpu_slice_us, error=str(exc))
        wait, without = settings.db_pool_timeout_ms / 1000, settings.without
        write_pool = await open_pool(
            settings.database_url, "api", settings.db_pool_min_size, settings.db_pool_max_size, wait,
            gated="gate" not in without,
        )  # fmt: skip
        read_pool = await open_pool(
            settings.read_url,
            "api-read",
            min(settings.db_pool_min_size, settings.db_read_pool_max_size),
            settings.db_read_pool_max_size,
            wait,
            gated="gate" not in without,
        )
        reads = None
        if "pipeline" not in without:
            reads = await open_pipeline(
                settings.read_url, "api-pipe", pipelined_queries(), settings.api_read_lanes,
                settings.api_read_timeout_ms,
            )  # fmt: skip
        client = open_redis(settings.redis_url, settings.redis_timeout_ms / 1000)
        breaker = Breaker(settings.redis_breaker_failures, settings.redis_breaker_cooldown_ms / 1000)
        cache = UserCache(client, settings.redis_key_prefix, settings.redis_set_ttl_seconds, breaker,
                          batching="batcher" not in without)  # fmt: skip
        search_cache = AnswerCache(settings.api_search_cache_seconds, settings.api_search_cache_entries,
                                   coalescing="coalescing" not in without,
                                   refresh_ahead="refresh-ahead" not in without)  # fmt: skip
        tokens = TokenVerifier(settings.jwt_secret, test_secret=settings.jwt_test_secret,
                               max_entries=0 if "token-cache" in without else 10_000)  # fmt: skip
        limits = RateLimits(settings, client, breaker)
        replica = None
        if settings.database_read_url:
            if reads is None:
                raise RuntimeError("DATABASE_READ_URL needs the read pipeline: take pipeline out of API_WITHOUT")
            replica = ReplicaReads(
                reads, settings.database_read_max_lag_ms / 1000, settings.api_read_your_writes_ms,
                client, settings.redis_key_prefix, breaker,
            )  # fmt: skip
            replica.start()
        app.state.services = Services(
            settings, write_pool, read_pool, reads, cache, search_cache, tokens, limits, replica, upvote_phases
        )
        gen0, gen1, gen2 = (int(v) for v in settings.api_gc_thresholds.split(","))
        gc_pauses.install((gen0, gen1, gen2))
        loop_lag.start()
        try:
            yield
        finally:
            await app.state.services.background.wait()  # upvotes' lock releases, before the pools close
            await loop_lag.stop()
            gc_pauses.uninstall()
            if replica is not None:
                await replica.stop()
            await client.aclose()
            if reads is not None:
                await reads.close()
            await read_pool.close()
            await write_pool.close()

    app = Api(
        title="denorm read API",
        version="1.0",
        description="Fast read paths for a social product, served from read models Postgres keeps right.",
        default_response_class=JSONBytes,
        lifespan=lifespan,
        # Always on the admin port; on the public one where settings.docs_public says (ports.py).
        docs_url="/docs",
        redoc_url="/redoc",
        openapi_url="/openapi.json",
    )
    errors.install(app)
    registry = CollectorRegistry()
    histogram = Histogram(
        "denorm_api_request_duration_seconds",
        "Request latency by route",
        ["method", "route", "status"],
        registry=registry,
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    )
    upvote_phases = Histogram(
        "denorm_api_upvote_phase_seconds",
        "An upvote's server time by phase: rate_limit (its round trip to Redis), front (body, token, "
        "routing), connection (pool wait), "
        "change (with its commit and the count after it), write_through",
        ["phase"],
        registry=registry,
        # Fine below 5 ms: the phases share the gate's 5 ms, and a median read off a 1-2.5 ms
        # bucket could be anywhere in it.
        buckets=tuple(ms / 1000 for ms in (0.25, 0.5, 0.75, 1, 1.5, 2, 2.5, 3, 4, 5, 7.5, 10, 25, 50, 100, 250, 1000)),
    )
    fast = FastStats()
    registry.register(CacheCollector(app, fast))
    gc_pauses = GcPauses(registry)
    loop_lag = LoopLag(registry)

    # Read from the routers themselves: FastAPI includes them in the app lazily.
    direct_reads = reads_of(route for router in ROUTERS for route in router.routes)

    def front(stack: ASGIApp) -> ASGIApp:
        if "fastpath" not in settings.without:
            stack = FastReads(stack, direct_reads, services=lambda: getattr(app.state, "services", None), stats=fast)
        # outside both: sees every request
        stack = Front(stack, histogram=histogram, access_log=settings.api_access_log,
                      body_timeout_s=settings.api_body_timeout_ms / 1000, limits=rate_limits,
                      wrote=remember_write)  # fmt: skip
        return Ports(stack, settings.api_admin_port, settings.docs_public)

    async def remember_write(token: str | None) -> None:
        """A write answered 2xx: with a replica, the caller's reads follow it there (replica.py)."""
        svc: Services | None = getattr(app.state, "services", None)
        if svc is None or svc.replica is None or token is None:
            return
        try:
            user = svc.tokens(token)
        except AuthError:
            return
        await svc.replica.remember_write(svc.write_pool, user)

    def rate_limits() -> RateLimits | None:
        svc: Services | None = getattr(app.state, "services", None)
        return svc.limits if svc is not None else None

    if "front" in settings.without:  # the same layers, inside Starlette's and FastAPI's middleware
        app.add_middleware(Layers, layers=front)
    else:
        app.front = front

    @app.get("/healthz", tags=["operations"], response_model=Health, response_class=JSONBytes)
    async def healthz() -> JSONBytes:
        """Liveness: the process answers."""
        return JSONBytes({"status": "ok"})

    @app.get(
        "/readyz",
        tags=["operations"],
        response_model=Readiness,
        response_class=JSONBytes,
        responses={503: {"model": Readiness, "description": "Postgres unreachable or not migrated"}},
    )
    async def readyz() -> JSONBytes:
        """Readiness: Postgres reachable and migrated; Redis reported, never fatal."""
        svc: Services = app.state.services
        body: dict[str, Any] = {"postgres": "ok", "schema": "ok", "redis": "ok"}
        status = 200
        try:
            async with svc.write_pool.connection(timeout=2.0) as conn:
                row = await (await conn.execute(query("schema_ready"))).fetchone()
                if row is None or not row[0]:
                    body["schema"] = "not migrated"
                    status = 503
        except Exception as exc:  # any failure to reach Postgres means not ready
            body["postgres"] = f"unreachable: {type(exc).__name__}"
            body["schema"] = "unknown"
            status = 503
        if svc.reads is not None:
            body["read_pipeline"] = f"{svc.reads.up}/{len(svc.reads.lanes)} up"
            if svc.reads.up == 0:  # the short reads cannot be served
                status = 503
        try:
            await svc.cache.client.ping()
        except Exception as exc:  # Redis is optional: report it, stay ready
            body["redis"] = f"degraded: {type(exc).__name__}"
        body["redis_breaker"] = svc.cache.breaker.state
        if svc.replica is not None:  # reported, never fatal: a lagging replica is bypassed
            lag = svc.replica.lag_s
            body["replica"] = ("ok" if svc.replica.usable else "bypassed") + (
                f", {lag * 1000:.0f} ms behind" if lag != float("inf") else ", not answering"
            )
        body["status"] = "ready" if status == 200 else "not ready"
        return JSONBytes(body, status_code=status)

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        """Prometheus metrics, in the text exposition format."""
        return PlainTextResponse(generate_latest(registry), media_type="text/plain; version=0.0.4; charset=utf-8")

    for router in ROUTERS:
        app.include_router(router)
    return app
