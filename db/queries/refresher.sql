-- Queries of the refresher (services/refresher), one named block each.

-- name: claim_due_view
-- The oldest pending view whose debounce window has passed, whose last refresh ended at least
-- min_interval_s ago (the feed, which the fold keeps, excepted) and whose retry backoff is over.
-- The claim row stays locked for the whole refresh transaction; SKIP LOCKED passes over views
-- another replica holds, and a crashed replica's lock ends with its session.
SELECT q.view_name, q.generation, q.first_requested_at
FROM mv_refresh_queue q
JOIN mv_refresh_claims c ON c.view_name = q.view_name
WHERE q.status = 'pending'
  AND q.first_requested_at <= now() - make_interval(secs => %(debounce_s)s)
  AND (q.last_refreshed_at IS NULL OR q.view_name = 'mv_feed_projects'
       OR q.last_refreshed_at <= now() - make_interval(secs => %(min_interval_s)s))
  AND (q.next_attempt_at IS NULL OR q.next_attempt_at <= now())
ORDER BY q.first_requested_at, q.view_name
LIMIT 1
FOR UPDATE OF c SKIP LOCKED

-- name: finish_refresh
-- Idle again, unless requests were collected while the refresh ran (the generation moved on).
UPDATE mv_refresh_queue SET
    status = CASE WHEN generation = %(generation)s THEN 'idle' ELSE 'pending' END,
    first_requested_at = CASE WHEN generation = %(generation)s THEN NULL ELSE %(started_at)s END,
    last_refreshed_at = now(),
    last_refresh_duration_ms = %(duration_ms)s,
    attempts = 0,
    next_attempt_at = NULL,
    last_error = NULL
WHERE view_name = %(view_name)s

-- name: log_refresh
INSERT INTO mv_refresh_log (view_name, refresh_started_at, duration_ms, status, error, worker, first_requested_at)
VALUES (%(view_name)s, %(started_at)s, %(duration_ms)s, %(status)s, %(error)s, %(worker)s, %(first_requested_at)s)

-- name: fail_refresh
-- Keep the view pending and retry after an exponential backoff; the other views go on meanwhile.
UPDATE mv_refresh_queue SET
    attempts = attempts + 1,
    next_attempt_at = now() + make_interval(secs => least(%(retry_max_s)s, %(retry_base_s)s * 2 ^ attempts)),
    last_error = %(error)s
WHERE view_name = %(view_name)s

-- name: next_due_in
-- Seconds until the next pending view becomes due (null when none is pending).
SELECT extract(epoch FROM min(greatest(
           q.first_requested_at + make_interval(secs => %(debounce_s)s),
           CASE WHEN q.view_name = 'mv_feed_projects' THEN '-infinity'
                ELSE coalesce(q.last_refreshed_at + make_interval(secs => %(min_interval_s)s), '-infinity') END,
           coalesce(q.next_attempt_at, '-infinity'))) - now())::float8
FROM mv_refresh_queue q WHERE q.status = 'pending'

-- name: queue_state
SELECT view_name, status, first_requested_at, last_refreshed_at, last_refresh_duration_ms, attempts,
       extract(epoch FROM now() - first_requested_at)::float8 AS pending_seconds,
       extract(epoch FROM last_refreshed_at)::float8 AS last_refreshed_epoch
FROM mv_refresh_queue ORDER BY view_name

-- name: feed_state
-- The feed's staleness: the age of the oldest counter delta not yet folded into it.
SELECT extract(epoch FROM now() - min(created_at))::float8 FROM project_counter_deltas

-- name: mark_feed_folded
-- now() is the fold's transaction start, taken before its snapshot: a safe "as of" for the feed.
UPDATE mv_refresh_queue SET last_refreshed_at = now() - make_interval(secs => %(duration_ms)s / 1000.0),
                            last_refresh_duration_ms = %(duration_ms)s
WHERE view_name = 'mv_feed_projects'

-- name: prune_log
DELETE FROM mv_refresh_log WHERE refresh_started_at < now() - make_interval(days => %(days)s)
