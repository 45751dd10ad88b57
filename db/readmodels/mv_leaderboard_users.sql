-- mv_leaderboard_users: the 1000 users whose projects drew the most upvotes, ranked; refreshed
-- (seconds stale).

CREATE FUNCTION leaderboard_user_item(rank bigint, user_id bigint, username text, display_name text,
                                      upvotes_received bigint, project_count bigint) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
RETURN '{"rank":' || rank || ',"user_id":' || user_id || ',"username":' || json_str(username)
       || ',"display_name":' || json_str(display_name) || ',"upvotes_received":' || upvotes_received
       || ',"project_count":' || project_count || '}';

-- The definition, once, over either the feed's truth (the source tables alone) or the feed table,
-- whose per-project counts the truth would recompute; the two agree whenever the feed is folded.
-- See leaderboard_projects_ranked().
CREATE FUNCTION leaderboard_users_ranked(from_truth boolean)
RETURNS TABLE (rank bigint, user_id bigint, username text, display_name text, upvotes_received bigint,
               project_count bigint, item text)
LANGUAGE sql STABLE AS $$
    SELECT top.*, leaderboard_user_item(top.rank, top.user_id, top.username, top.display_name,
                                        top.upvotes_received, top.project_count)
    FROM (
        SELECT row_number() OVER (ORDER BY t.upvotes_received DESC, t.user_id DESC) AS rank,
               t.user_id, u.username, u.display_name, t.upvotes_received, t.project_count
        FROM ((SELECT owner_id AS user_id, sum(upvote_count)::bigint AS upvotes_received, count(*) AS project_count
               FROM mv_feed_projects WHERE NOT from_truth GROUP BY owner_id
               ORDER BY upvotes_received DESC, owner_id DESC LIMIT 1000)
              UNION ALL
              (SELECT owner_id, sum(upvote_count)::bigint, count(*)
               FROM mv_feed_projects_truth WHERE from_truth GROUP BY owner_id
               ORDER BY 2 DESC, 1 DESC LIMIT 1000)) t
        JOIN users u ON u.id = t.user_id
    ) top
$$;

CREATE VIEW mv_leaderboard_users_truth AS SELECT * FROM leaderboard_users_ranked(true);

CREATE MATERIALIZED VIEW mv_leaderboard_users AS SELECT * FROM leaderboard_users_ranked(false);
CREATE UNIQUE INDEX mv_leaderboard_users_key ON mv_leaderboard_users (user_id);
CREATE INDEX mv_leaderboard_users_rank_idx ON mv_leaderboard_users (rank);

SELECT refreshed_view('mv_leaderboard_users', '{users}', '{mv_feed_projects}');

-- name: leaderboard_users
-- GET /api/leaderboard/users.
SELECT '{"items":[' || coalesce(string_agg(l.item, ','), '')
       || '],"as_of":' || (SELECT json_ts(as_of) FROM read_model_freshness WHERE clock = 'mv_leaderboard_users')
       || '}'
FROM (SELECT rank, item
      FROM mv_leaderboard_users
      WHERE rank > %(offset)s
      ORDER BY rank
      LIMIT %(limit)s) l
