-- An upvote change in one round trip: take the (user, project) advisory lock and make the change in
-- one call. The API then writes the change through to Redis, and reads the exact count and
-- releases the lock in one more (services/api/upvotes.py), so that changes of one upvote reach
-- Redis in the order Postgres made them. Before, taking the lock and making the change were two
-- round trips: under the 5000-user load test each waited its turn on a busy machine.
--
-- durable: false commits the change asynchronously (synchronous_commit off, for this call's
-- transaction only). The answer then does not wait for the WAL to reach the disk: on this VM that
-- flush was most of an upvote's time, and under load it queued behind every other commit. A
-- Postgres crash can lose the last fraction of a second of such changes (never half of one: the
-- vote and its read-model deltas commit together); API_UPVOTE_DURABLE chooses (docs/api.md).
--
-- want: NULL toggles, true sets, false clears. Returns (present, upvoted, changed, upvote_count).
-- present is false when there is no such project (nothing changed). The lock is a session lock, so
-- it outlives the call: when nothing changed there is nothing to write through, and the call
-- releases it itself and returns the count. After a change the count is NULL: read inside this
-- call it would miss changes of other users that commit after it but before this one does, so
-- the caller reads it after the commit. A failing change (a user that does not exist) leaves the
-- lock held: the caller releases it (session locks ignore rollbacks). Waiting for the lock is
-- bounded (lock_timeout, for this call's transaction only): one change of one user's upvote takes
-- milliseconds, so a long wait means a lock left behind, and an error beats a request that hangs.
CREATE FUNCTION upvote_set(u bigint, p bigint, want boolean, durable boolean)
RETURNS TABLE (present boolean, upvoted boolean, changed boolean, upvote_count bigint)
LANGUAGE plpgsql AS $$
DECLARE
    k bigint := hashtextextended('upvote:' || u || ':' || p, 0);
    n integer := 0;
BEGIN
    PERFORM set_config('lock_timeout', '2s', true);
    IF NOT durable THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    PERFORM pg_advisory_lock(k);
    IF NOT EXISTS (SELECT 1 FROM projects WHERE id = p) THEN
        PERFORM pg_advisory_unlock(k);
        present := false; upvoted := false; changed := false;
        RETURN NEXT;
        RETURN;
    END IF;
    present := true;
    IF want IS NULL OR NOT want THEN
        DELETE FROM project_upvotes WHERE user_id = u AND project_id = p;
        GET DIAGNOSTICS n = ROW_COUNT;
    END IF;
    IF want OR (want IS NULL AND n = 0) THEN
        INSERT INTO project_upvotes (user_id, project_id) VALUES (u, p) ON CONFLICT DO NOTHING;
        GET DIAGNOSTICS n = ROW_COUNT;
        upvoted := true;
    ELSE
        upvoted := false;
    END IF;
    changed := n > 0 OR want IS NULL;
    IF NOT changed THEN
        SELECT c.upvote_count INTO upvote_count FROM project_counters c WHERE c.project_id = p;
        PERFORM pg_advisory_unlock(k);
    END IF;
    RETURN NEXT;
END $$;
