-- mv_leaderboard_users: every user who owns a project, with the upvotes their projects drew, in
-- leaderboard order (an index); as of the fold. The route ranks the first thousand as it reads them.
--
-- A table the fold keeps. Each owner's upvotes_received is the sum of their projects' counters as
-- folded (project_counters_base): the upvotes the counters' step moved into the base are added to
-- the owners' totals, so the fold's work follows the votes, not how many projects an owner has.
-- An owner's totals are summed again from the base only when the owner's row may have changed
-- otherwise: a statement on the user (a rename), a project that came, went or changed owner, a
-- repaired counter (each writes the user a delta). (It was a materialized view aggregating the
-- whole feed: 0.12 s at `standard`, 0.55 s at 4x, refreshed 58 times in 3 minutes of load; then
-- a fold step summing again every owner of a voted project: 2.2x the cost per vote at 4x, where
-- such an owner has 9 projects rather than 6.)

-- The item's JSON, after its rank: the route writes '{"rank":N,' before it.
CREATE FUNCTION leaderboard_user_item(user_id bigint, username text, display_name text, upvotes_received bigint,
                                      project_count bigint) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN '"user_id":' || user_id || ',"username":' || json_str(username)
        || ',"display_name":' || json_str(display_name) || ',"upvotes_received":' || upvotes_received
        || ',"project_count":' || project_count || '}';
END $$;

CREATE TABLE mv_leaderboard_users (
    user_id          bigint PRIMARY KEY,
    username         text   NOT NULL,
    display_name     text   NOT NULL,
    upvotes_received bigint NOT NULL,
    project_count    bigint NOT NULL,
    item_tail        text   NOT NULL GENERATED ALWAYS AS (
        leaderboard_user_item(user_id, username, display_name, upvotes_received, project_count)) STORED
);
CREATE INDEX mv_leaderboard_users_rank_idx ON mv_leaderboard_users (upvotes_received DESC, user_id DESC);

-- The truth, from the source tables alone. A filter on user_id reaches the scan of users.
CREATE VIEW mv_leaderboard_users_truth AS
SELECT t.*, leaderboard_user_item(t.user_id, t.username, t.display_name, t.upvotes_received, t.project_count)
           AS item_tail
FROM (
    SELECT u.id AS user_id, u.username, u.display_name,
           (SELECT count(*) FROM projects p JOIN project_upvotes v ON v.project_id = p.id
            WHERE p.owner_id = u.id) AS upvotes_received,
           o.project_count
    FROM users u
    CROSS JOIN LATERAL (SELECT count(*) AS project_count FROM projects p WHERE p.owner_id = u.id) o
    WHERE o.project_count > 0
) t;

-- The users whose rows wait for the next fold (the reconciler leaves them out): their own deltas
-- (a rename, a project that came or went) and their projects' counter deltas.
CREATE VIEW mv_leaderboard_users_pending AS
SELECT user_id FROM user_stat_deltas
UNION
SELECT p.owner_id FROM project_counter_deltas d JOIN projects p ON p.id = d.project_id;

-- ---------------------------------------------------------------------------------------------
-- Maintenance: nothing of its own is written by the triggers; the counters' and the users' ledgers
-- say who changed.

-- These users' rows, summed again from their projects' folded counters: kept when they own a
-- project, dropped otherwise (and when they are gone). Keys only (the whole table is the rebuild's):
-- a "keys IS NULL OR" here made the plan read every user, 0.9 s a fold at `standard`.
CREATE FUNCTION leaderboard_users_set(keys bigint[]) RETURNS void
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

-- The fold's step (db/schema/ledgers.sql): the users the users' step touched are summed again;
-- every other owner gets the upvotes the counters' step moved for their projects added. A project
-- whose owner changes between the steps may add its votes to the new owner: the change wrote a
-- delta for both owners, so they are pending (the reconciler leaves them out) until the next fold
-- sums them again.
CREATE FUNCTION leaderboard_users_fold(
    max_keys integer, moved_projects bigint[], moved_users bigint[], moved_chains bigint[])
RETURNS TABLE (keys_folded bigint, deltas_folded bigint,
               touched_projects bigint[], touched_users bigint[], touched_chains bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    owners bigint[] := ARRAY(SELECT DISTINCT unnest(moved_users));
    added bigint[];
    amounts bigint[];
BEGIN
    IF cardinality(owners) > 0 THEN
        PERFORM leaderboard_users_set(owners);
    END IF;
    WITH moves AS (
        DELETE FROM project_upvote_moves RETURNING project_id, upvotes
    )
    SELECT coalesce(array_agg(owner_id), '{}'), coalesce(array_agg(upvotes), '{}') INTO added, amounts
    FROM (SELECT p.owner_id, sum(m.upvotes)::bigint AS upvotes
          FROM moves m JOIN projects p ON p.id = m.project_id
          WHERE p.owner_id <> ALL (owners)
          GROUP BY p.owner_id HAVING sum(m.upvotes) <> 0) a;
    keys_folded := cardinality(owners) + cardinality(added);
    deltas_folded := 0;
    -- Only a fold that has votes to add touches the table: an idle one takes no lock on it, so that
    -- it never stands in the way of a TRUNCATE's rebuild (tests/test_upvote_sets.py).
    IF cardinality(added) > 0 THEN
        UPDATE mv_leaderboard_users l SET upvotes_received = l.upvotes_received + a.upvotes
        FROM unnest(added, amounts) AS a(owner_id, upvotes) WHERE l.user_id = a.owner_id;
    END IF;
    RETURN NEXT;
END $$;

-- Whole, from the source tables in one pass (not from the counters: after a TRUNCATE of the
-- upvotes this runs in a trigger that may come before the counters' own rebuild).
CREATE FUNCTION leaderboard_users_rebuild() RETURNS void
LANGUAGE sql AS $$
    TRUNCATE mv_leaderboard_users;
    INSERT INTO mv_leaderboard_users (user_id, username, display_name, upvotes_received, project_count)
    SELECT u.id, u.username, u.display_name, coalesce(sum(v.n), 0)::bigint, count(*)
    FROM users u
    JOIN projects p ON p.owner_id = u.id
    LEFT JOIN (SELECT project_id, count(*) AS n FROM project_upvotes GROUP BY project_id) v ON v.project_id = p.id
    GROUP BY u.id;
$$;

SELECT rebuild_on_truncate('users', 'mv_leaderboard_users', 'leaderboard_users_rebuild');
SELECT rebuild_on_truncate('projects', 'mv_leaderboard_users', 'leaderboard_users_rebuild');
SELECT rebuild_on_truncate('project_upvotes', 'mv_leaderboard_users', 'leaderboard_users_rebuild');

-- name: leaderboard_users
-- GET /api/leaderboard/users: a page of the users whose projects drew the most upvotes, ranked as
-- read (offset + position: the index gives the order, and pages go no deeper than 1,000).
SELECT '{"items":[' || coalesce(string_agg('{"rank":' || (%(offset)s::bigint + l.n) || ',' || l.item_tail, ','), '')
       || '],"as_of":' || (SELECT json_ts(as_of) FROM read_model_freshness WHERE clock = 'fold') || '}'
FROM (SELECT row_number() OVER () AS n, item_tail
      FROM (SELECT item_tail FROM mv_leaderboard_users
            ORDER BY upvotes_received DESC, user_id DESC
            LIMIT %(limit)s OFFSET %(offset)s) top) l
