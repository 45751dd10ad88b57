-- The refresh queue of the materialized views, and the freshness of every read model.
--
-- Writers never touch the queue's rows: each write statement on a table a view reads appends one
-- row to mv_refresh_requests (insert-only; it locks nothing shared), and the refresher coalesces
-- those into one queue row per view. A request rolls back with the write that made it, so no view
-- is marked for a change that never happened, and none is missed for one that did. Upvotes and
-- comments reach the views through mv_feed_projects: the fold requests for it.

CREATE TABLE mv_refresh_queue (
    view_name                text        PRIMARY KEY,
    status                   text        NOT NULL DEFAULT 'idle' CHECK (status IN ('idle', 'pending')),
    depends_on               text[]      NOT NULL,
    -- Bumped by every collection of requests; a refresh that started at generation g leaves the
    -- view pending when it ends at a later one (requests came in while it ran).
    generation               bigint      NOT NULL DEFAULT 0,
    refresh_requested_at     timestamptz,
    first_requested_at       timestamptz,
    last_refreshed_at        timestamptz,
    last_refresh_duration_ms integer,
    attempts                 integer     NOT NULL DEFAULT 0,
    next_attempt_at          timestamptz,
    last_error               text
);

-- A refresher holds a view's row here (FOR UPDATE SKIP LOCKED) for the length of its refresh, so
-- two replicas never refresh one view at once, and a crashed replica's claim ends with its session.
CREATE TABLE mv_refresh_claims (
    view_name text PRIMARY KEY REFERENCES mv_refresh_queue (view_name) ON DELETE CASCADE
);

CREATE TABLE mv_refresh_log (
    id                 bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    view_name          text        NOT NULL,
    refresh_started_at timestamptz NOT NULL,
    duration_ms        integer     NOT NULL,
    status             text        NOT NULL CHECK (status IN ('completed', 'failed')),
    error              text,
    worker             text,
    first_requested_at timestamptz
);
-- The refresher prunes the log by age.
CREATE INDEX mv_refresh_log_started_idx ON mv_refresh_log (refresh_started_at);

CREATE TABLE mv_refresh_requests (
    source_table text        NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- The oldest request of a source: a view's as_of counts the requests not collected yet.
CREATE INDEX mv_refresh_requests_source_idx ON mv_refresh_requests (source_table, requested_at);
ALTER TABLE mv_refresh_requests SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
                                     autovacuum_vacuum_insert_scale_factor = 0,
                                     autovacuum_vacuum_insert_threshold = 5000);

CREATE FUNCTION mv_request_refresh() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- The first request after the refresher drained the ledger wakes it (a hint: it also polls).
    IF NOT EXISTS (SELECT FROM mv_refresh_requests) THEN
        PERFORM pg_notify('mv_refresh', TG_TABLE_NAME);
    END IF;
    INSERT INTO mv_refresh_requests (source_table) VALUES (TG_TABLE_NAME);
    RETURN NULL;
END $$;

-- A refreshed view's declaration, called from its read model's file: its queue row, and a request
-- trigger on every source table it reads (one per table, shared by the views that read it). The
-- read models it reads (mv_feed_projects) are requested by whatever changes them (the fold).
CREATE FUNCTION refreshed_view(view_name text, source_tables text[], read_models text[] DEFAULT '{}')
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    t text;
BEGIN
    INSERT INTO mv_refresh_queue (view_name, depends_on) VALUES (view_name, source_tables || read_models);
    INSERT INTO mv_refresh_claims (view_name) VALUES (view_name);
    FOREACH t IN ARRAY source_tables LOOP
        EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON %I '
                       'FOR EACH STATEMENT EXECUTE FUNCTION mv_request_refresh()', 'trg_' || t || '_mv_request', t);
    END LOOP;
END $$;

-- Coalesce the pending requests into the queue: one row per view, however many writes asked.
-- One collector at a time (so two replicas never lock queue rows in different orders).
CREATE FUNCTION mv_collect_requests() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    collected integer;
BEGIN
    IF NOT pg_try_advisory_xact_lock(7305798357383151618) THEN
        RETURN 0;
    END IF;
    WITH moved AS (
        DELETE FROM mv_refresh_requests RETURNING source_table, requested_at
    ), per_view AS (
        SELECT q.view_name, min(m.requested_at) AS first_at, max(m.requested_at) AS last_at
        FROM mv_refresh_queue q JOIN moved m ON m.source_table = ANY (q.depends_on)
        GROUP BY q.view_name
    ), upd AS (
        UPDATE mv_refresh_queue q SET
            status = 'pending',
            generation = q.generation + 1,
            first_requested_at = coalesce(q.first_requested_at, v.first_at),
            refresh_requested_at = greatest(q.refresh_requested_at, v.last_at)
        FROM per_view v WHERE q.view_name = v.view_name
        RETURNING 1
    )
    SELECT count(*) INTO collected FROM moved;
    RETURN collected;
END $$;

-- A refresh for a role that is not the views' owner: PostgreSQL 15 lets only a materialized
-- view's owner refresh it (17's MAINTAIN privilege would do). The owner's function, for this
-- schema's materialized views only, and executable only by the roles granted it (the refresher's
-- and the reconciler's: db/roles/service_role.sql with -v maintains=on), not by PUBLIC.
CREATE FUNCTION refresh_materialized_view(view_name text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_matviews m WHERE m.schemaname = 'public' AND m.matviewname = view_name) THEN
        RAISE EXCEPTION 'no materialized view %', view_name USING ERRCODE = 'undefined_table';
    END IF;
    EXECUTE format('REFRESH MATERIALIZED VIEW CONCURRENTLY public.%I', view_name);
