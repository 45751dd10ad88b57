-- project_counters: each project's upvote and comment counts, exact at every commit.
--
-- Kept by a delta ledger (db/schema/ledgers.sql). The ledger is also the list of projects the fold
-- touches: every statement on projects writes a zero delta for each project it touched, and the
-- fold hands the projects it folded (and those it found gone) to the fold-kept read models that
-- show them (mv_feed_projects, mv_chain_projects), which mark projects of their own the same way.

-- No foreign keys: a key share lock per delta on a hot parent row is the very serialization this
-- design avoids; the triggers clean up after deletes instead.
CREATE TABLE project_counters_base (
    project_id    bigint      PRIMARY KEY,
    upvote_count  bigint      NOT NULL DEFAULT 0,
    comment_count bigint      NOT NULL DEFAULT 0,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE project_counter_deltas (
    project_id bigint      NOT NULL,
    upvotes    bigint      NOT NULL DEFAULT 0,
    comments   bigint      NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX project_counter_deltas_project_id_idx ON project_counter_deltas (project_id);
-- Ledgers churn (insert, then delete at the next fold): vacuum them by row count, not by fraction.
ALTER TABLE project_counter_deltas SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
                                        autovacuum_vacuum_insert_scale_factor = 0,
                                        autovacuum_vacuum_insert_threshold = 5000);

-- The upvotes a fold moved into the base, per project, for the steps after it that keep sums of
-- the counts (the user leaderboard adds them to each owner's total, rather than summing an owner's
-- projects again). Written and consumed within one fold's transaction, so it is empty between folds;
-- unlogged, since nothing of it outlives that transaction.
CREATE UNLOGGED TABLE project_upvote_moves (
    project_id bigint NOT NULL,
    upvotes    bigint NOT NULL
);

-- The truth, from the source tables alone. Scalar subqueries, so that a filter on project_id
-- reaches the scan of projects (the reconciler reads a key range at a time) and a reader of one
-- column computes only that one.
CREATE VIEW project_counters_truth AS
SELECT p.id AS project_id,
       (SELECT count(*) FROM project_upvotes v WHERE v.project_id = p.id)  AS upvote_count,
       (SELECT count(*) FROM project_comments c WHERE c.project_id = p.id) AS comment_count
FROM projects p;

-- The read model: the base plus the pending deltas.
CREATE VIEW project_counters AS
SELECT b.project_id,
       b.upvote_count + coalesce(d.upvotes, 0)   AS upvote_count,
       b.comment_count + coalesce(d.comments, 0) AS comment_count,
       greatest(b.updated_at, d.updated_at)      AS updated_at
FROM project_counters_base b
LEFT JOIN LATERAL (
    SELECT sum(x.upvotes)::bigint AS upvotes, sum(x.comments)::bigint AS comments, max(x.created_at) AS updated_at
    FROM project_counter_deltas x WHERE x.project_id = b.project_id
) d ON true;

-- ---------------------------------------------------------------------------------------------
-- Maintenance: the triggers.

-- A project whose id appears only among the old rows is gone; only among the new, born. Both start
-- over: nothing of an earlier project with a reused id survives.
SELECT ledger_triggers('projects', 'project_counters', $body$
    WITH ends AS (
        SELECT id FROM {changes} c GROUP BY id HAVING bool_and(sign < 0) OR bool_and(sign > 0)
    ), deltas_gone AS (
        DELETE FROM project_counter_deltas d USING ends e WHERE d.project_id = e.id
    )
    DELETE FROM project_counters_base b USING ends e WHERE b.project_id = e.id;
    INSERT INTO project_counters_base (project_id)
    SELECT id FROM {changes} c GROUP BY id HAVING bool_and(sign > 0);
    -- A zero delta for every project touched, gone ones included: the fold passes their ids on,
    -- so what is kept per project (the feed) follows edits and deletes too. After the cleanup
    -- above, so that a gone or born project keeps its mark.
    INSERT INTO project_counter_deltas (project_id) SELECT DISTINCT id FROM {changes} c;
$body$, rebuild => 'project_counters_rebuild');

SELECT ledger_triggers('project_upvotes', 'project_counters', $body$
    INSERT INTO project_counter_deltas (project_id, upvotes)
    SELECT project_id, sum(sign) FROM {changes} c GROUP BY project_id HAVING sum(sign) <> 0;
$body$, rebuild => 'project_counters_rebuild');

SELECT ledger_triggers('project_comments', 'project_counters', $body$
    INSERT INTO project_counter_deltas (project_id, comments)
    SELECT project_id, sum(sign) FROM {changes} c GROUP BY project_id HAVING sum(sign) <> 0;
$body$, rebuild => 'project_counters_rebuild');

-- Set-based and linear: one pass over the source. TRUNCATE takes the ledger's lock, so a writer
-- caught in the middle adds its deltas after this commits, on top of a truth it is not in.
CREATE FUNCTION project_counters_rebuild() RETURNS void
LANGUAGE sql AS $$
    TRUNCATE project_counters_base, project_counter_deltas;
    INSERT INTO project_counters_base (project_id, upvote_count, comment_count)
    SELECT project_id, upvote_count, comment_count FROM project_counters_truth;
$$;

-- The fold's step (db/schema/ledgers.sql): move the deltas of at most max_keys projects into the
-- base. It locks the projects FOR KEY SHARE SKIP LOCKED and folds only the keys it locked: a
-- project being deleted is left for the next fold. The move is one statement, so readers see a
-- delta either still pending or already in the base, never both or neither. It touches the
-- projects it folded, and those it found gone, for the fold-kept read models.
CREATE FUNCTION project_counters_fold(
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

-- The reconciler's repair of these projects. It never overwrites a count: the correction (truth
-- minus model, both read by one statement) is appended to the ledger like any write, so a write
-- that commits meanwhile adds its own delta and is not lost; the fold carries it on.
CREATE FUNCTION project_counters_repair(keys bigint[]) RETURNS void
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
