-- The read paths a client lacked (issue 18): pages of a project's comments, a thread's posts, a
-- conversation's messages, a user's intro requests, and a chain's projects and threads past the
-- first twenty, each from a keyset cursor. The feed's cursor encoding becomes everyone's.

-- A page's next_cursor, as JSON: URL-safe base64, unpadded, of the JSON array [kind, the last item's
-- key, its id] (services/api/cursors.py decodes it, checking the kind and the key's type).
-- `key_and_id` is the key as JSON (a number, or a quoted timestamp), a comma, and the id.
CREATE FUNCTION page_cursor(kind text, key_and_id text) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
RETURN '"' || translate(encode(convert_to('[' || to_json(kind)::text || ',' || key_and_id || ']', 'UTF8'), 'base64'),
                        E'+/=\n', '-_') || '"';

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

-- A page of a chain's threads in the chain page's order (latest activity first, as of the fold),
-- after the keyset cursor (last_activity_at, thread_id): the items as a JSON array, and the
-- next_cursor (page_cursor(), kind 'chain_threads') as JSON.
CREATE FUNCTION chain_threads_page(chain bigint, after_at timestamptz, after_id bigint, n integer)
RETURNS TABLE (items text, next_cursor text)
LANGUAGE sql STABLE AS $$
    SELECT '[' || coalesce(string_agg(t.item, ','), '') || ']',
           CASE WHEN count(*) = n
                THEN page_cursor('chain_threads', json_ts((array_agg(t.last_activity_at))[count(*)]) || ','
                                                  || (array_agg(t.thread_id))[count(*)])
                ELSE 'null' END
    FROM (SELECT thread_id, last_activity_at, item
          FROM mv_forum_threads
          WHERE chain_id = chain AND (last_activity_at, thread_id) < (after_at, after_id)
          ORDER BY last_activity_at DESC, thread_id DESC
          LIMIT n) t
$$;

DROP FUNCTION feed_cursor(text, text);
