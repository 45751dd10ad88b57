"""Prometheus metrics of the refresher."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

QUEUE_DEPTH = Gauge("denorm_refresher_queue_depth", "Views waiting for a refresh")
STALENESS = Gauge(
    "denorm_refresher_view_staleness_seconds",
    "Per read model of the registry: seconds since the instant before which every committed write is in it "
    "(0 for the read models exact at every commit)",
    ["view"],
)
LAST_SUCCESS = Gauge("denorm_refresher_last_success_timestamp_seconds", "When the view was last refreshed", ["view"])
REFRESH_SECONDS = Histogram(
    "denorm_refresher_refresh_duration_seconds",
    "Duration of one refresh of a queued view (REFRESH MATERIALIZED VIEW CONCURRENTLY, with its followers)",
    ["view"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
REFRESHES = Counter("denorm_refresher_refreshes_total", "Refreshes by outcome", ["view", "status"])
FOLD_SECONDS = Histogram(
    "denorm_refresher_fold_duration_seconds",
    "Duration of one fold of the delta ledgers (the fold-kept read models are kept by it)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
DELTAS_FOLDED = Counter(
    "denorm_refresher_deltas_folded_total", "Delta rows folded into base tables, by fold step", ["step"]
)
FOLD_STEP_SECONDS = Counter(
    "denorm_refresher_fold_step_seconds_total",
    "Seconds spent in each step of the fold: what keeping its read models costs",
    ["step"],
)
FOLD_STEP_WAL = Counter(
    "denorm_refresher_fold_step_wal_bytes_total",
    "Write-ahead log written by each step of the fold (full-page images included)",
    ["step"],
)
FOLD_FAILURES = Counter("denorm_refresher_fold_failures_total", "Folds that failed and will be retried")
REQUESTS_COLLECTED = Counter("denorm_refresher_requests_collected_total", "Refresh requests coalesced into the queue")
OVER_BOUND = Gauge(
    "denorm_refresher_views_over_staleness_bound",
    "Read models past their staleness bound (denorm/readmodels.py; alert when above 0)",
)
MARKS_DRAINED = Counter(
    "denorm_refresher_upvote_marks_drained_total",
    "Upvote-set marks drained into Redis (each a user's set dropped, or every set)",
)
SETS_DROPPED = Counter("denorm_refresher_upvote_sets_dropped_total", "Users' Redis upvote sets dropped by the drain")
DRAIN_FAILURES = Counter(
    "denorm_refresher_upvote_drain_failures_total", "Drains Redis did not confirm (their marks wait for the next)"
)
