-- Pages read straight from the source tables, exact at every commit: a project's comments, a
-- thread's posts, a conversation's messages, a user's intro requests. Each is an index walk from a
-- keyset cursor (the last item's (created_at, id), in page_cursor()'s encoding), so a deep page
-- costs what the first does. Each function returns the page's items as a JSON array and its
-- next_cursor as JSON (null after a short page); the routes' statements below wrap them.

-- A project's comments, newest first, after (after_at, after_id).
CREATE FUNCTION comments_page(project bigint, after_at timestamptz, after_id bigint, n integer)
RETURNS TABLE (items text, next_cursor text)
LANGUAGE sql STABLE AS $$
    -- The aggregates read the rows in the subquery's order (see the feed's statement).
    SELECT '[' || coalesce(string_agg(
               '{"id":' || c.id || ',"author_id":' || c.author_id || ',"author_username":' || json_str(c.username)
               || ',"body":' || json_str(c.body) || ',"created_at":' || json_ts(c.created_at) || '}', ','), '') || ']',
           CASE WHEN count(*) = n
                THEN page_cursor('comments', json_ts((array_agg(c.created_at))[count(*)]) || ',' || (array_agg(c.id))[count(*)])
                ELSE 'null' END
    FROM (SELECT c.id, c.author_id, c.body, c.created_at, (SELECT u.username FROM users u WHERE u.id = c.author_id)
          FROM project_comments c
          WHERE c.project_id = project AND (c.created_at, c.id) < (after_at, after_id)
          ORDER BY c.created_at DESC, c.id DESC
          LIMIT n) c
$$;

-- A thread's posts, oldest first, after (after_at, after_id).
CREATE FUNCTION posts_page(thread bigint, after_at timestamptz, after_id bigint, n integer)
RETURNS TABLE (items text, next_cursor text)
LANGUAGE sql STABLE AS $$
    SELECT '[' || coalesce(string_agg(
               '{"id":' || p.id || ',"author_id":' || p.author_id || ',"author_username":' || json_str(p.username)
               || ',"body":' || json_str(p.body) || ',"created_at":' || json_ts(p.created_at) || '}', ','), '') || ']',
           CASE WHEN count(*) = n
                THEN page_cursor('posts', json_ts((array_agg(p.created_at))[count(*)]) || ',' || (array_agg(p.id))[count(*)])
                ELSE 'null' END
    FROM (SELECT p.id, p.author_id, p.body, p.created_at, (SELECT u.username FROM users u WHERE u.id = p.author_id)
          FROM forum_posts p
          WHERE p.thread_id = thread AND (p.created_at, p.id) > (after_at, after_id)
          ORDER BY p.created_at, p.id
          LIMIT n) p
$$;

-- The messages between two users, newest first, after (after_at, after_id): each direction is its
-- own walk of messages_pair_idx, merged. Only messages with `me` on one side are ever read.
CREATE FUNCTION messages_page(me bigint, other bigint, after_at timestamptz, after_id bigint, n integer)
RETURNS TABLE (items text, next_cursor text)
LANGUAGE sql STABLE AS $$
    SELECT '[' || coalesce(string_agg(
               '{"id":' || m.id || ',"sender_id":' || m.sender_id || ',"recipient_id":' || m.recipient_id
               || ',"body":' || json_str(m.body) || ',"created_at":' || json_ts(m.created_at)
               || ',"read_at":' || json_ts(m.read_at) || '}', ','), '') || ']',
           CASE WHEN count(*) = n
                THEN page_cursor('messages', json_ts((array_agg(m.created_at))[count(*)]) || ',' || (array_agg(m.id))[count(*)])
                ELSE 'null' END
    FROM (SELECT * FROM (
              (SELECT id, sender_id, recipient_id, body, created_at, read_at FROM messages
               WHERE sender_id = me AND recipient_id = other AND (created_at, id) < (after_at, after_id)
               ORDER BY created_at DESC, id DESC LIMIT n)
              UNION ALL
              (SELECT id, sender_id, recipient_id, body, created_at, read_at FROM messages
               WHERE sender_id = other AND recipient_id = me AND (created_at, id) < (after_at, after_id)
               ORDER BY created_at DESC, id DESC LIMIT n)) both_ways
          ORDER BY created_at DESC, id DESC
          LIMIT n) m
