"""Settings for every service, read once from the environment."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_JWT_SECRET = "dev-secret-change-me-0123456789abcdef"
# What API_WITHOUT may name, each with its plain alternative.
MECHANISMS = {
    "fastpath": "the hot reads through FastAPI's routing and validation (services/api/fastpath.py)",
    "front": "the front door and the direct path as ordinary middleware, inside Starlette's (app.py Api)",
    "gate": "psycopg_pool's own queue for a connection (services/api/pools.py GatedPool)",
    "pipeline": "each short read on a pooled connection of its own (services/api/pgpipe.py)",
    "batcher": "each feed's Redis check sent alone (services/api/redis_client.py Batcher)",
    "token-cache": "every token verified in full (denorm/auth.py TokenVerifier)",
    "coalescing": "concurrent identical search misses each computed (services/api/answercache.py)",
    "refresh-ahead": "a cached search recomputed only once it expired (services/api/answercache.py)",
}


class Settings(BaseSettings):
    """Configuration from the environment; the defaults suit a developer machine."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    # Unset means production: the development secret below is accepted only where ENVIRONMENT says
    # development or test outright (`make` sets development, the tests test).
    environment: str = Field(default="production", description="development, test or production")
    database_url: str = "postgresql://postgres@127.0.0.1:5432/denorm"
    # Reads may go to a replica; writes and the refresh queue always use database_url. A caller's
    # reads go to the primary until the replica has replayed their last write (services/api/replica.py).
    database_read_url: str | None = None
    database_read_max_lag_ms: int = Field(default=2000, ge=0, description="a replica further behind is bypassed")
    api_read_your_writes_ms: int = Field(
        default=10_000, ge=100, description="how long a caller's last write position is kept for their reads"
    )
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Every Redis key starts with this, so that tests and tenants can share one server.
    redis_key_prefix: str = "denorm:"
    jwt_secret: str = DEV_JWT_SECRET
    # A second signing key, for a test environment's load generator: it mints its users' tokens
    # without holding JWT_SECRET. Accepted only outside production (a production API refuses to
    # start with it set).
    jwt_test_secret: str | None = None
    log_level: str = "INFO"
    log_format: str = Field(default="json", description="json or console")
    db_pool_min_size: int = 2
    db_pool_max_size: int = 10
    # A request waits at most this long for a pooled connection, then answers 503: a dead or
    # saturated Postgres gets a quick, honest answer rather than a request that hangs.
    db_pool_timeout_ms: int = Field(default=1000, ge=1, description="wait for a pooled connection, then 503")
    # The reads that take a pooled connection (search, a chain's slug, the freshness page) have a
    # pool of their own, on the replica when one is set and else on the primary: writers stalled on
    # the WAL or on a lock then cannot take every connection and turn those reads into 503s.
    db_read_pool_max_size: int = Field(default=4, ge=1, description="the API's pooled connections for reads")

    # The API (services/api).
    redis_timeout_ms: int = Field(default=50, ge=1, description="a slower Redis counts as down")
    redis_set_ttl_seconds: int = Field(default=3600, ge=60, description="how long a user's upvote set lives")
    redis_breaker_failures: int = Field(default=3, ge=1, description="failures in a row that open the breaker")
    redis_breaker_cooldown_ms: int = Field(default=5000, ge=1, description="how long an open breaker skips Redis")
    api_access_log: bool = Field(default=True, description="one JSON log line per request")
    api_body_timeout_ms: int = Field(default=10_000, ge=1, description="a request body slower than this gets a 408")
    # The metrics, /api/admin/* and the docs answer on this port only (services/api/ports.py).
    api_admin_port: int = Field(default=9100, ge=0, le=65535, description="the operators' port of the API (0: any)")
    # The interactive docs and the OpenAPI document describe every route, operators' included: on the
    # public port too only where this says so (unset: in development and test only).
    api_docs: bool | None = Field(default=None, description="serve /docs, /redoc and /openapi.json")
    # Rate limits (services/api/ratelimit.py), in the `limits` notation ("10/second;120/minute"):
    # writes, and searches that miss the answer cache, per bearer token and per client address.
    # A member of the 5000-user load test writes about 3 times a minute; the per-address limits are
    # for one client, so a load generator running many users from one address raises them.
    api_rate_writes_per_token: str = Field(default="10/second;120/minute", description="writes per token")
    api_rate_writes_per_address: str = Field(default="200/second", description="writes per client address")
    api_rate_search_misses_per_token: str = Field(default="10/second;300/minute", description="search misses per token")
    api_rate_search_misses_per_address: str = Field(default="100/second", description="search misses per address")
    # The API's mechanisms of its own, each measured against its plain alternative in one run
    # (bench/mechanisms.py): name any of MECHANISMS here, comma-separated, to run without it, as that
    # bench does. Empty in production.
    api_without: str = Field(default="", description="mechanisms to run without, for measurement (MECHANISMS)")
    # The garbage collector's thresholds (gen0 allocations, gen1 and gen2 collections): the
    # interpreter's 700,10,10 made a 37 ms gen1 pause every 3 s and a 138 ms full one every 15 s
    # under 5000 users (docs/performance.md); rarer collections stall less often.
    api_gc_thresholds: str = Field(
        default="50000,20,100", pattern=r"^\d+,\d+,\d+$", description="gc.set_threshold for the API process"
    )
    # The short reads (feed, leaderboards, chains, dashboard, conversations) are pipelined over
    # this many connections of their own (services/api/pgpipe.py); search and writes use the pool.
    api_read_lanes: int = Field(default=2, ge=1, le=32, description="connections that carry the pipelined reads")
    api_read_timeout_ms: int = Field(
        default=5000, ge=10, description="a pipelined read's bound (also its statement_timeout)"
    )
    # Short: an answer is as old as the fold's clock when computed plus this, and a user expects a
    # renamed project to be found within two seconds (bench.freshness). A search miss is cheap.
    api_search_cache_seconds: float = Field(
        default=1.0, ge=0, le=300, description="how long a search answer is reused (0: never)"
    )
    api_search_cache_entries: int = Field(default=10_000, ge=1, description="search answers kept per process")
    # An upvote's commit waits for the WAL flush only when this is true (upvote_set, migration 0012).
    # False does not wait, and a Postgres crash can then lose the last fraction of a second of
    # upvotes. Measured side by side (bench.upvote_latency, docs/api.md) it gained little here, so
    # upvotes are durable unless a deployment chooses otherwise.
    api_upvote_durable: bool = Field(default=True, description="upvotes wait for the WAL to reach the disk")
    # A write sent with an Idempotency-Key answers a retry with the same key from its record for this
    # long (services/api/idempotency.py); the refresher prunes older keys.
    api_idempotency_ttl_seconds: int = Field(
        default=86_400, ge=60, description="how long a write's Idempotency-Key is remembered"
    )
    # Longer than a client's pause between clicks and than a load balancer's idle timeout (60 s on
    # most): a server that closes an idle connection first races the client's next request on it,
    # which then fails (seen in the load test with uvicorn's default of 5 s).
    api_keepalive_seconds: int = Field(default=75, ge=1, description="how long an idle HTTP connection stays open")
    # The API's threads ask Linux for this CPU time slice (services/api/cpuslice.py): a reply from
    # Postgres or Redis then wakes the event loop at once instead of after a busy neighbour's slice
    # (1.4 ms by default on two cores). 0 keeps the kernel's default; the kernel takes 100 to 100,000.
    api_cpu_slice_us: int = Field(
        default=100, description="the API threads' CPU time slice in µs (Linux 6.12+; 0: the kernel's)"
    )

    # The refresher (services/refresher).
    # The one refreshed view, the project leaderboard, costs about 10 ms a refresh whatever the size
    # of the data (it reads the feed's upvote index), and is due after every fold that moved a vote.
    # Refreshed at most once a second, it costs about 1% of a core and stays within two seconds of
    # the writes (bench.freshness).
    refresher_debounce_ms: int = Field(default=250, ge=0, description="wait after a view's first dirty mark")
    refresher_min_interval_ms: int = Field(
        default=1000, ge=0, description="a view is refreshed at most once per this interval (0: no limit)"
    )
    refresher_poll_ms: int = Field(default=200, ge=10, description="polling interval when no NOTIFY arrives")
    refresher_fold_ms: int = Field(default=500, ge=10, description="interval between folds of the delta ledgers")
    refresher_refresh_loops: int = Field(default=1, ge=1, le=16, description="views refreshed at once")
    refresher_statement_timeout_ms: int = Field(default=120_000, ge=1)
    refresher_lock_timeout_ms: int = Field(default=5_000, ge=1)
    refresher_retry_base_ms: int = Field(default=1_000, ge=1)
    refresher_retry_max_ms: int = Field(default=60_000, ge=1)
    refresher_log_retention_days: int = Field(default=7, ge=1, description="how long mv_refresh_log keeps rows")
    refresher_metrics_port: int = Field(default=9101, ge=0, description="0 turns the metrics server off")
    # The drain of the upvote-set marks (services/refresher/invalidator.py): a change from any writer
    # reaches Redis within about this interval plus a round trip (bound: 1 s). Against a stalled
    # Redis, a drain is sent again every timeout plus interval; the last one sent is carried out
    # first when Redis wakes, so a mark waits at most that long after it (docs/api.md).
    refresher_invalidate_ms: int = Field(default=100, ge=10, description="interval between drains of the upvote marks")
    refresher_invalidate_batch: int = Field(default=1000, ge=1, le=100_000, description="marks per drain")
    refresher_redis_timeout_ms: int = Field(default=250, ge=1, description="the drain's Redis timeout")

    reconciler_batch_size: int = Field(default=5000, ge=1, le=1_000_000, description="ids per batch")
    reconciler_redis_batch: int = Field(default=500, ge=1, le=100_000, description="Redis sets per batch")
    reconciler_redis_grace_ms: int = Field(
        default=500, ge=0, description="wait before a drifted Redis set is checked again (write-throughs in flight)"
    )
    reconciler_examples: int = Field(default=5, ge=0, le=100, description="example keys kept per model and kind")
    reconciler_statement_timeout_ms: int = Field(default=60_000, ge=1)
    reconciler_pushgateway_url: str | None = Field(default=None, description="push the run's metrics here too")

    @field_validator(
        "api_rate_writes_per_token",
        "api_rate_writes_per_address",
        "api_rate_search_misses_per_token",
        "api_rate_search_misses_per_address",
    )
    @classmethod
    def _rate_limits(cls, value: str) -> str:
        from limits import parse_many

        parse_many(value)  # a ValueError names what it could not read
        return value

    @field_validator("api_without")
    @classmethod
    def _mechanisms(cls, value: str) -> str:
        unknown = {n.strip() for n in value.split(",") if n.strip()} - MECHANISMS.keys()
        if unknown:
            raise ValueError(f"unknown mechanisms {sorted(unknown)}: API_WITHOUT takes {', '.join(MECHANISMS)}")
        return value

    @property
    def without(self) -> frozenset[str]:
        """The mechanisms API_WITHOUT turns off."""
        return frozenset(n.strip() for n in self.api_without.split(",") if n.strip())

    @field_validator("api_cpu_slice_us")
    @classmethod
    def _cpu_slice(cls, value: int) -> int:
        if value != 0 and not 100 <= value <= 100_000:
            raise ValueError("a CPU slice is 0 (the kernel's) or 100 to 100000 µs")
        return value

    @field_validator("jwt_secret", "jwt_test_secret")
    @classmethod
    def _secret_long_enough(cls, value: str | None) -> str | None:
        if value is not None and len(value) < 32:
            raise ValueError("a JWT secret must be at least 32 characters")
        return value

    def check_production_safety(self) -> None:
        """Refuse the development secret anywhere but development and test, and the test
        environments' second key in production."""
        if self.environment not in ("development", "test") and self.jwt_secret == DEV_JWT_SECRET:
            raise RuntimeError("JWT_SECRET is the development placeholder; set a real secret")
        if self.environment == "production" and self.jwt_test_secret is not None:
            raise RuntimeError("JWT_TEST_SECRET is for test environments; production accepts only JWT_SECRET")

    @property
    def docs_public(self) -> bool:
        return self.api_docs if self.api_docs is not None else self.environment in ("development", "test")

    @property
    def read_url(self) -> str:
        return self.database_read_url or self.database_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
