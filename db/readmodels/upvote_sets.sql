-- upvote_sets: which projects each user upvoted, a read model of project_upvotes kept in Redis
-- (one set per user, denorm/usercache.py), never needed for a right answer.
--
-- Postgres tells Redis of every change, whoever made it. A statement that changes a user's upvotes
-- (the API's, plain SQL, a bulk statement, a cascade from a deleted user or project) leaves a row
-- per user in upvote_set_changes, in its own transaction: the mark that the user's set may be
-- stale. The refresher drains the marks (services/refresher/invalidator.py): for each, unless
-- Redis says that very change was applied (below), it bumps the user's generation and deletes the
-- set, so the next read loads it again from Postgres; only then does it delete the rows. A mark
-- survives any process: if Redis cannot be reached, the rows wait and the drain is tried again.
--
-- The API's own change is written through to Redis while the API holds the (user, project)
-- advisory lock that its Postgres change took, so the changes of one upvote reach Redis in the
-- order Postgres made them. The write-through's script also records the change's mark id in
-- Redis, with the change itself: a mark so recorded needs no drop. A write-through that failed,
-- or never arrived (the breaker open, the process killed between its commit and its
-- write-through), leaves its mark unrecorded, and the drain drops the set. The drain leaves alone
-- a mark whose advisory lock is held: its write-through is in flight. A user's set is loaded
-- lazily, whole, from user_upvotes, guarded by the generation. The reconciler compares each cached
-- set with this file's truth and deletes a set that differs.

-- The truth: a user's upvoted projects, from the source table. A filter on user_id reaches the
-- scan (the primary key leads with it).
CREATE VIEW upvote_sets_truth AS
SELECT user_id, array_agg(project_id ORDER BY project_id) AS project_ids
FROM project_upvotes
GROUP BY user_id;

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

-- The advisory lock of one (user, project) upvote: the only definition of its key.
CREATE FUNCTION upvote_lock_key(u bigint, p bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN hashtextextended('upvote:' || u || ':' || p, 0);

-- An upvote change: take the (user, project) advisory lock and make the change. The API calls it
-- through upvote_apply (below), which also commits and counts; it then writes the change through
-- to Redis and releases the lock, so that changes of one upvote reach Redis in the order Postgres
-- made them.
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
-- users that commit after it but before this one does, so upvote_apply reads it after the commit.
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

-- The API's upvote in one round trip: the change (upvote_set, which takes the lock), its commit,
-- and after a change the exact count, read in a transaction of its own after the commit, as a
-- statement sent after it would (so it includes every change committed before it). A procedure,
-- called with CALL on an autocommit connection, since only a procedure may commit part way. After
-- a change the lock stays held for the write-through, and the caller releases it (upvote_unlock)
-- once Redis has the change; the answer need not wait for that release. A failing change leaves
-- the lock held, as upvote_set's does.
CREATE PROCEDURE upvote_apply(u bigint, p bigint, want boolean, durable boolean,
                              INOUT present boolean DEFAULT NULL, INOUT upvoted boolean DEFAULT NULL,
                              INOUT changed boolean DEFAULT NULL, INOUT upvote_count bigint DEFAULT NULL,
                              INOUT change_id bigint DEFAULT NULL)
LANGUAGE plpgsql AS $$
BEGIN
    SELECT s.present, s.upvoted, s.changed, s.upvote_count, s.change_id
    INTO present, upvoted, changed, upvote_count, change_id
    FROM upvote_set(u, p, want, durable) s;
    IF changed THEN
        COMMIT;
        SELECT c.upvote_count INTO upvote_count FROM project_counters c WHERE c.project_id = p;
    END IF;
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

-- name: upvote_change
CALL upvote_apply(%(u)s::bigint, %(p)s::bigint, %(want)s::boolean, %(durable)s::boolean, NULL, NULL, NULL, NULL, NULL)

-- name: upvote_unlock
SELECT pg_advisory_unlock(upvote_lock_key(%(u)s::bigint, %(p)s::bigint))

-- name: upvote_warm_up
-- Run on every new API connection: a session compiles a PL/pgSQL function on its first call, and
-- this call changes nothing (there is no project 0).
CALL upvote_apply(0, 0, NULL, true, NULL, NULL, NULL, NULL, NULL)

-- name: upvoted_among
-- Which of a page's projects the user upvoted (the Postgres answer when Redis cannot give it).
SELECT project_id FROM project_upvotes WHERE user_id = %(user_id)s AND project_id = ANY(%(project_ids)s)

-- name: user_upvotes
-- A user's whole upvote set, to load their Redis set lazily.
SELECT project_id FROM project_upvotes WHERE user_id = %(user_id)s

-- name: upvote_sets
-- The truth for a batch of users, to compare with their Redis sets.
SELECT user_id, project_ids FROM upvote_sets_truth WHERE user_id = ANY(%(users)s)

-- name: upvote_changes_claim
-- The drain's batch: the oldest marks, locked until the drain's transaction ends, but for those
-- whose (user, project) advisory lock an API process holds: its write-through is in flight. The
-- lock taken here in turn keeps a new API change of that upvote waiting until the drain's Redis
-- step is done. The advisory locks are tried on the batch alone: tried in the scan's filter, they
-- were taken on every mark the scan met, and a backlog (plain SQL writing while no drain ran)
-- held one per mark in one transaction, ran out Postgres's shared lock table, and failed this
-- drain on every try and every upvote meanwhile ("out of shared memory").
WITH oldest AS MATERIALIZED (
    SELECT id, user_id, project_id FROM upvote_set_changes ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED
)
SELECT id, user_id, project_id FROM oldest
WHERE project_id IS NULL OR pg_try_advisory_xact_lock(upvote_lock_key(user_id, project_id))
ORDER BY id

-- name: upvote_changes_done
DELETE FROM upvote_set_changes WHERE id = ANY(%(ids)s::bigint[])
