-- mv_leaderboard_projects: the 1000 most upvoted projects, ranked; refreshed (seconds stale).
--
-- The counts a page shows are read live from project_counters; the ranks are as of the refresh.

CREATE FUNCTION leaderboard_project_item_head(rank bigint, project_id bigint, title text, owner_id bigint,
                                              username text) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
RETURN '{"rank":' || rank || ',"project_id":' || project_id || ',"title":' || json_str(title)
       || ',"owner_id":' || owner_id || ',"username":' || json_str(username);

-- The definition, once, over either the feed's truth (the source tables alone) or the feed table:
-- the first 1000 rows of the feed's upvote index take milliseconds, where the truth counts every
-- project's upvotes (a second at `standard`). The two agree whenever the feed is folded. A SQL
-- function, inlined into each caller: the branch its argument rules out is never planned.
CREATE FUNCTION leaderboard_projects_ranked(from_truth boolean)
RETURNS TABLE (rank bigint, project_id bigint, title text, owner_id bigint, username text, upvote_count bigint,
               comment_count bigint, created_at timestamptz, item_head text)
LANGUAGE sql STABLE AS $$
    SELECT top.*, leaderboard_project_item_head(top.rank, top.project_id, top.title, top.owner_id, top.username)
    FROM (
        SELECT row_number() OVER (ORDER BY f.upvote_count DESC, f.id DESC) AS rank,
               f.id AS project_id, f.title, f.owner_id, f.username, f.upvote_count, f.comment_count, f.created_at
        FROM ((SELECT id, title, owner_id, username, upvote_count, comment_count, created_at
               FROM mv_feed_projects WHERE NOT from_truth
               ORDER BY upvote_count DESC, id DESC LIMIT 1000)
              UNION ALL
              (SELECT id, title, owner_id, username, upvote_count, comment_count, created_at
               FROM mv_feed_projects_truth WHERE from_truth
               ORDER BY upvote_count DESC, id DESC LIMIT 1000)) f
    ) top
$$;

CREATE VIEW mv_leaderboard_projects_truth AS SELECT * FROM leaderboard_projects_ranked(true);

CREATE MATERIALIZED VIEW mv_leaderboard_projects AS SELECT * FROM leaderboard_projects_ranked(false);
CREATE UNIQUE INDEX mv_leaderboard_projects_key ON mv_leaderboard_projects (project_id);
CREATE INDEX mv_leaderboard_projects_rank_idx ON mv_leaderboard_projects (rank);

SELECT refreshed_view('mv_leaderboard_projects', '{}', '{mv_feed_projects}');

-- name: leaderboard_projects
-- GET /api/leaderboard/projects: ranks from the view; counts live, appended to each prebuilt item head.
SELECT '{"items":[' || coalesce(string_agg(l.item_head || ',"upvote_count":' || l.upvote_count
                                           || ',"comment_count":' || l.comment_count || '}', ','), '')
       || '],"as_of":' || (SELECT json_ts(as_of) FROM read_model_freshness WHERE clock = 'mv_leaderboard_projects')
       || '}'
FROM (SELECT l.rank, l.item_head, c.upvote_count, c.comment_count
      FROM mv_leaderboard_projects l
      JOIN project_counters c ON c.project_id = l.project_id
      WHERE l.rank > %(offset)s
      ORDER BY l.rank
      LIMIT %(limit)s) l
