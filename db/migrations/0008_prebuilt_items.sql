-- Each read model row carries its item of the API's answer as JSON text, built once when the row is
-- written (a fold, a refresh) instead of on every read. A read then only concatenates the items of
-- a page, plus the exact counts where the answer shows them (those are read live from the
-- zero-staleness counters and appended to the item's "head", so an item never shows a stale count).
--
-- Measured at `standard` (docs/api.md): building twenty feed items with json_build_object was two
-- thirds of the feed query's time in Postgres; the chain directory went from 0.06 to 0.02 ms.
--
-- Timestamps are rendered in UTC here, whatever the session's TimeZone, so an item's text does not
-- depend on who wrote the row (the fold, the refresher, a migration); the format is the one
-- Postgres's own JSON gives in UTC ("2026-11-27T07:00:00.5+00:00").

-- JSON text of a value, 'null' for NULL. STABLE because to_json is, so the planner can inline them.
CREATE FUNCTION json_str(v text) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
RETURN coalesce(to_json(v)::text, 'null');

CREATE FUNCTION json_ts(v timestamptz) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
RETURN coalesce('"' || (to_json(v AT TIME ZONE 'UTC') #>> '{}') || '+00:00"', 'null');

-- ---------------------------------------------------------------------------------------------
-- The feed table: a generated column, so every writer of a feed row (the fold, rebuild_feed, a
-- reconciler repair) keeps it right. A generated column needs an IMMUTABLE function: this one is,
-- in effect (its text depends on its arguments only: timestamps are rendered in UTC explicitly),
-- and PL/pgSQL so that no planner inlines the STABLE calls inside it.
-- The item is open at the end: the read appends the live counts and the scores, then '}'.
CREATE FUNCTION feed_item_head(id bigint, owner_id bigint, username text, title text, tagline text, tags text[],
                               created_at timestamptz) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN '{"id":' || id || ',"owner_id":' || owner_id || ',"username":' || json_str(username)
        || ',"title":' || json_str(title) || ',"tagline":' || json_str(tagline)
        || ',"tags":' || coalesce(to_json(tags)::text, '[]') || ',"created_at":' || json_ts(created_at);
END $$;

ALTER TABLE mv_feed_projects ADD COLUMN item_head text NOT NULL
    GENERATED ALWAYS AS (feed_item_head(id, owner_id, username, title, tagline, tags, created_at)) STORED;

-- The truth carries the same column, so that comparing the table with it compares the items too.
CREATE OR REPLACE VIEW mv_feed_projects_truth AS
SELECT p.id, p.owner_id, u.username, p.title, p.tagline, p.tags, c.upvote_count, c.comment_count,
       trending_score(c.upvote_count, p.created_at) AS trending_score,
       proof_score(c.upvote_count, c.comment_count) AS proof_score,
       p.created_at,
       feed_item_head(p.id, p.owner_id, u.username, p.title, p.tagline, p.tags, p.created_at) AS item_head
FROM projects p
JOIN users u ON u.id = p.owner_id
JOIN project_counters_truth c ON c.project_id = p.id;

-- The writers of feed rows now name their columns (the generated one cannot be written).
CREATE OR REPLACE FUNCTION feed_apply(ids bigint[]) RETURNS void
LANGUAGE sql AS $$
    WITH fresh AS (
        SELECT p.id, p.owner_id, u.username, p.title, p.tagline, p.tags, c.upvote_count, c.comment_count,
               trending_score(c.upvote_count, p.created_at) AS trending_score,
               proof_score(c.upvote_count, c.comment_count) AS proof_score,
               p.created_at
        FROM unnest(ids) AS k(id)
        JOIN projects p ON p.id = k.id
        JOIN users u ON u.id = p.owner_id
        JOIN project_counters c ON c.project_id = p.id
    ), gone AS (
        DELETE FROM mv_feed_projects f USING unnest(ids) AS k(id)
        WHERE f.id = k.id AND NOT EXISTS (SELECT 1 FROM fresh WHERE fresh.id = k.id)
    )
    INSERT INTO mv_feed_projects AS f (id, owner_id, username, title, tagline, tags, upvote_count, comment_count,
                                       trending_score, proof_score, created_at)
    SELECT * FROM fresh
    ON CONFLICT (id) DO UPDATE SET
        owner_id = excluded.owner_id, username = excluded.username, title = excluded.title,
        tagline = excluded.tagline, tags = excluded.tags, upvote_count = excluded.upvote_count,
        comment_count = excluded.comment_count, trending_score = excluded.trending_score,
        proof_score = excluded.proof_score, created_at = excluded.created_at;
$$;

CREATE OR REPLACE FUNCTION rebuild_feed() RETURNS void
LANGUAGE sql AS $$
    TRUNCATE mv_feed_projects;
    INSERT INTO mv_feed_projects (id, owner_id, username, title, tagline, tags, upvote_count, comment_count,
                                  trending_score, proof_score, created_at)
    SELECT id, owner_id, username, title, tagline, tags, upvote_count, comment_count, trending_score, proof_score,
           created_at
    FROM mv_feed_projects_truth;
    INSERT INTO mv_refresh_requests (source_table) VALUES ('mv_feed_projects');
$$;

-- ---------------------------------------------------------------------------------------------
-- The materialized views, as before, each with its item. Items that show project counts are
-- heads: the read appends the live counts.

DROP MATERIALIZED VIEW mv_leaderboard_projects;
CREATE MATERIALIZED VIEW mv_leaderboard_projects AS
SELECT top.*,
       '{"rank":' || top.rank || ',"project_id":' || top.project_id || ',"title":' || json_str(top.title)
           || ',"owner_id":' || top.owner_id || ',"username":' || json_str(top.username) AS item_head
FROM (
    SELECT row_number() OVER (ORDER BY upvote_count DESC, id DESC) AS rank,
           id AS project_id, title, owner_id, username, upvote_count, comment_count, created_at
    FROM (SELECT * FROM mv_feed_projects ORDER BY upvote_count DESC, id DESC LIMIT 1000) f
) top;
CREATE UNIQUE INDEX mv_leaderboard_projects_key ON mv_leaderboard_projects (project_id);
CREATE INDEX mv_leaderboard_projects_rank_idx ON mv_leaderboard_projects (rank);

DROP MATERIALIZED VIEW mv_leaderboard_users;
CREATE MATERIALIZED VIEW mv_leaderboard_users AS
SELECT top.*,
       '{"rank":' || top.rank || ',"user_id":' || top.user_id || ',"username":' || json_str(top.username)
           || ',"display_name":' || json_str(top.display_name) || ',"upvotes_received":' || top.upvotes_received
           || ',"project_count":' || top.project_count || '}' AS item
FROM (
    SELECT row_number() OVER (ORDER BY t.upvotes_received DESC, t.user_id DESC) AS rank,
           t.user_id, u.username, u.display_name, t.upvotes_received, t.project_count
    FROM (
        SELECT owner_id AS user_id, sum(upvote_count)::bigint AS upvotes_received, count(*) AS project_count
        FROM mv_feed_projects GROUP BY owner_id
        ORDER BY upvotes_received DESC, owner_id DESC LIMIT 1000
    ) t
    JOIN users u ON u.id = t.user_id
) top;
CREATE UNIQUE INDEX mv_leaderboard_users_key ON mv_leaderboard_users (user_id);
CREATE INDEX mv_leaderboard_users_rank_idx ON mv_leaderboard_users (rank);

DROP MATERIALIZED VIEW mv_chain_directory;
CREATE MATERIALIZED VIEW mv_chain_directory AS
SELECT d.*,
       '{"chain_id":' || d.chain_id || ',"slug":' || json_str(d.slug) || ',"name":' || json_str(d.name)
           || ',"description":' || json_str(d.description) || ',"owner_username":' || json_str(d.owner_username)
           || ',"project_count":' || d.project_count || ',"member_count":' || d.member_count
           || ',"thread_count":' || d.thread_count || ',"last_activity_at":' || json_ts(d.last_activity_at)
           || '}' AS item
FROM (
    SELECT c.id AS chain_id, c.slug, c.name, c.description, c.owner_id, u.username AS owner_username,
           coalesce(cp.n, 0) AS project_count, coalesce(cm.n, 0) AS member_count, coalesce(ft.n, 0) AS thread_count,
           greatest(c.created_at, cp.last_at, cm.last_at, ft.last_at) AS last_activity_at, c.created_at
    FROM chains c
    JOIN users u ON u.id = c.owner_id
    LEFT JOIN (SELECT chain_id, count(*) AS n, max(added_at) AS last_at FROM chain_projects GROUP BY chain_id) cp
           ON cp.chain_id = c.id
    LEFT JOIN (SELECT chain_id, count(*) AS n, max(joined_at) AS last_at FROM chain_members GROUP BY chain_id) cm
           ON cm.chain_id = c.id
    LEFT JOIN (SELECT chain_id, count(*) AS n, max(created_at) AS last_at FROM forum_threads GROUP BY chain_id) ft
           ON ft.chain_id = c.id
) d;
CREATE UNIQUE INDEX mv_chain_directory_key ON mv_chain_directory (chain_id);
CREATE UNIQUE INDEX mv_chain_directory_slug_idx ON mv_chain_directory (slug);
CREATE INDEX mv_chain_directory_members_idx ON mv_chain_directory (member_count DESC, chain_id DESC);

DROP MATERIALIZED VIEW mv_chain_projects;
CREATE MATERIALIZED VIEW mv_chain_projects AS
SELECT cp.chain_id, cp.project_id, f.title, f.tagline, f.username, f.upvote_count, f.comment_count, cp.added_at,
       '{"project_id":' || cp.project_id || ',"title":' || json_str(f.title) || ',"tagline":' || json_str(f.tagline)
           || ',"username":' || json_str(f.username) || ',"added_at":' || json_ts(cp.added_at) AS item_head
FROM chain_projects cp
JOIN mv_feed_projects f ON f.id = cp.project_id;
CREATE UNIQUE INDEX mv_chain_projects_key ON mv_chain_projects (chain_id, project_id);
CREATE INDEX mv_chain_projects_rank_idx ON mv_chain_projects (chain_id, upvote_count DESC, project_id DESC);

DROP MATERIALIZED VIEW mv_forum_threads;
CREATE MATERIALIZED VIEW mv_forum_threads AS
SELECT t.*,
       '{"thread_id":' || t.thread_id || ',"title":' || json_str(t.title)
           || ',"author_username":' || json_str(t.author_username) || ',"post_count":' || t.post_count
           || ',"last_post_at":' || json_ts(t.last_post_at) || ',"last_activity_at":' || json_ts(t.last_activity_at)
           || ',"created_at":' || json_ts(t.created_at) || '}' AS item
FROM (
    SELECT t.id AS thread_id, t.chain_id, t.title, t.author_id, u.username AS author_username,
           coalesce(p.n, 0) AS post_count, p.last_at AS last_post_at,
           greatest(t.created_at, p.last_at) AS last_activity_at, t.created_at
    FROM forum_threads t
    JOIN users u ON u.id = t.author_id
    LEFT JOIN (SELECT thread_id, count(*) AS n, max(created_at) AS last_at FROM forum_posts GROUP BY thread_id) p
           ON p.thread_id = t.id
) t;
CREATE UNIQUE INDEX mv_forum_threads_key ON mv_forum_threads (thread_id);
CREATE INDEX mv_forum_threads_chain_idx ON mv_forum_threads (chain_id, last_activity_at DESC, thread_id DESC);

ANALYZE mv_feed_projects, mv_leaderboard_projects, mv_leaderboard_users, mv_chain_directory, mv_chain_projects,
        mv_forum_threads;