$$;

-- A user's intro requests, received or sent, of one status or all, newest first, after
-- (after_at, after_id). Only one branch runs: `received` gates each.
CREATE FUNCTION intro_requests_page(me bigint, received boolean, wanted text, after_at timestamptz,
                                    after_id bigint, n integer)
RETURNS TABLE (items text, next_cursor text)
LANGUAGE sql STABLE AS $$
    SELECT '[' || coalesce(string_agg(
               '{"id":' || i.id || ',"requester_id":' || i.requester_id
               || ',"requester_username":' || json_str((SELECT u.username FROM users u WHERE u.id = i.requester_id))
               || ',"target_id":' || i.target_id
               || ',"target_username":' || json_str((SELECT u.username FROM users u WHERE u.id = i.target_id))
               || ',"project_id":' || coalesce(i.project_id::text, 'null') || ',"message":' || json_str(i.message)
               || ',"status":' || json_str(i.status) || ',"created_at":' || json_ts(i.created_at)
               || ',"responded_at":' || json_ts(i.responded_at) || '}', ','), '') || ']',
           CASE WHEN count(*) = n
                THEN page_cursor('intro_requests', json_ts((array_agg(i.created_at))[count(*)]) || ','
                                                   || (array_agg(i.id))[count(*)])
                ELSE 'null' END
    FROM (SELECT * FROM (
              (SELECT * FROM intro_requests
               WHERE received AND target_id = me AND (wanted IS NULL OR status = wanted)
                 AND (created_at, id) < (after_at, after_id)
               ORDER BY created_at DESC, id DESC LIMIT n)
              UNION ALL
              (SELECT * FROM intro_requests
               WHERE NOT received AND requester_id = me AND (wanted IS NULL OR status = wanted)
                 AND (created_at, id) < (after_at, after_id)
               ORDER BY created_at DESC, id DESC LIMIT n)) one_box
          ORDER BY created_at DESC, id DESC
          LIMIT n) i
$$;

-- name: project_page
-- GET /api/projects/{id}: the project as the feed shows it (its scores from the feed, as of the
-- fold), its description, tags and owner, its counts exact, whether the caller upvoted it (null
-- without a caller), and the first page of its comments.
SELECT '{"id":' || p.id || ',"owner_id":' || p.owner_id || ',"username":' || json_str(u.username)
       || ',"owner":{"id":' || u.id || ',"username":' || json_str(u.username)
       || ',"display_name":' || json_str(u.display_name) || '}'
       || ',"title":' || json_str(p.title) || ',"tagline":' || json_str(p.tagline)
       || ',"description":' || json_str(p.description) || ',"tags":' || to_json(p.tags)::text
       || ',"upvote_count":' || c.upvote_count || ',"comment_count":' || c.comment_count
       || ',"trending_score":' || coalesce(f.trending_score, 0) || ',"proof_score":' || coalesce(f.proof_score, 0)
       || ',"created_at":' || json_ts(p.created_at) || ',"updated_at":' || json_ts(p.updated_at)
       || ',"user_has_upvoted":' || CASE
              WHEN %(user)s::bigint IS NULL THEN 'null'
              WHEN EXISTS (SELECT 1 FROM project_upvotes v WHERE v.user_id = %(user)s::bigint AND v.project_id = p.id)
              THEN 'true' ELSE 'false' END
       || ',"comments":{"items":' || cm.items || ',"next_cursor":' || cm.next_cursor || '}'
       || ',"as_of":' || (SELECT json_ts(as_of) FROM read_model_freshness WHERE clock = 'fold') || '}'
