-- mv_chain_projects: each chain's projects, best first (the body of GET /api/chains/{slug}); as of
-- the fold.
--
-- A table the fold keeps, as the feed is (it was a materialized view: ordered by upvotes, it was
-- made stale by every fold that moved a vote, and refreshing its 100k rows took 1.3 s idle and
-- 2.4 s under load, back to back, about 0.6 of the machine's two cores in the 5000-user load
-- test). Its one writer is the fold, under its advisory lock, so no writer ever waits for it:
-- - the fold's step brings the chain rows of the projects it touched up to date from
--   chain_projects and the feed rows the step before it wrote;
-- - a change to chain_projects marks its projects for the next fold with a zero counter delta,
--   the way a change to projects does;
-- - a TRUNCATE of any table it follows rebuilds it.

CREATE FUNCTION chain_project_item_head(project_id bigint, title text, tagline text, username text,
                                        added_at timestamptz) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    -- Effectively immutable, like feed_item_head(): timestamps are rendered in UTC explicitly.
    RETURN '{"project_id":' || project_id || ',"title":' || json_str(title) || ',"tagline":' || json_str(tagline)
        || ',"username":' || json_str(username) || ',"added_at":' || json_ts(added_at);
END $$;

CREATE TABLE mv_chain_projects (
    chain_id      bigint      NOT NULL,
    project_id    bigint      NOT NULL,
    title         text        NOT NULL,
    tagline       text        NOT NULL,
    username      text        NOT NULL,
    upvote_count  bigint      NOT NULL,
    comment_count bigint      NOT NULL,
    added_at      timestamptz NOT NULL,
    item_head     text        NOT NULL
        GENERATED ALWAYS AS (chain_project_item_head(project_id, title, tagline, username, added_at)) STORED,
    PRIMARY KEY (chain_id, project_id)
);
CREATE INDEX mv_chain_projects_rank_idx ON mv_chain_projects (chain_id, upvote_count DESC, project_id DESC);
CREATE INDEX mv_chain_projects_project_idx ON mv_chain_projects (project_id);

