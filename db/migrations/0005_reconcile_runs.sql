-- One row per reconciler run: what it found and repaired, per read model, as JSON objects
-- ({"project_counters": {"missing": 0, "extra": 0, "different": 2}, ...}). Alerts read it through
-- the refresher's metrics (services/reconciler/metrics.py).
CREATE TABLE reconcile_runs (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    mode        text        NOT NULL CHECK (mode IN ('dry-run', 'repair')),
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    status      text        NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'finished', 'failed')),
    drift       jsonb,
    repaired    jsonb,
    error       text
);
CREATE INDEX reconcile_runs_started_at_idx ON reconcile_runs (started_at DESC);
