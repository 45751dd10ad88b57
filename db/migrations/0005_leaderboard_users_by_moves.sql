-- The user leaderboard adds the upvotes each fold moves into the counters' base to the owners'
-- totals, rather than summing every owner of a voted project again (issue 14: that cost grew with
-- how many projects an owner has). Its rows become sums over the folded base; the migration sums
-- them all again that way under the fold's lock, so that nothing pending is added twice.

-- The upvotes a fold moved into the base, per project, for the steps after it that keep sums of
-- the counts (the user leaderboard adds them to each owner's total, rather than summing an owner's
-- projects again). Written and consumed within one fold's transaction, so it is empty between folds;
-- unlogged, since nothing of it outlives that transaction.
CREATE UNLOGGED TABLE project_upvote_moves (
    project_id bigint NOT NULL,
    upvotes    bigint NOT NULL
);

CREATE OR REPLACE FUNCTION project_counters_fold(
    max_keys integer, moved_projects bigint[], moved_users bigint[], moved_chains bigint[])
RETURNS TABLE (keys_folded bigint, deltas_folded bigint,
               touched_projects bigint[], touched_users bigint[], touched_chains bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
BEGIN
    SELECT coalesce(array_agg(id), '{}') INTO ids FROM (
        SELECT p.id FROM projects p
        -- DISTINCT in index order with a LIMIT stops early: a huge backlog is not read whole per call.
        WHERE p.id IN (SELECT DISTINCT project_id FROM project_counter_deltas ORDER BY project_id LIMIT max_keys)
        ORDER BY p.id FOR KEY SHARE SKIP LOCKED) s;
    WITH moved AS (
        DELETE FROM project_counter_deltas d USING unnest(ids) k(id) WHERE d.project_id = k.id
        RETURNING d.project_id, d.upvotes, d.comments, d.created_at
    ), agg AS (
        SELECT project_id, sum(upvotes) AS u, sum(comments) AS c, max(created_at) AS t, count(*) AS n
        FROM moved GROUP BY project_id
    ), upd AS (
        UPDATE project_counters_base b
        SET upvote_count = b.upvote_count + a.u, comment_count = b.comment_count + a.c,
            updated_at = greatest(b.updated_at, a.t)
        FROM agg a WHERE b.project_id = a.project_id
        RETURNING b.project_id, a.u
    ), moves AS (
        -- Only what reached a base row: the sums kept over the base must match it.
        INSERT INTO project_upvote_moves (project_id, upvotes) SELECT project_id, u FROM upd WHERE u <> 0
    )
    SELECT count(*), coalesce(sum(n), 0), coalesce(array_agg(project_id), '{}')
    INTO keys_folded, deltas_folded, touched_projects FROM agg;
    -- Deltas of projects deleted for good (a cascade can write them after the project's own cleanup).
    WITH gone AS (
        DELETE FROM project_counter_deltas WHERE ctid IN (
            SELECT d.ctid FROM project_counter_deltas d
            WHERE NOT EXISTS (SELECT 1 FROM projects p WHERE p.id = d.project_id)
            FOR UPDATE SKIP LOCKED)
        RETURNING project_id
    )
    SELECT touched_projects || coalesce(array_agg(DISTINCT project_id), '{}') INTO touched_projects FROM gone;
    RETURN NEXT;
END $$;

CREATE OR REPLACE FUNCTION project_counters_repair(keys bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    -- A project without a base row gets one at zero, for the correction to fold into.
    INSERT INTO project_counters_base (project_id)
    SELECT id FROM projects WHERE id = ANY (keys)
    ON CONFLICT (project_id) DO NOTHING;
    -- Counters of a project that does not exist are dropped: no writer touches a deleted project's row.
    WITH gone AS (
        DELETE FROM project_counters_base b
        WHERE b.project_id = ANY (keys) AND NOT EXISTS (SELECT 1 FROM projects p WHERE p.id = b.project_id)
        RETURNING b.project_id
    )
    DELETE FROM project_counter_deltas d USING gone WHERE d.project_id = gone.project_id;
    WITH corrected AS (
        INSERT INTO project_counter_deltas (project_id, upvotes, comments)
        SELECT m.project_id, t.upvote_count - m.upvote_count, t.comment_count - m.comment_count
        FROM project_counters m
        JOIN project_counters_truth t ON t.project_id = m.project_id
        WHERE m.project_id = ANY (keys) AND t.project_id = ANY (keys)
          AND (t.upvote_count, t.comment_count) IS DISTINCT FROM (m.upvote_count, m.comment_count)
        RETURNING project_id
    )
    -- Their owners' sums are taken again from the base (a zero delta marks them): a sum kept over
    -- a wrong count may have been right, and adding the correction to it would make it wrong.
    INSERT INTO user_stat_deltas (user_id)
    SELECT DISTINCT p.owner_id FROM projects p JOIN corrected c ON c.project_id = p.id;
END $$;

CREATE OR REPLACE FUNCTION leaderboard_users_set(keys bigint[]) RETURNS void
LANGUAGE sql AS $$
    WITH fresh AS (
        SELECT u.id AS user_id, u.username, u.display_name, t.upvotes_received, t.project_count
        FROM users u
        CROSS JOIN LATERAL (
            SELECT count(*) AS project_count, coalesce(sum(c.upvote_count), 0)::bigint AS upvotes_received
            FROM projects p LEFT JOIN project_counters_base c ON c.project_id = p.id
            WHERE p.owner_id = u.id) t
        WHERE u.id = ANY (keys) AND t.project_count > 0
    ), gone AS (
        DELETE FROM mv_leaderboard_users l
        WHERE l.user_id = ANY (keys) AND NOT EXISTS (SELECT 1 FROM fresh f WHERE f.user_id = l.user_id)
    )
    INSERT INTO mv_leaderboard_users AS l (user_id, username, display_name, upvotes_received, project_count)
    SELECT * FROM fresh
    ON CONFLICT (user_id) DO UPDATE SET
        username = excluded.username, display_name = excluded.display_name,
        upvotes_received = excluded.upvotes_received, project_count = excluded.project_count
    -- A user touched for something the row does not show (a vote given, a message) leaves it as it
    -- was: it is not rewritten.
    WHERE (l.username, l.display_name, l.upvotes_received, l.project_count)
          IS DISTINCT FROM (excluded.username, excluded.display_name, excluded.upvotes_received,
                            excluded.project_count);
$$;

CREATE OR REPLACE FUNCTION leaderboard_users_fold(
    max_keys integer, moved_projects bigint[], moved_users bigint[], moved_chains bigint[])
RETURNS TABLE (keys_folded bigint, deltas_folded bigint,
               touched_projects bigint[], touched_users bigint[], touched_chains bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    owners bigint[] := ARRAY(SELECT DISTINCT unnest(moved_users));
BEGIN
    IF cardinality(owners) > 0 THEN
        PERFORM leaderboard_users_set(owners);
    END IF;
    WITH moves AS (
        DELETE FROM project_upvote_moves RETURNING project_id, upvotes
    ), added AS (
        SELECT p.owner_id, sum(m.upvotes)::bigint AS upvotes
        FROM moves m JOIN projects p ON p.id = m.project_id
        WHERE p.owner_id <> ALL (owners)
        GROUP BY p.owner_id
    ), upd AS (
        UPDATE mv_leaderboard_users l SET upvotes_received = l.upvotes_received + a.upvotes
        FROM added a WHERE l.user_id = a.owner_id AND a.upvotes <> 0
        RETURNING 1
    )
    SELECT cardinality(owners) + count(*), 0 INTO keys_folded, deltas_folded FROM upd;
    RETURN NEXT;
END $$;

SELECT pg_advisory_xact_lock(7305798357383151617);
SELECT leaderboard_users_set(ARRAY(SELECT user_id FROM mv_leaderboard_users));
