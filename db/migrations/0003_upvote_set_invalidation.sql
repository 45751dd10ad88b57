-- Postgres invalidates the Redis upvote sets, whoever writes (issue 15): every statement that
-- changes a user's upvotes leaves a mark in upvote_set_changes, which the refresher drains into
-- Redis; upvote_set() returns the mark of the API's own change, which its write-through records in
-- Redis. The definitions are those of db/readmodels/upvote_sets.sql as of this migration.

-- The users whose sets Redis has not been told of. user_id NULL: every user (a TRUNCATE).
-- project_id: the one project the statement changed for that user (an API toggle), else NULL.
CREATE TABLE upvote_set_changes (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    bigint,
    project_id bigint,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- Ledgers churn (insert, then delete): vacuum them by row count, not by fraction.
ALTER TABLE upvote_set_changes SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
                                    autovacuum_vacuum_insert_scale_factor = 0,
                                    autovacuum_vacuum_insert_threshold = 5000);

-- The result gains change_id: a new return type, so the function is made again.
DROP FUNCTION upvote_set(bigint, bigint, boolean, boolean);

-- An upvote change in one round trip: take the (user, project) advisory lock and make the change.
-- The API then writes the change through to Redis, and reads the exact count and releases the
-- lock in one more (upvote_count_and_unlock), so that changes of one upvote reach Redis in the
-- order Postgres made them.
--
-- durable: false commits the change asynchronously (synchronous_commit off, for this call's
-- transaction only). The answer then does not wait for the WAL to reach the disk; a Postgres
-- crash can lose the last fraction of a second of such changes (never half of one: the vote and
-- its read-model deltas commit together). API_UPVOTE_DURABLE chooses (docs/api.md).
--
-- want: NULL toggles, true sets, false clears. Returns (present, upvoted, changed, upvote_count,
-- change_id). change_id is the upvote_set_changes row this change left (NULL when it changed no
-- row): the write-through records it in Redis. present is false when there is no such
-- project (nothing changed). The lock is a session lock, so it outlives the call: when nothing
-- changed there is nothing to write through, and the call releases it itself and returns the
-- count. After a change the count is NULL: read inside this call it would miss changes of other
-- users that commit after it but before this one does, so the caller reads it after the commit.
-- A failing change (a user that does not exist) leaves the lock held: the caller releases it
-- (session locks ignore rollbacks). Waiting for the lock is bounded (lock_timeout, for this call's
-- transaction only): one change of one user's upvote takes milliseconds, so a long wait means a
-- lock left behind, and an error beats a request that hangs.
CREATE FUNCTION upvote_set(u bigint, p bigint, want boolean, durable boolean)
RETURNS TABLE (present boolean, upvoted boolean, changed boolean, upvote_count bigint, change_id bigint)
LANGUAGE plpgsql AS $$
DECLARE
    k bigint := upvote_lock_key(u, p);
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
    IF n > 0 THEN
        -- The statement that changed the row fired the ledger's trigger in this session.
        change_id := currval('upvote_set_changes_id_seq');
    END IF;
    IF NOT changed THEN
        SELECT c.upvote_count INTO upvote_count FROM project_counters c WHERE c.project_id = p;
        PERFORM pg_advisory_unlock(k);
    END IF;
    RETURN NEXT;
END $$;

-- ---------------------------------------------------------------------------------------------
-- Maintenance: the marks. One row per user per statement, with the project when there is one.

SELECT ledger_triggers('project_upvotes', 'upvote_sets', $body$
    INSERT INTO upvote_set_changes (user_id, project_id)
    SELECT user_id, CASE WHEN count(*) = 1 THEN min(project_id) END
    FROM (SELECT user_id, project_id FROM {changes} c GROUP BY user_id, project_id HAVING sum(sign) <> 0) x
    GROUP BY user_id;
$body$, rebuild => 'upvote_sets_rebuild');

-- Every set loads again from Postgres: one mark for every user in place of all the others (after a
-- TRUNCATE, or a bulk load such as the seed's).
CREATE FUNCTION upvote_sets_rebuild() RETURNS void
LANGUAGE sql AS $$
    TRUNCATE upvote_set_changes;
    INSERT INTO upvote_set_changes (user_id) VALUES (NULL);
$$;

-- Whatever Redis holds now was filled before the marks existed: every set loads again.
SELECT upvote_sets_rebuild();
