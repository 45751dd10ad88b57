-- Every read the API issues, one named block each. tests/test_query_plans.py runs EXPLAIN on each
-- of them against a seeded dataset and fails on a sequential scan of a large table.

-- The read routes' queries build their JSON here, in Postgres: the API process is the bottleneck
-- (one Python core against Postgres's many), and a text column passes through it untouched.
-- Each read model row carries its item prebuilt (migration 0008), so a read only concatenates the
-- items of a page and appends the live counts where the answer shows them.
-- as_of is a scalar subquery on view_freshness (migration 0010), so it runs once per query (an
-- InitPlan) inside the query's own plan.

-- name: feed_trending
-- A feed page in trending order, after the keyset cursor (score, id) of the previous page (or at an
-- offset, for page numbers). as_of: the feed reflects every write committed before it. The order
-- comes from the feed table, the counts from the zero-staleness counters.
-- One row: the whole page as JSON (each item its prebuilt head, migration 0008, plus the live
-- counts), and the items' ids in order. Each item ends in "user_has_upvoted":null, which the API
-- replaces for a signed-in caller (the marker cannot occur inside a JSON string: there every
-- quote is escaped). next_cursor is the last item's (sort key, id), as feed_cursor() encodes it.
-- The aggregates take the rows in the order the subquery gives them (a plain aggregate reads its
-- input in order, and the subquery's ORDER BY stays: its LIMIT needs it); an ORDER BY inside each
-- aggregate would sort the page three more times (0.013 of 0.09 ms). tests/test_api.py checks
-- that cursor pages follow on and equal offset pages.
SELECT '{"items":[' || coalesce(string_agg(
           f.item_head || ',"upvote_count":' || f.upvote_count || ',"comment_count":' || f.comment_count
           || ',"trending_score":' || f.trending_score || ',"proof_score":' || f.proof_score
           || ',"user_has_upvoted":null}', ','), '')
       || '],"as_of":' || (SELECT json_ts(as_of) FROM view_freshness WHERE view_name = 'mv_feed_projects')
       || ',"sort":"trending","page":' || coalesce(%(page)s::int::text, 'null')
       || ',"next_cursor":' || CASE WHEN count(*) = %(limit)s
              THEN feed_cursor('trending', (array_agg(f.trending_score))[count(*)]::text || ',' || (array_agg(f.id))[count(*)])
              ELSE 'null' END
       || '}',
       string_agg(f.id::text, ',')
FROM (SELECT f.id, f.item_head, f.trending_score, f.proof_score, f.created_at, c.upvote_count, c.comment_count
      FROM mv_feed_projects f
      JOIN project_counters c ON c.project_id = f.id
      WHERE (f.trending_score, f.id) < (%(after_score)s::float8, %(after_id)s::bigint)
      ORDER BY f.trending_score DESC, f.id DESC
      LIMIT %(limit)s OFFSET %(offset)s) f

-- name: feed_top_rated
SELECT '{"items":[' || coalesce(string_agg(
           f.item_head || ',"upvote_count":' || f.upvote_count || ',"comment_count":' || f.comment_count
           || ',"trending_score":' || f.trending_score || ',"proof_score":' || f.proof_score
           || ',"user_has_upvoted":null}', ','), '')
       || '],"as_of":' || (SELECT json_ts(as_of) FROM view_freshness WHERE view_name = 'mv_feed_projects')
       || ',"sort":"top-rated","page":' || coalesce(%(page)s::int::text, 'null')
       || ',"next_cursor":' || CASE WHEN count(*) = %(limit)s
              THEN feed_cursor('top-rated', (array_agg(f.proof_score))[count(*)]::text || ',' || (array_agg(f.id))[count(*)])
              ELSE 'null' END
       || '}',
       string_agg(f.id::text, ',')
FROM (SELECT f.id, f.item_head, f.trending_score, f.proof_score, f.created_at, c.upvote_count, c.comment_count
      FROM mv_feed_projects f
      JOIN project_counters c ON c.project_id = f.id
      WHERE (f.proof_score, f.id) < (%(after_score)s::float8, %(after_id)s::bigint)
      ORDER BY f.proof_score DESC, f.id DESC
      LIMIT %(limit)s OFFSET %(offset)s) f

-- name: feed_newest
SELECT '{"items":[' || coalesce(string_agg(
           f.item_head || ',"upvote_count":' || f.upvote_count || ',"comment_count":' || f.comment_count
           || ',"trending_score":' || f.trending_score || ',"proof_score":' || f.proof_score
           || ',"user_has_upvoted":null}', ','), '')
       || '],"as_of":' || (SELECT json_ts(as_of) FROM view_freshness WHERE view_name = 'mv_feed_projects')
       || ',"sort":"newest","page":' || coalesce(%(page)s::int::text, 'null')
       || ',"next_cursor":' || CASE WHEN count(*) = %(limit)s
              THEN feed_cursor('newest', json_ts((array_agg(f.created_at))[count(*)]) || ',' || (array_agg(f.id))[count(*)])
              ELSE 'null' END
       || '}',
       string_agg(f.id::text, ',')
FROM (SELECT f.id, f.item_head, f.trending_score, f.proof_score, f.created_at, c.upvote_count, c.comment_count
      FROM mv_feed_projects f
      JOIN project_counters c ON c.project_id = f.id
      WHERE (f.created_at, f.id) < (%(after_time)s::timestamptz, %(after_id)s::bigint)
      ORDER BY f.created_at DESC, f.id DESC
      LIMIT %(limit)s OFFSET %(offset)s) f

-- name: leaderboard_projects
-- Ranks from the view; counts live, appended to each prebuilt item head.
SELECT '{"items":[' || coalesce(string_agg(l.item_head || ',"upvote_count":' || l.upvote_count
                                           || ',"comment_count":' || l.comment_count || '}', ','), '')
       || '],"as_of":' || (SELECT json_ts(as_of) FROM view_freshness WHERE view_name = 'mv_leaderboard_projects') || '}'
FROM (SELECT l.rank, l.item_head, c.upvote_count, c.comment_count
      FROM mv_leaderboard_projects l
      JOIN project_counters c ON c.project_id = l.project_id
      WHERE l.rank > %(offset)s
      ORDER BY l.rank
      LIMIT %(limit)s) l

-- name: leaderboard_users
SELECT '{"items":[' || coalesce(string_agg(l.item, ','), '')
       || '],"as_of":' || (SELECT json_ts(as_of) FROM view_freshness WHERE view_name = 'mv_leaderboard_users') || '}'
FROM (SELECT rank, item
      FROM mv_leaderboard_users
      WHERE rank > %(offset)s
      ORDER BY rank
      LIMIT %(limit)s) l

-- name: chains
-- next_cursor: the query string that continues after the last item of a full page. The aggregates
-- take the rows in the subquery's order (see the feed above).
SELECT '{"items":[' || coalesce(string_agg(d.item, ','), '')
       || '],"next_cursor":' || CASE WHEN count(*) = %(limit)s
              THEN '"after_members=' || (array_agg(d.member_count))[count(*)]
                   || '&after_id=' || (array_agg(d.chain_id))[count(*)] || '"'
              ELSE 'null' END
       || ',"as_of":' || (SELECT json_ts(as_of) FROM view_freshness WHERE view_name = 'mv_chain_directory') || '}'
FROM (SELECT chain_id, member_count, item
      FROM mv_chain_directory
      WHERE (member_count, chain_id) < (%(after_members)s::bigint, %(after_id)s::bigint)
      ORDER BY member_count DESC, chain_id DESC
      LIMIT %(limit)s) d

-- name: chain_page
-- One chain, its best projects (counts exact) and its latest threads, as one JSON document (text:
-- the API sends it as it is). The projects' order is the fold's (mv_chain_projects, migration 0011),
-- so as_of counts the feed's.
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
    || '],"as_of":' || (SELECT json_ts(min(as_of)) FROM view_freshness
                        WHERE view_name IN ('mv_chain_directory', 'mv_feed_projects', 'mv_forum_threads')) || '}'
FROM mv_chain_directory d
WHERE d.slug = %(slug)s

-- name: trending_tags
SELECT tag, project_count, upvotes FROM mv_trending_tags ORDER BY upvotes DESC, tag LIMIT %(limit)s

-- name: dashboard
-- user_dashboard_stats and intro_request_stats are both views over user_stats (base + ledger);
-- joining the two read it twice, so the route reads user_stats once and adds the received
-- counts as user_dashboard_stats defines them (the owned projects' exact counters).
SELECT '{"user_id":' || s.user_id || ',"project_count":' || s.project_count
       || ',"upvotes_received":' || coalesce(r.upvotes, 0) || ',"comments_received":' || coalesce(r.comments, 0)
       || ',"upvotes_given":' || s.upvotes_given || ',"unread_messages":' || s.unread_messages
       || ',"pending_intros_received":' || s.received_pending || ',"chains_joined":' || s.chains_joined
       || ',"updated_at":' || json_ts(greatest(s.updated_at, r.updated_at))
       || ',"intro_stats":{"sent_pending":' || s.sent_pending || ',"sent_accepted":' || s.sent_accepted
       || ',"sent_declined":' || s.sent_declined || ',"received_pending":' || s.received_pending
       || ',"received_accepted":' || s.received_accepted || ',"received_declined":' || s.received_declined || '}}'
FROM user_stats s
LEFT JOIN LATERAL (
    SELECT sum(c.upvote_count)::bigint AS upvotes, sum(c.comment_count)::bigint AS comments,
           max(c.updated_at) AS updated_at
    FROM projects p
    JOIN project_counters c ON c.project_id = p.id
    WHERE p.owner_id = s.user_id) r ON true
WHERE s.user_id = %(user_id)s

-- name: conversations
-- The page in the subquery's order (see the feed above), each item concatenated.
SELECT '{"items":[' || coalesce(string_agg(
           '{"other_user_id":' || c.other_user_id || ',"other_username":' || json_str(c.other_username)
           || ',"last_message_id":' || coalesce(c.last_message_id::text, 'null')
           || ',"last_message_at":' || json_ts(c.last_message_at)
           || ',"last_message_preview":' || json_str(c.last_message_preview)
           || ',"last_sender_id":' || coalesce(c.last_sender_id::text, 'null')
           || ',"message_count":' || c.message_count || ',"unread_count":' || c.unread_count || '}', ','), '')
       || ']}'
FROM (SELECT c.other_user_id, u.username AS other_username, c.last_message_id, c.last_message_at,
             c.last_message_preview, c.last_sender_id, c.message_count, c.unread_count
      FROM message_conversations_denorm c
      JOIN users u ON u.id = c.other_user_id
      WHERE c.user_id = %(user_id)s
      ORDER BY c.last_message_at DESC, c.other_user_id DESC
      LIMIT %(limit)s) c

-- name: upvoted_among
-- Which of a page's projects the user upvoted (the Postgres answer when Redis cannot give it).
SELECT project_id FROM project_upvotes WHERE user_id = %(user_id)s AND project_id = ANY(%(project_ids)s)

-- name: user_upvotes
-- A user's whole upvote set, to load their Redis set lazily.
SELECT project_id FROM project_upvotes WHERE user_id = %(user_id)s

-- name: search
-- Full text over the search documents after correcting each query word to the closest word of the
-- documents' vocabulary (trigram distance, among words in two documents or more), so "postgress"
-- finds Postgres and "reddis" Redis.
--
-- Candidates: per document type, the 200 most popular matches (search_candidates(), migration
-- 0007, which lets Postgres choose between a walk in popularity order and the GIN index). Among
-- them, the 200 most relevant are ranked, with the live upvote count breaking near-ties.
WITH tokens AS (
    SELECT t, ord FROM regexp_split_to_table(lower(%(q)s), '[^[:alnum:]]+') WITH ORDINALITY AS x(t, ord)
    WHERE t <> ''
    LIMIT 8
), fixed AS (
    SELECT ord, coalesce(
        (SELECT w.word FROM mv_search_words w WHERE w.word = tokens.t),
        (SELECT w.word FROM mv_search_words w WHERE w.ndoc >= 2 AND w.word %% tokens.t
         ORDER BY w.word <-> tokens.t LIMIT 1),
        tokens.t) AS word
    FROM tokens
), corrected AS MATERIALIZED (
    SELECT string_agg(word, ' ' ORDER BY ord) AS text FROM fixed
), hits AS (
    SELECT hit.doc_type, hit.doc_id, hit.title, hit.subtitle, hit.slug,
           (hit.relevance + ln(1 + coalesce(
               (SELECT c.upvote_count FROM project_counters_base c
                WHERE hit.doc_type = 'project' AND c.project_id = hit.doc_id), 0)) / 100)::float8 AS score
    FROM (
        -- The 200 most relevant candidates; popularity then breaks near-ties among them.
        SELECT c.doc_type, c.doc_id, c.title, c.subtitle, c.slug,
               ts_rank_cd(c.document, (SELECT plainto_tsquery('english', text) FROM corrected), 32) AS relevance
        FROM search_candidates((SELECT plainto_tsquery('english', text) FROM corrected), %(doc_type)s::text) c
        ORDER BY relevance DESC
        LIMIT 200
    ) hit
    ORDER BY score DESC, hit.doc_type, hit.doc_id
    LIMIT %(limit)s
)
-- One JSON document, as_of included even when nothing matched.
SELECT '{"query":' || json_str(%(q)s) || ',"corrected":' || json_str((SELECT text FROM corrected))
       || ',"items":[' || coalesce((
           SELECT string_agg('{"type":' || json_str(doc_type) || ',"id":' || doc_id || ',"title":' || json_str(title)
                             || ',"subtitle":' || json_str(subtitle) || ',"slug":' || json_str(slug)
                             || ',"score":' || score || '}', ',' ORDER BY score DESC, doc_type, doc_id)
           FROM hits), '')
       || '],"as_of":' || (SELECT json_ts(as_of) FROM view_freshness WHERE view_name = 'mv_search_documents') || '}'

-- name: refresh_status
SELECT q.view_name, q.status, q.refresh_requested_at, q.first_requested_at, q.last_refreshed_at,
       q.last_refresh_duration_ms, q.attempts, q.last_error,
       CASE WHEN q.view_name = 'mv_feed_projects'
            THEN coalesce(extract(epoch FROM now() - (SELECT min(created_at) FROM project_counter_deltas)), 0)
            WHEN q.status = 'pending' THEN extract(epoch FROM now() - q.first_requested_at)
            ELSE 0 END::float8 AS staleness_seconds
FROM mv_refresh_queue q
ORDER BY q.view_name
