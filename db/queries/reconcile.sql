-- The reconciler (services/reconciler): recompute each trigger-kept read model from the source tables
-- one key range at a time, and repair what differs.
--
-- A range's truth is computed here from the source tables, restricted to the range with predicates
-- the indexes serve: the *_truth views of 0002 aggregate whole tables, and Postgres does not push a
-- range on the join key into their GROUP BY subqueries.
--
-- Repairs never overwrite a read model's value. They append a correction (truth minus model, both
-- read in one statement's snapshot) to the delta ledger, like any write: a concurrent writer's own
-- delta adds to it, so a write that lands during the repair is never lost, and the fold carries the
-- correction into the base table and the feed as usual.

-- Each walk goes from key to key: `*_next` is the smallest key at or past %(after)s in the source
-- table or the model's base table, so a gap in the ids costs one query, not a batch per id range.

-- name: project_next
SELECT least((SELECT min(id) FROM projects WHERE id >= %(after)s),
             (SELECT min(project_id) FROM project_counters_base WHERE project_id >= %(after)s))

-- name: project_last
SELECT greatest((SELECT max(id) FROM projects), (SELECT max(project_id) FROM project_counters_base))

-- name: project_count
-- Keys in a range, for the report's "checked".
SELECT count(*) FROM projects WHERE id >= %(lo)s AND id < %(hi)s

-- name: project_counters_diff
-- (project_id, kind, model values, truth values) for each project in [lo, hi) whose counters differ.
WITH truth AS (
    SELECT p.id AS project_id, coalesce(v.n, 0) AS upvote_count, coalesce(c.n, 0) AS comment_count
    FROM projects p
    LEFT JOIN (SELECT project_id, count(*) AS n FROM project_upvotes
               WHERE project_id >= %(lo)s AND project_id < %(hi)s GROUP BY project_id) v ON v.project_id = p.id
    LEFT JOIN (SELECT project_id, count(*) AS n FROM project_comments
               WHERE project_id >= %(lo)s AND project_id < %(hi)s GROUP BY project_id) c ON c.project_id = p.id
    WHERE p.id >= %(lo)s AND p.id < %(hi)s
), model AS (
    SELECT project_id, upvote_count, comment_count FROM project_counters
    WHERE project_id >= %(lo)s AND project_id < %(hi)s
)
SELECT coalesce(t.project_id, m.project_id),
       CASE WHEN m.project_id IS NULL THEN 'missing' WHEN t.project_id IS NULL THEN 'extra' ELSE 'different' END,
       json_build_array(m.upvote_count, m.comment_count)::text, json_build_array(t.upvote_count, t.comment_count)::text
FROM truth t FULL JOIN model m ON m.project_id = t.project_id
WHERE (t.upvote_count, t.comment_count) IS DISTINCT FROM (m.upvote_count, m.comment_count)
ORDER BY 1

-- name: project_counters_add_missing
-- A project without a base row: give it one at zero, so the correction below has a row to fold into.
INSERT INTO project_counters_base (project_id)
SELECT id FROM projects WHERE id = ANY(%(keys)s)
ON CONFLICT (project_id) DO NOTHING

