-- mv_chain_directory: one row per chain with its counts and last activity; refreshed (seconds stale).

-- The truth, from the source tables alone; the view is its materialization.
CREATE VIEW mv_chain_directory_truth AS
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

CREATE MATERIALIZED VIEW mv_chain_directory AS SELECT * FROM mv_chain_directory_truth;
CREATE UNIQUE INDEX mv_chain_directory_key ON mv_chain_directory (chain_id);
CREATE UNIQUE INDEX mv_chain_directory_slug_idx ON mv_chain_directory (slug);
CREATE INDEX mv_chain_directory_members_idx ON mv_chain_directory (member_count DESC, chain_id DESC);

SELECT refreshed_view('mv_chain_directory', '{chains,chain_projects,chain_members,forum_threads,users}');

-- name: chains
-- GET /api/chains: the directory, largest first. next_cursor: the query string that continues
-- after the last item of a full page. The aggregates take the rows in the subquery's order (see
-- the feed's query).
SELECT '{"items":[' || coalesce(string_agg(d.item, ','), '')
       || '],"next_cursor":' || CASE WHEN count(*) = %(limit)s
              THEN '"after_members=' || (array_agg(d.member_count))[count(*)]
                   || '&after_id=' || (array_agg(d.chain_id))[count(*)] || '"'
              ELSE 'null' END
       || ',"as_of":' || (SELECT json_ts(as_of) FROM read_model_freshness WHERE clock = 'mv_chain_directory') || '}'
FROM (SELECT chain_id, member_count, item
      FROM mv_chain_directory
      WHERE (member_count, chain_id) < (%(after_members)s::bigint, %(after_id)s::bigint)
      ORDER BY member_count DESC, chain_id DESC
      LIMIT %(limit)s) d

-- name: chain_page
-- GET /api/chains/{slug}: one chain, its best projects (counts exact) and its latest threads, as one
-- JSON document (text: the API sends it as it is). It reads three read models (this one,
-- mv_chain_projects and mv_forum_threads), and is as old as the oldest of them.
SELECT '{"chain":' || d.item
    || ',"projects":[' || coalesce((
        SELECT string_agg(p.item_head || ',"upvote_count":' || p.upvote_count || ',"comment_count":' || p.comment_count
                          || '}', ',' ORDER BY p.upvote_count DESC, p.project_id DESC)
        FROM (SELECT cp.project_id, cp.item_head, c.upvote_count, c.comment_count
              FROM mv_chain_projects cp
              JOIN project_counters c ON c.project_id = cp.project_id
              WHERE cp.chain_id = d.chain_id
              ORDER BY cp.upvote_count DESC, cp.project_id DESC
              LIMIT %(limit)s) p), '')
    || '],"threads":[' || coalesce((
        SELECT string_agg(t.item, ',')  -- in the subquery's order
        FROM (SELECT thread_id, last_activity_at, item
              FROM mv_forum_threads
              WHERE chain_id = d.chain_id
              ORDER BY last_activity_at DESC, thread_id DESC
              LIMIT %(limit)s) t), '')
    || '],"as_of":' || (SELECT json_ts(min(as_of)) FROM read_model_freshness
                        WHERE clock IN ('mv_chain_directory', 'fold', 'mv_forum_threads')) || '}'
FROM mv_chain_directory d
WHERE d.slug = %(slug)s
