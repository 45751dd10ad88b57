-- One row per reconciler run: what it found and repaired, per read model, as JSON objects
-- ({"project_counters": {"missing": 0, "extra": 0, "different": 2}, ...}). Alerts read it through
-- the refresher's metrics (denorm/reconcile_runs.py).
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

-- name: reconcile_lock
-- A session lock of its own ("denorm" + 2, after the migration runner's + 1). Never a key the SQL
-- takes: sharing the fold's or the collector's would stall every refresher for the whole run.
SELECT pg_try_advisory_lock(28259022661643522)

-- name: reconcile_unlock
SELECT pg_advisory_unlock(28259022661643522)

-- name: record_start
INSERT INTO reconcile_runs (mode) VALUES (%(mode)s) RETURNING id

-- name: record_finish
UPDATE reconcile_runs SET finished_at = now(), status = %(status)s, drift = %(drift)s, repaired = %(repaired)s,
                          error = %(error)s
WHERE id = %(id)s

-- name: recent_runs
SELECT status, drift, extract(epoch FROM finished_at)::float8
FROM reconcile_runs WHERE status <> 'running' ORDER BY id DESC LIMIT %(n)s