FROM projects p
JOIN users u ON u.id = p.owner_id
JOIN project_counters c ON c.project_id = p.id
LEFT JOIN mv_feed_projects f ON f.id = p.id
CROSS JOIN LATERAL comments_page(p.id, 'infinity', 9223372036854775807, %(limit)s::int) cm
WHERE p.id = %(id)s::bigint

-- name: project_comments
-- GET /api/projects/{id}/comments: a page of its comments; no row when there is no such project.
SELECT '{"items":' || cm.items || ',"next_cursor":' || cm.next_cursor || '}'
FROM projects p
CROSS JOIN LATERAL comments_page(p.id, %(after_at)s::timestamptz, %(after_id)s::bigint, %(limit)s::int) cm
WHERE p.id = %(id)s::bigint

-- name: thread_page
-- GET /api/threads/{id}: the thread, its chain, and a page of its posts; no row when there is no
-- such thread.
SELECT '{"thread":{"id":' || t.id || ',"chain_id":' || t.chain_id
       || ',"chain_slug":' || json_str(ch.slug) || ',"chain_name":' || json_str(ch.name)
       || ',"title":' || json_str(t.title) || ',"body":' || json_str(t.body)
       || ',"author_id":' || t.author_id || ',"author_username":' || json_str(u.username)
       || ',"created_at":' || json_ts(t.created_at) || '}'
       || ',"posts":' || ps.items || ',"next_cursor":' || ps.next_cursor || '}'
FROM forum_threads t
JOIN chains ch ON ch.id = t.chain_id
JOIN users u ON u.id = t.author_id
CROSS JOIN LATERAL posts_page(t.id, %(after_at)s::timestamptz, %(after_id)s::bigint, %(limit)s::int) ps
WHERE t.id = %(id)s::bigint

-- name: conversation_messages
-- GET /api/messages/conversations/{user_id}: the caller's messages with one user; no row when the
-- two have none (another pair's conversation is not told apart from one that does not exist).
SELECT '{"other_user":{"id":' || o.id || ',"username":' || json_str(o.username)
       || ',"display_name":' || json_str(o.display_name) || '}'
       || ',"items":' || mp.items || ',"next_cursor":' || mp.next_cursor || '}'
FROM users o
CROSS JOIN LATERAL messages_page(%(me)s::bigint, o.id, %(after_at)s::timestamptz, %(after_id)s::bigint,
                                 %(limit)s::int) mp
WHERE o.id = %(other)s::bigint
  AND (EXISTS (SELECT 1 FROM messages m WHERE m.sender_id = %(me)s::bigint AND m.recipient_id = o.id)
       OR EXISTS (SELECT 1 FROM messages m WHERE m.sender_id = o.id AND m.recipient_id = %(me)s::bigint))

-- name: intro_requests
-- GET /api/intro-requests: a page of the caller's own, received or sent.
SELECT '{"box":' || json_str(CASE WHEN %(received)s::boolean THEN 'received' ELSE 'sent' END)
       || ',"status":' || json_str(%(status)s::text)
       || ',"items":' || ip.items || ',"next_cursor":' || ip.next_cursor || '}'
FROM intro_requests_page(%(me)s::bigint, %(received)s::boolean, %(status)s::text, %(after_at)s::timestamptz,
                         %(after_id)s::bigint, %(limit)s::int) ip

-- name: user_profile
-- GET /api/users/{username}: a public profile, with the dashboard's public counts (exact), never
-- its private ones (unread messages, intro requests).
SELECT '{"user_id":' || u.id || ',"username":' || json_str(u.username)
       || ',"display_name":' || json_str(u.display_name) || ',"bio":' || json_str(u.bio)
       || ',"created_at":' || json_ts(u.created_at)
       || ',"project_count":' || s.project_count || ',"upvotes_received":' || s.upvotes_received
       || ',"chains_joined":' || s.chains_joined || '}'
FROM users u
JOIN user_dashboard_stats s ON s.user_id = u.id
WHERE u.username = %(username)s::text
