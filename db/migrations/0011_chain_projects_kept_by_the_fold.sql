-- mv_chain_projects becomes a table the fold keeps, as the feed is, instead of a materialized view.
--
-- Why: it orders each chain's projects by their upvotes, so every fold that moved a vote made it
-- stale, and refreshing its 100k rows CONCURRENTLY took 1.3 s on an idle `standard` database and
-- 2.4 s under load. Under the 5000-user load test the refresher refreshed it back to back: 71
-- refreshes in five minutes, about 0.6 of the machine's two cores (docs/performance.md). Kept by
-- the fold, its cost follows the changes: the projects a fold touches, in the chains they are in.
--
-- How it stays right, with one writer only (the fold, under its advisory lock), so no writer ever
-- waits for it:
-- - rm_projects_folded(ids), which the fold calls for every project it touched, now also brings
--   these projects' chain rows up to date from chain_projects and the feed rows it just wrote;
-- - a change to chain_projects marks its projects for the next fold with a zero counter delta,
--   the way a change to projects already does;
-- - rebuild_feed() rebuilds it, and TRUNCATE chain_projects rebuilds it.
-- So it is as of the last fold, like the feed: the chain page's as_of now counts the feed's.

DROP MATERIALIZED VIEW mv_chain_projects;
DELETE FROM mv_refresh_queue WHERE view_name = 'mv_chain_projects';

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

-- What the table holds once every delta is folded: the definition of the view it replaces.
CREATE VIEW mv_chain_projects_truth AS
SELECT cp.chain_id, cp.project_id, f.title, f.tagline, f.username, f.upvote_count, f.comment_count, cp.added_at,
       chain_project_item_head(cp.project_id, f.title, f.tagline, f.username, cp.added_at) AS item_head
FROM chain_projects cp
JOIN mv_feed_projects f ON f.id = cp.project_id;

-- Bring the chain rows of these projects up to date with chain_projects and their feed rows.
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

CREATE FUNCTION rebuild_chain_projects() RETURNS void
LANGUAGE sql AS $$
    TRUNCATE mv_chain_projects;
    INSERT INTO mv_chain_projects (chain_id, project_id, title, tagline, username, upvote_count, comment_count,
                                   added_at)
    SELECT chain_id, project_id, title, tagline, username, upvote_count, comment_count, added_at
    FROM mv_chain_projects_truth;
$$;

-- The fold's hook for the projects it touched (migration 0003): the feed rows, then their chain rows.
CREATE OR REPLACE FUNCTION rm_projects_folded(ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF cardinality(ids) = 0 THEN
        RETURN;
    END IF;
    PERFORM feed_apply(ids);
    PERFORM chain_projects_apply(ids);
    INSERT INTO mv_refresh_requests (source_table) VALUES ('mv_feed_projects');
END $$;

CREATE OR REPLACE FUNCTION rebuild_feed() RETURNS void
LANGUAGE sql AS $$
    TRUNCATE mv_feed_projects;
    INSERT INTO mv_feed_projects (id, owner_id, username, title, tagline, tags, upvote_count, comment_count,
                                  trending_score, proof_score, created_at)
    SELECT id, owner_id, username, title, tagline, tags, upvote_count, comment_count, trending_score, proof_score,
           created_at
    FROM mv_feed_projects_truth;
    SELECT rebuild_chain_projects();
    INSERT INTO mv_refresh_requests (source_table) VALUES ('mv_feed_projects');
$$;

-- A change to chain_projects: its projects' chain rows follow at the next fold.
CREATE FUNCTION rm_chain_projects_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO project_counter_deltas (project_id) SELECT DISTINCT project_id FROM new_rows;
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        INSERT INTO project_counter_deltas (project_id) SELECT DISTINCT project_id FROM old_rows;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER trg_chain_projects_insert_rm AFTER INSERT ON chain_projects
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION rm_chain_projects_changed();
CREATE TRIGGER trg_chain_projects_update_rm AFTER UPDATE ON chain_projects
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION rm_chain_projects_changed();
CREATE TRIGGER trg_chain_projects_delete_rm AFTER DELETE ON chain_projects
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION rm_chain_projects_changed();

CREATE FUNCTION chain_projects_truncated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM rebuild_chain_projects();
    RETURN NULL;
END $$;
CREATE TRIGGER trg_chain_projects_truncate_rm AFTER TRUNCATE ON chain_projects
    FOR EACH STATEMENT EXECUTE FUNCTION chain_projects_truncated();

SELECT rebuild_chain_projects();
ANALYZE mv_chain_projects;