-- name: project_counters_drop_extra
-- Counters of a project that does not exist: drop them (no writer can touch a deleted project's row).
WITH gone AS (
    DELETE FROM project_counters_base b
    WHERE b.project_id = ANY(%(keys)s) AND NOT EXISTS (SELECT 1 FROM projects p WHERE p.id = b.project_id)
    RETURNING b.project_id
)
DELETE FROM project_counter_deltas d USING gone WHERE d.project_id = gone.project_id

-- name: project_counters_correct
INSERT INTO project_counter_deltas (project_id, upvotes, comments)
SELECT m.project_id, t.upvote_count - m.upvote_count, t.comment_count - m.comment_count
FROM project_counters m
CROSS JOIN LATERAL (
    SELECT (SELECT count(*) FROM project_upvotes v WHERE v.project_id = m.project_id) AS upvote_count,
           (SELECT count(*) FROM project_comments c WHERE c.project_id = m.project_id) AS comment_count
) t
WHERE m.project_id = ANY(%(keys)s)
  AND (t.upvote_count, t.comment_count) IS DISTINCT FROM (m.upvote_count, m.comment_count)

-- name: user_next
SELECT least((SELECT min(id) FROM users WHERE id >= %(after)s),
             (SELECT min(user_id) FROM user_stats_base WHERE user_id >= %(after)s))

-- name: user_last
SELECT greatest((SELECT max(id) FROM users), (SELECT max(user_id) FROM user_stats_base))

-- name: user_count
SELECT count(*) FROM users WHERE id >= %(lo)s AND id < %(hi)s

-- name: user_stats_diff
-- One row per user in [lo, hi) whose dashboard or intro stats differ: (user_id, kind, model, truth),
-- model and truth as JSON arrays in the order of services/reconciler/models.py USER_COLUMNS.
WITH truth AS (
    SELECT u.id AS user_id,
           (SELECT count(*) FROM projects p WHERE p.owner_id = u.id) AS project_count,
           (SELECT count(*) FROM projects p JOIN project_upvotes v ON v.project_id = p.id
            WHERE p.owner_id = u.id) AS upvotes_received,
           (SELECT count(*) FROM projects p JOIN project_comments c ON c.project_id = p.id
            WHERE p.owner_id = u.id) AS comments_received,
           (SELECT count(*) FROM project_upvotes v WHERE v.user_id = u.id) AS upvotes_given,
           (SELECT count(*) FROM messages m WHERE m.recipient_id = u.id AND m.read_at IS NULL) AS unread_messages,
           (SELECT count(*) FROM chain_members c WHERE c.user_id = u.id) AS chains_joined,
           s.sent_pending, s.sent_accepted, s.sent_declined, r.received_pending, r.received_accepted,
           r.received_declined
    FROM users u
    CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE status = 'pending') AS sent_pending,
               count(*) FILTER (WHERE status = 'accepted') AS sent_accepted,
               count(*) FILTER (WHERE status = 'declined') AS sent_declined
        FROM intro_requests WHERE requester_id = u.id) s
    CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE status = 'pending') AS received_pending,
               count(*) FILTER (WHERE status = 'accepted') AS received_accepted,
               count(*) FILTER (WHERE status = 'declined') AS received_declined
        FROM intro_requests WHERE target_id = u.id) r
    WHERE u.id >= %(lo)s AND u.id < %(hi)s
), model AS (
    SELECT d.user_id, d.project_count, d.upvotes_received, d.comments_received, d.upvotes_given,
           d.unread_messages, d.chains_joined, i.sent_pending, i.sent_accepted, i.sent_declined,
           i.received_pending, i.received_accepted, i.received_declined
    FROM user_dashboard_stats d JOIN intro_request_stats i ON i.user_id = d.user_id
    WHERE d.user_id >= %(lo)s AND d.user_id < %(hi)s
)
SELECT coalesce(t.user_id, m.user_id),
       CASE WHEN m.user_id IS NULL THEN 'missing' WHEN t.user_id IS NULL THEN 'extra' ELSE 'different' END,
       json_build_array(m.project_count, m.upvotes_received, m.comments_received, m.upvotes_given,
                        m.unread_messages, m.chains_joined, m.sent_pending, m.sent_accepted, m.sent_declined,
                        m.received_pending, m.received_accepted, m.received_declined)::text,
       json_build_array(t.project_count, t.upvotes_received, t.comments_received, t.upvotes_given,
                        t.unread_messages, t.chains_joined, t.sent_pending, t.sent_accepted, t.sent_declined,
                        t.received_pending, t.received_accepted, t.received_declined)::text
FROM truth t FULL JOIN model m ON m.user_id = t.user_id
WHERE (t.project_count, t.upvotes_received, t.comments_received, t.upvotes_given, t.unread_messages,
       t.chains_joined, t.sent_pending, t.sent_accepted, t.sent_declined, t.received_pending,
       t.received_accepted, t.received_declined)
      IS DISTINCT FROM
      (m.project_count, m.upvotes_received, m.comments_received, m.upvotes_given, m.unread_messages,
       m.chains_joined, m.sent_pending, m.sent_accepted, m.sent_declined, m.received_pending,
       m.received_accepted, m.received_declined)
ORDER BY 1

-- name: user_stats_add_missing
INSERT INTO user_stats_base (user_id)
SELECT id FROM users WHERE id = ANY(%(keys)s)
ON CONFLICT (user_id) DO NOTHING

-- name: user_stats_drop_extra
WITH gone AS (
    DELETE FROM user_stats_base b
    WHERE b.user_id = ANY(%(keys)s) AND NOT EXISTS (SELECT 1 FROM users u WHERE u.id = b.user_id)
    RETURNING b.user_id
)
DELETE FROM user_stat_deltas d USING gone WHERE d.user_id = gone.user_id