END $$;
REVOKE EXECUTE ON FUNCTION refresh_materialized_view(text) FROM PUBLIC;

-- ---------------------------------------------------------------------------------------------
-- Freshness: the one rule for how old a read model is. as_of is the instant before which every
-- committed write is in it: for a refreshed view, the first request it has not served, whether
-- the refresher has collected it into the queue row or not (a request is written before its
-- write commits), and now when there is none; for the fold-kept read models, the fold's as_of
-- (db/schema/ledgers.sql). The ledger-kept read models are exact at every commit and have no
-- clock. denorm/readmodels.py says which clock each read model follows; the API's reads,
-- /api/admin/refresh-status, the refresher's gauges and the reconciler all read this view.
-- "Now" for the data this database holds: now on a primary; on a streaming replica, the commit time
-- of the last transaction it has replayed (an idle view's as_of there must not claim writes the
-- replica has not replayed yet; services/api/replica.py).
CREATE FUNCTION data_now() RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE
RETURN CASE WHEN pg_is_in_recovery() THEN least(now(), coalesce(pg_last_xact_replay_timestamp(), '-infinity'))
            ELSE now() END;

CREATE VIEW read_model_freshness AS
SELECT q.view_name AS clock,
       least(CASE WHEN q.status = 'pending' THEN q.first_requested_at ELSE data_now() END,
             (SELECT min(r.requested_at)
              FROM unnest(q.depends_on) AS d(source_table)
              CROSS JOIN LATERAL (SELECT x.requested_at FROM mv_refresh_requests x
                                  WHERE x.source_table = d.source_table
                                  ORDER BY x.requested_at LIMIT 1) r)) AS as_of
FROM mv_refresh_queue q
UNION ALL
SELECT 'fold', f.as_of FROM fold_state f;

-- name: replica_state
-- A streaming replica's replay position (in bytes, as wal_position()), and how far its replay is behind: 0 when it has replayed
-- all it received, else the age of its last replayed commit; unknown (NULL) until it has replayed a
-- commit since it started, when data_now() has nothing to go by (services/api/replica.py polls it).
-- On a primary the position is NULL.
SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint,
       CASE WHEN pg_last_xact_replay_timestamp() IS NULL THEN NULL
            WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
            ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 END

-- name: wal_insert_position
-- The primary's WAL insert position, in bytes (as wal_position() in denorm/maintenance.py): read
-- after a write has committed, it is at or past the commit.
SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint

-- name: freshness
-- Every clock with its staleness in seconds; the Redis upvote sets' clock is their oldest mark
-- not yet drained (db/readmodels/upvote_sets.sql).
SELECT clock, as_of, extract(epoch FROM now() - as_of)::float8 AS staleness_seconds FROM read_model_freshness
UNION ALL
SELECT 'upvote_sets', as_of, extract(epoch FROM now() - as_of)::float8
FROM (SELECT coalesce(min(created_at), now()) AS as_of FROM upvote_set_changes) m

-- name: queue_state
SELECT view_name, status, refresh_requested_at, first_requested_at, last_refreshed_at, last_refresh_duration_ms,
       attempts, last_error, extract(epoch FROM last_refreshed_at)::float8 AS last_refreshed_epoch
FROM mv_refresh_queue ORDER BY view_name

-- name: collect_requests
SELECT mv_collect_requests()

-- name: claim_due_view
-- The oldest pending view whose debounce window has passed, whose last refresh ended at least
-- min_interval_s ago, and whose retry backoff is over. The claim row stays locked for the whole
-- refresh transaction; SKIP LOCKED passes over views another replica holds, and a crashed
-- replica's lock ends with its session.
SELECT q.view_name, q.generation, q.first_requested_at, now()
FROM mv_refresh_queue q
JOIN mv_refresh_claims c ON c.view_name = q.view_name
WHERE q.status = 'pending'
  AND q.first_requested_at <= now() - make_interval(secs => %(debounce_s)s)
  AND (q.last_refreshed_at IS NULL OR q.last_refreshed_at <= now() - make_interval(secs => %(min_interval_s)s))
  AND (q.next_attempt_at IS NULL OR q.next_attempt_at <= now())
ORDER BY q.first_requested_at, q.view_name
LIMIT 1
FOR UPDATE OF c SKIP LOCKED

-- name: claim_view
-- One view, due or not (the reconciler's repair); no row when a refresher holds it.
SELECT q.view_name, q.generation, q.first_requested_at, now()
FROM mv_refresh_queue q
JOIN mv_refresh_claims c ON c.view_name = q.view_name
WHERE q.view_name = %(view_name)s
FOR UPDATE OF c SKIP LOCKED

-- name: view_idle
-- Whether a view has been refreshed since the last write it depends on (no request pending,
-- collected or not). Read in the same snapshot as a comparison of the view with its definition,
-- it says the two must be equal.
SELECT q.status = 'idle' AND NOT EXISTS (SELECT 1 FROM mv_refresh_requests r WHERE r.source_table = ANY (q.depends_on))
FROM mv_refresh_queue q WHERE q.view_name = %(view_name)s

-- name: refresh_timeout
SELECT set_config('statement_timeout', %(timeout)s, true)

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
VALUES (%(view_name)s, coalesce(%(started_at)s, now()), %(duration_ms)s, %(status)s, %(error)s, %(worker)s,
        %(first_requested_at)s)

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
           coalesce(q.last_refreshed_at + make_interval(secs => %(min_interval_s)s), '-infinity'),
           coalesce(q.next_attempt_at, '-infinity'))) - now())::float8
FROM mv_refresh_queue q WHERE q.status = 'pending'

-- name: prune_log
DELETE FROM mv_refresh_log WHERE refresh_started_at < now() - make_interval(days => %(days)s)
