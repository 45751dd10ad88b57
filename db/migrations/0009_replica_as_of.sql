-- Answers read from a streaming replica never claim an as_of later than its last replayed commit
-- (issue 19): "now" for an idle refreshed view is data_now(), which is now() on a primary.

-- "Now" for the data this database holds: now on a primary; on a streaming replica, the commit time
-- of the last transaction it has replayed (an idle view's as_of there must not claim writes the
-- replica has not replayed yet; services/api/replica.py).
CREATE FUNCTION data_now() RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE
RETURN CASE WHEN pg_is_in_recovery() THEN least(now(), coalesce(pg_last_xact_replay_timestamp(), '-infinity'))
            ELSE now() END;

CREATE OR REPLACE VIEW read_model_freshness AS
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