-- name: user_stats_correct
-- The user's own counters (received upvotes and comments are sums of project counters, repaired there).
INSERT INTO user_stat_deltas (user_id, project_count, upvotes_given, unread_messages, chains_joined,
                              sent_pending, sent_accepted, sent_declined,
                              received_pending, received_accepted, received_declined)
SELECT m.user_id, t.project_count - m.project_count, t.upvotes_given - m.upvotes_given,
       t.unread_messages - m.unread_messages, t.chains_joined - m.chains_joined,
       t.sent_pending - m.sent_pending, t.sent_accepted - m.sent_accepted, t.sent_declined - m.sent_declined,
       t.received_pending - m.received_pending, t.received_accepted - m.received_accepted,
       t.received_declined - m.received_declined
FROM user_stats m
CROSS JOIN LATERAL (
    SELECT (SELECT count(*) FROM projects p WHERE p.owner_id = m.user_id) AS project_count,
           (SELECT count(*) FROM project_upvotes v WHERE v.user_id = m.user_id) AS upvotes_given,
           (SELECT count(*) FROM messages x WHERE x.recipient_id = m.user_id AND x.read_at IS NULL)
               AS unread_messages,
           (SELECT count(*) FROM chain_members c WHERE c.user_id = m.user_id) AS chains_joined,
           s.sent_pending, s.sent_accepted, s.sent_declined, r.received_pending, r.received_accepted,
           r.received_declined
    FROM (SELECT count(*) FILTER (WHERE status = 'pending') AS sent_pending,
                 count(*) FILTER (WHERE status = 'accepted') AS sent_accepted,
                 count(*) FILTER (WHERE status = 'declined') AS sent_declined
          FROM intro_requests WHERE requester_id = m.user_id) s,
         (SELECT count(*) FILTER (WHERE status = 'pending') AS received_pending,
                 count(*) FILTER (WHERE status = 'accepted') AS received_accepted,
                 count(*) FILTER (WHERE status = 'declined') AS received_declined
          FROM intro_requests WHERE target_id = m.user_id) r
) t
WHERE m.user_id = ANY(%(keys)s)
  AND (t.project_count, t.upvotes_given, t.unread_messages, t.chains_joined, t.sent_pending, t.sent_accepted,
       t.sent_declined, t.received_pending, t.received_accepted, t.received_declined)
      IS DISTINCT FROM
      (m.project_count, m.upvotes_given, m.unread_messages, m.chains_joined, m.sent_pending, m.sent_accepted,
       m.sent_declined, m.received_pending, m.received_accepted, m.received_declined)

-- name: conversation_next
SELECT least((SELECT min(id) FROM users WHERE id >= %(after)s),
             (SELECT min(user_id) FROM conversation_base WHERE user_id >= %(after)s))

-- name: conversation_last
SELECT greatest((SELECT max(id) FROM users), (SELECT max(user_id) FROM conversation_base))

-- name: conversations_diff
-- (user_id, other_user_id, kind, model, truth) for each conversation seen from a user in [lo, hi).
WITH sides AS (
    SELECT sender_id AS user_id, recipient_id AS other_user_id, id, created_at, body, sender_id,
           false AS unread
    FROM messages WHERE sender_id >= %(lo)s AND sender_id < %(hi)s
    UNION ALL
    SELECT recipient_id, sender_id, id, created_at, body, sender_id, read_at IS NULL
    FROM messages WHERE recipient_id >= %(lo)s AND recipient_id < %(hi)s
), counts AS (
    SELECT user_id, other_user_id, count(*) AS message_count, count(*) FILTER (WHERE unread) AS unread_count
    FROM sides GROUP BY user_id, other_user_id
), latest AS (
    SELECT DISTINCT ON (user_id, other_user_id) user_id, other_user_id, id, created_at, body, sender_id
    FROM sides ORDER BY user_id, other_user_id, created_at DESC, id DESC
), truth AS (
    SELECT c.user_id, c.other_user_id, l.id AS last_message_id, l.created_at AS last_message_at,
           left(l.body, 120) AS last_message_preview, l.sender_id AS last_sender_id, c.message_count,
           c.unread_count
    FROM counts c JOIN latest l USING (user_id, other_user_id)
), model AS (
    SELECT user_id, other_user_id, last_message_id, last_message_at, last_message_preview, last_sender_id,
           message_count, unread_count
    FROM message_conversations_denorm
    WHERE user_id >= %(lo)s AND user_id < %(hi)s
)
SELECT coalesce(t.user_id, m.user_id), coalesce(t.other_user_id, m.other_user_id),
       CASE WHEN m.user_id IS NULL THEN 'missing' WHEN t.user_id IS NULL THEN 'extra' ELSE 'different' END,
       json_build_array(m.last_message_id, m.message_count, m.unread_count)::text,
       json_build_array(t.last_message_id, t.message_count, t.unread_count)::text
