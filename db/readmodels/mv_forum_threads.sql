-- mv_forum_threads: one row per forum thread with its post count and last activity; refreshed
-- (seconds stale). The chain page lists a chain's threads from it (mv_chain_directory.sql).

-- The truth, from the source tables alone; the view is its materialization.
CREATE VIEW mv_forum_threads_truth AS
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

CREATE MATERIALIZED VIEW mv_forum_threads AS SELECT * FROM mv_forum_threads_truth;
CREATE UNIQUE INDEX mv_forum_threads_key ON mv_forum_threads (thread_id);
CREATE INDEX mv_forum_threads_chain_idx ON mv_forum_threads (chain_id, last_activity_at DESC, thread_id DESC);

SELECT refreshed_view('mv_forum_threads', '{forum_threads,forum_posts,users}');