-- The truth, from the source tables alone (through the feed's truth). A filter on project_id
-- reaches both scans.
CREATE VIEW mv_chain_projects_truth AS
SELECT cp.chain_id, cp.project_id, f.title, f.tagline, f.username, f.upvote_count, f.comment_count, cp.added_at,
       chain_project_item_head(cp.project_id, f.title, f.tagline, f.username, cp.added_at) AS item_head
FROM chain_projects cp
JOIN mv_feed_projects_truth f ON f.id = cp.project_id;

-- The projects whose rows wait for the next fold (the reconciler leaves them out).
CREATE VIEW mv_chain_projects_pending AS SELECT DISTINCT project_id FROM project_counter_deltas;

-- The chain rows of these projects (the fold's step, and the reconciler's repair under the fold's
-- lock), brought up to date with chain_projects and their feed rows.
CREATE FUNCTION chain_projects_apply(ids bigint[]) RETURNS void
LANGUAGE sql AS $$
    DELETE FROM mv_chain_projects c
    WHERE c.project_id = ANY (ids)
      AND NOT EXISTS (SELECT 1 FROM chain_projects cp JOIN mv_feed_projects f ON f.id = cp.project_id
                      WHERE cp.chain_id = c.chain_id AND cp.project_id = c.project_id);
    INSERT INTO mv_chain_projects AS c (chain_id, project_id, title, tagline, username, upvote_count, comment_count,
                                        added_at)
    SELECT cp.chain_id, cp.project_id, f.title, f.tagline, f.username, f.upvote_count, f.comment_count, cp.added_at
    FROM chain_projects cp
    JOIN mv_feed_projects f ON f.id = cp.project_id
    WHERE cp.project_id = ANY (ids)
    ON CONFLICT (chain_id, project_id) DO UPDATE SET
        title = excluded.title, tagline = excluded.tagline, username = excluded.username,
        upvote_count = excluded.upvote_count, comment_count = excluded.comment_count, added_at = excluded.added_at
    -- A fold touches a project for each vote; most touches leave its chain rows as they were.
    WHERE (c.title, c.tagline, c.username, c.upvote_count, c.comment_count, c.added_at)
          IS DISTINCT FROM (excluded.title, excluded.tagline, excluded.username, excluded.upvote_count,
                            excluded.comment_count, excluded.added_at);
$$;

-- The fold's step (db/schema/ledgers.sql): the projects the counters' step touched, after the feed's.
CREATE FUNCTION chain_projects_fold(
    max_keys integer, moved_projects bigint[], moved_users bigint[], moved_chains bigint[])
RETURNS TABLE (keys_folded bigint, deltas_folded bigint,
               touched_projects bigint[], touched_users bigint[], touched_chains bigint[])
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM chain_projects_apply(moved_projects);
    keys_folded := cardinality(moved_projects);
    deltas_folded := 0;
    RETURN NEXT;
END $$;

CREATE FUNCTION chain_projects_rebuild() RETURNS void
LANGUAGE sql AS $$
    TRUNCATE mv_chain_projects;
    INSERT INTO mv_chain_projects (chain_id, project_id, title, tagline, username, upvote_count, comment_count,
                                   added_at)
    SELECT chain_id, project_id, title, tagline, username, upvote_count, comment_count, added_at
    FROM mv_chain_projects_truth;
$$;

-- A change to chain_projects: its projects' chain rows follow at the next fold.
SELECT ledger_triggers('chain_projects', 'mv_chain_projects', $body$
    INSERT INTO project_counter_deltas (project_id) SELECT DISTINCT project_id FROM {changes} c;
$body$, rebuild => 'chain_projects_rebuild');
-- The feed's rows are what it copies: whatever rebuilds the feed rebuilds it too.
SELECT rebuild_on_truncate('users', 'mv_chain_projects', 'chain_projects_rebuild');
SELECT rebuild_on_truncate('projects', 'mv_chain_projects', 'chain_projects_rebuild');
SELECT rebuild_on_truncate('project_upvotes', 'mv_chain_projects', 'chain_projects_rebuild');
SELECT rebuild_on_truncate('project_comments', 'mv_chain_projects', 'chain_projects_rebuild');

-- ---------------------------------------------------------------------------------------------
-- Reads.

-- A page of a chain's projects in the chain page's order (best first, as of the fold), after the
-- keyset cursor (upvote_count, project_id) of the order; the counts shown are the exact ones. The
-- items as a JSON array, and the next_cursor (page_cursor(), kind 'chain_projects') as JSON.
CREATE FUNCTION chain_projects_page(chain bigint, after_upvotes bigint, after_id bigint, n integer)
RETURNS TABLE (items text, next_cursor text)
LANGUAGE sql STABLE AS $$
    -- The aggregates read the rows in the subquery's order (see the feed's statement).
    SELECT '[' || coalesce(string_agg(p.item_head || ',"upvote_count":' || p.exact_upvotes
                                      || ',"comment_count":' || p.exact_comments || '}', ','), '') || ']',
           CASE WHEN count(*) = n
                THEN page_cursor('chain_projects', (array_agg(p.upvote_count))[count(*)] || ','
                                                   || (array_agg(p.project_id))[count(*)])
                ELSE 'null' END
    FROM (SELECT cp.project_id, cp.upvote_count, cp.item_head, c.upvote_count AS exact_upvotes,
                 c.comment_count AS exact_comments
          FROM mv_chain_projects cp
          JOIN project_counters c ON c.project_id = cp.project_id
          WHERE cp.chain_id = chain AND (cp.upvote_count, cp.project_id) < (after_upvotes, after_id)
          ORDER BY cp.upvote_count DESC, cp.project_id DESC
          LIMIT n) p
$$;

-- name: chain_projects
-- GET /api/chains/{slug}/projects: a page of the chain's projects; no row when there is no such chain.
SELECT '{"items":' || pp.items || ',"next_cursor":' || pp.next_cursor
       || ',"as_of":' || (SELECT json_ts(as_of) FROM read_model_freshness WHERE clock = 'fold') || '}'
FROM chains ch
CROSS JOIN LATERAL chain_projects_page(ch.id, %(after_key)s::bigint, %(after_id)s::bigint, %(limit)s::int) pp
WHERE ch.slug = %(slug)s::text
