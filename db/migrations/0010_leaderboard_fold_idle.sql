-- The user leaderboard's fold step takes no lock on its table when it has no votes to add: an
-- idle fold then never stands in the way of a TRUNCATE's rebuild (which deadlocked with it).

CREATE OR REPLACE FUNCTION leaderboard_users_fold(
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