FROM truth t FULL JOIN model m ON m.user_id = t.user_id AND m.other_user_id = t.other_user_id
WHERE (t.last_message_id, t.last_message_at, t.last_message_preview, t.last_sender_id, t.message_count,
       t.unread_count)
      IS DISTINCT FROM
      (m.last_message_id, m.last_message_at, m.last_message_preview, m.last_sender_id, m.message_count,
       m.unread_count)
ORDER BY 1, 2

-- name: conversations_correct
-- A correction for each given direction of a pair, even a zero one: a pending delta makes the view
-- find the pair's latest message live, and the fold writes it into the base row.
INSERT INTO conversation_deltas (user_id, other_user_id, messages, unread)
SELECT k.user_id, k.other_user_id, t.message_count - coalesce(m.message_count, 0),
       t.unread_count - coalesce(m.unread_count, 0)
FROM unnest(%(users)s::bigint[], %(others)s::bigint[]) AS k(user_id, other_user_id)
CROSS JOIN LATERAL (
    SELECT count(*) AS message_count,
           count(*) FILTER (WHERE x.recipient_id = k.user_id AND x.read_at IS NULL) AS unread_count
    FROM messages x
    WHERE (x.sender_id = k.user_id AND x.recipient_id = k.other_user_id)
       OR (x.sender_id = k.other_user_id AND x.recipient_id = k.user_id)
) t
LEFT JOIN LATERAL (
    -- the base plus pending deltas, as the view sums them, whether or not the view shows the pair
    SELECT coalesce(b.message_count, 0) + coalesce(d.messages, 0) AS message_count,
           coalesce(b.unread_count, 0) + coalesce(d.unread, 0) AS unread_count
    FROM (SELECT 1) one
    LEFT JOIN conversation_base b ON b.user_id = k.user_id AND b.other_user_id = k.other_user_id
    LEFT JOIN LATERAL (SELECT sum(messages) AS messages, sum(unread) AS unread FROM conversation_deltas x
                       WHERE x.user_id = k.user_id AND x.other_user_id = k.other_user_id) d ON true
) m ON true
WHERE EXISTS (SELECT 1 FROM users u WHERE u.id = k.user_id)
  AND EXISTS (SELECT 1 FROM users u WHERE u.id = k.other_user_id)

-- name: conversations_drop_orphans
-- Rows of a pair one of whose users is gone: nothing can fold them, and the truth has no such pair.
WITH gone AS (
    DELETE FROM conversation_base b
    WHERE (b.user_id, b.other_user_id) IN (SELECT * FROM unnest(%(users)s::bigint[], %(others)s::bigint[]))
      AND (NOT EXISTS (SELECT 1 FROM users u WHERE u.id = b.user_id)
           OR NOT EXISTS (SELECT 1 FROM users u WHERE u.id = b.other_user_id))
    RETURNING b.user_id, b.other_user_id
)
DELETE FROM conversation_deltas d USING gone
WHERE d.user_id = gone.user_id AND d.other_user_id = gone.other_user_id

-- name: upvote_sets
-- The upvotes of a batch of users, to compare with their Redis sets.
SELECT user_id, array_agg(project_id) FROM project_upvotes WHERE user_id = ANY(%(users)s) GROUP BY user_id

-- name: stale_views
-- Views whose oldest unserved request is older than the staleness bound.
SELECT view_name, extract(epoch FROM now() - first_requested_at)::float8
FROM mv_refresh_queue
WHERE status = 'pending' AND first_requested_at < now() - make_interval(secs => %(bound_s)s)
ORDER BY view_name

-- name: record_start
INSERT INTO reconcile_runs (mode) VALUES (%(mode)s) RETURNING id

-- name: record_finish
UPDATE reconcile_runs SET finished_at = now(), status = %(status)s, drift = %(drift)s, repaired = %(repaired)s,
                          error = %(error)s
WHERE id = %(id)s
